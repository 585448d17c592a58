//! A classification checkpoint back into a model: for serving (`infer`) and for the user's
//! downloads (merged Hugging Face directory with `id2label`, or PEFT adapter).

use std::path::Path;

use candle_core::Device;

use crate::artifacts::{Checkpoint, ExportFormat};
use crate::tasks::encoder_checkpoint::{export_encoder_model, rebuild_encoder_model};
use crate::train::TrainError;
use crate::zoo::{SequenceClassifier, SequenceHead, TextTokenizer};

/// Rebuilds the classifier a checkpoint holds from its `meta.json` (base model, labels,
/// spec) and `trainable.safetensors`. Returns the model, its tokenizer, the labels (id =
/// index) and the max sequence length it was trained with.
pub fn load_classifier_checkpoint(
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<(SequenceClassifier, TextTokenizer, Vec<String>, usize), TrainError> {
    let (labels, spec) = ckpt.meta.classifier(&ckpt.dir)?;
    let model = rebuild_encoder_model::<SequenceHead>(ckpt, spec, device)?;
    let tokenizer = TextTokenizer::from_dir(&ckpt.base_dir)?;
    Ok((model, tokenizer, labels.to_vec(), ckpt.meta.max_seq_len))
}

/// Writes a classification checkpoint as a merged HF directory or a PEFT adapter.
pub(crate) fn export_classifier_checkpoint(
    ckpt: &Checkpoint,
    format: ExportFormat,
    base_model_id: &str,
    out_dir: &Path,
) -> Result<(), TrainError> {
    let (model, _tokenizer, labels, _) = load_classifier_checkpoint(ckpt, &Device::Cpu)?;
    export_encoder_model(model, ckpt, &labels, format, base_model_id, out_dir)
}
