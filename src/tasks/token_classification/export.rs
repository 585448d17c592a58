//! A token-classification checkpoint back into a model: for serving and for the user's
//! downloads (merged Hugging Face directory that `AutoModelForTokenClassification` loads with
//! `id2label`, or a PEFT `TOKEN_CLS` adapter).

use std::path::Path;

use candle_core::Device;

use super::head::{TokenClassifier, TokenHead};
use crate::artifacts::checkpoint::CheckpointTask;
use crate::artifacts::{Checkpoint, ExportFormat};
use crate::tasks::encoder_checkpoint::{export_encoder_model, rebuild_encoder_model};
use crate::train::TrainError;
use crate::zoo::TextTokenizer;

/// A token classifier rebuilt from a checkpoint, with what serving it needs.
pub struct LoadedTokenClassifier {
    pub model: TokenClassifier,
    pub tokenizer: TextTokenizer,
    /// Label names, id = index.
    pub labels: Vec<String>,
    pub max_seq_len: usize,
}

/// Rebuilds the token classifier a checkpoint holds from its `meta.json` (base model,
/// labels, spec) and `trainable.safetensors`.
pub fn load_token_checkpoint(
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<LoadedTokenClassifier, TrainError> {
    let meta = &ckpt.meta;
    let CheckpointTask::TokenClassification { labels, spec } = &meta.task else {
        return Err(TrainError::checkpoint(
            &ckpt.dir,
            format!(
                "a `{}` checkpoint is not a token classifier",
                meta.task.name()
            ),
        ));
    };
    Ok(LoadedTokenClassifier {
        model: rebuild_encoder_model::<TokenHead>(ckpt, spec, device)?,
        tokenizer: TextTokenizer::from_dir(&ckpt.base_dir)?,
        labels: labels.clone(),
        max_seq_len: meta.max_seq_len,
    })
}

/// Writes a token-classification checkpoint as a merged HF directory or a PEFT adapter.
pub(crate) fn export_token_checkpoint(
    ckpt: &Checkpoint,
    format: ExportFormat,
    base_model_id: &str,
    out_dir: &Path,
) -> Result<(), TrainError> {
    let loaded = load_token_checkpoint(ckpt, &Device::Cpu)?;
    export_encoder_model(
        loaded.model,
        ckpt,
        &loaded.labels,
        format,
        base_model_id,
        out_dir,
    )
}
