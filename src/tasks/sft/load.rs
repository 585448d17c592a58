//! Turning a causal-LM checkpoint (or a plain base model directory) back into a model:
//! for serving (`infer`) and for the user's downloads (merged HF directory, PEFT adapter).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::decoder_job::decoder_spec;
use crate::artifacts::checkpoint::{self, META_FILE, TRAINABLE_FILE};
use crate::artifacts::{ArtifactError, BaseModels, Checkpoint};
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

/// What a decoder is loaded from.
#[derive(Clone, Copy)]
pub enum LmSource<'a> {
    /// A `causal_lm` checkpoint with its base found.
    Checkpoint(&'a Checkpoint),
    /// A plain Hugging Face directory (a base model, a merged export), as it is.
    ModelDir(&'a Path),
}

impl<'a> LmSource<'a> {
    /// `dir` as a checkpoint when it has a `meta.json`, else as a model directory; the
    /// checkpoint is opened into `slot` (its base found through `bases`).
    pub fn of_dir(
        dir: &'a Path,
        bases: &BaseModels,
        slot: &'a mut Option<Checkpoint>,
    ) -> Result<Self, ArtifactError> {
        if !dir.join(META_FILE).exists() {
            return Ok(LmSource::ModelDir(dir));
        }
        Ok(LmSource::Checkpoint(slot.insert(bases.open(dir)?)))
    }
}

/// The model `source` holds, unmerged, with the projections' matmuls in `compute` (bf16:
/// frozen matrices stored in bf16).
fn load_unmerged_in(
    source: LmSource<'_>,
    device: &Device,
    compute: DType,
) -> Result<Unmerged, TrainError> {
    match source {
        LmSource::Checkpoint(ckpt) => unmerged_checkpoint(ckpt, device, compute),
        LmSource::ModelDir(dir) => {
            let spec = DecoderSpec {
                lora: None,
                quantize: None,
            };
            Ok(Unmerged {
                model: CausalLm::from_pretrained_in(dir, &spec, device, 0, compute)?,
                base_dir: dir.to_path_buf(),
                max_seq_len: None,
            })
        }
    }
}

/// The model a `causal_lm` checkpoint holds, unmerged, its matmuls in `compute`.
pub(crate) fn unmerged_checkpoint(
    ckpt: &Checkpoint,
    device: &Device,
    compute: DType,
) -> Result<Unmerged, TrainError> {
    let (meta, dir) = (&ckpt.meta, &ckpt.dir);
    let spec = decoder_spec(meta.lm_spec(dir)?)?;
    let model = CausalLm::from_pretrained_in(&ckpt.base_dir, &spec, device, meta.seed, compute)?;
    let tensors = checkpoint::read_tensors(dir, TRAINABLE_FILE, device)?;
    model.load_trainable(&tensors)?;
    Ok(Unmerged {
        model,
        base_dir: ckpt.base_dir.clone(),
        max_seq_len: Some(meta.max_seq_len),
    })
}

/// Loads a `causal_lm` checkpoint (meta.json + trainable.safetensors over its base model,
/// found through `bases`) or, when `dir` has no meta.json, a base model directory as it is.
pub fn load_lm_checkpoint(
    dir: &Path,
    bases: &BaseModels,
    device: &Device,
) -> Result<LoadedLm, TrainError> {
    load_lm_checkpoint_in(dir, bases, device, DType::F32)
}

/// [`load_lm`] from a directory (a checkpoint or a model directory).
pub fn load_lm_checkpoint_in(
    dir: &Path,
    bases: &BaseModels,
    device: &Device,
    compute: DType,
) -> Result<LoadedLm, TrainError> {
    let mut slot = None;
    load_lm(LmSource::of_dir(dir, bases, &mut slot)?, device, compute)
}

/// The decoder `source` holds, for serving in `compute`: under bf16 every matrix (merged
/// projections, the embeddings, a full fine-tune's weights) is stored and multiplied in bf16,
/// norms and attention stay f32 — half the f32 model's bytes.
pub fn load_lm(
    source: LmSource<'_>,
    device: &Device,
    compute: DType,
) -> Result<LoadedLm, TrainError> {
    let Unmerged {
        mut model,
        base_dir,
        max_seq_len,
        ..
    } = load_unmerged_in(source, device, compute)?;
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
