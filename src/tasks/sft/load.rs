//! Turning a causal-LM checkpoint (or a plain base model directory) back into a model:
//! for serving (`infer`) and for the user's downloads (merged HF directory, PEFT adapter).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::run::decoder_spec;
use crate::train::checkpoint::{self, META_FILE, TRAINABLE_FILE};
use crate::train::TrainError;
use crate::zoo::chat_template::special_token;
use crate::zoo::decoder::{CausalLm, DecoderSpec};
use crate::zoo::{ChatTemplate, TextTokenizer};

/// A servable decoder: LoRA folded into the weights, plus what generation needs.
pub struct LoadedLm {
    pub model: CausalLm,
    pub tokenizer: tokenizers::Tokenizer,
    pub template: Option<ChatTemplate>,
    /// Generation stops at any of these (config/generation_config eos + the tokenizer's
    /// `eos_token`, e.g. `<|im_end|>` for ChatML models).
    pub eos_token_ids: Vec<u32>,
    /// The sequence length trained with (checkpoints) or the model's context (base models).
    pub max_seq_len: usize,
}

/// The model a directory holds, unmerged, and the base directory its tokenizer lives in.
pub(crate) struct Unmerged {
    pub model: CausalLm,
    pub base_dir: PathBuf,
    pub max_seq_len: Option<usize>,
}

pub(crate) fn load_unmerged(dir: &Path, device: &Device) -> Result<Unmerged, TrainError> {
    load_unmerged_in(dir, device, DType::F32)
}

/// [`load_unmerged`] with the projections' matmuls in `compute` (bf16: frozen matrices
/// stored in bf16).
fn load_unmerged_in(dir: &Path, device: &Device, compute: DType) -> Result<Unmerged, TrainError> {
    if !dir.join(META_FILE).exists() {
        let spec = DecoderSpec {
            lora: None,
            quantize: None,
        };
        return Ok(Unmerged {
            model: CausalLm::from_pretrained_in(dir, &spec, device, 0, compute)?,
            base_dir: dir.to_path_buf(),
            max_seq_len: None,
        });
    }
    let meta = checkpoint::read_meta(dir)?;
    let spec = decoder_spec(meta.lm_spec(dir)?)?;
    let model =
        CausalLm::from_pretrained_in(&meta.base_model_dir, &spec, device, meta.seed, compute)?;
    let tensors = checkpoint::read_tensors(dir, TRAINABLE_FILE, device)?;
    model.load_trainable(&tensors)?;
    Ok(Unmerged {
        model,
        base_dir: meta.base_model_dir,
        max_seq_len: Some(meta.max_seq_len),
    })
}

/// Loads a `causal_lm` checkpoint (meta.json + trainable.safetensors over its base model)
/// or, when `dir` has no meta.json, a base model directory as it is.
pub fn load_lm_checkpoint(dir: &Path, device: &Device) -> Result<LoadedLm, TrainError> {
    load_lm_checkpoint_in(dir, device, DType::F32)
}

/// [`load_lm_checkpoint`] for serving in `compute`: under bf16 every matrix (merged
/// projections, the embeddings, a full fine-tune's weights) is stored and multiplied in bf16,
/// norms and attention stay f32 — half the f32 model's bytes.
pub fn load_lm_checkpoint_in(
    dir: &Path,
    device: &Device,
    compute: DType,
) -> Result<LoadedLm, TrainError> {
    let Unmerged {
        mut model,
        base_dir,
        max_seq_len,
        ..
    } = load_unmerged_in(dir, device, compute)?;
    model.merge_lora()?;
    if compute != DType::F32 {
        // A full fine-tune's weights are f32 trainable masters until frozen into `compute`.
        model = model.frozen_for_serving(compute)?;
    }
    let tokenizer = TextTokenizer::from_dir(&base_dir)?.inner().clone();
    let template = ChatTemplate::from_dir(&base_dir)?;
    let mut eos_token_ids = model.config().eos_token_ids.clone();
    let config_path = base_dir.join("tokenizer_config.json");
    if config_path.exists() {
        let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path)?)?;
        let eos = special_token(&config, "eos_token").and_then(|t| tokenizer.token_to_id(&t));
        if let Some(id) = eos.filter(|id| !eos_token_ids.contains(id)) {
            eos_token_ids.push(id);
        }
    }
    let max_seq_len = max_seq_len.unwrap_or(model.config().max_position_embeddings);
    Ok(LoadedLm {
        model,
        tokenizer,
        template,
        eos_token_ids,
        max_seq_len,
    })
}
