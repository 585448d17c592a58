//! A classification checkpoint back into a model: for serving (`infer`) and for the user's
//! downloads (merged Hugging Face directory with `id2label`, or PEFT adapter).

use std::path::Path;

use candle_core::Device;

use crate::tasks::encoder_checkpoint::{export_encoder_model, rebuild_encoder_model};
use crate::train::checkpoint;
use crate::train::{ExportFormat, TrainError};
use crate::zoo::{SequenceClassifier, SequenceHead, TextTokenizer};

/// Rebuilds the classifier a checkpoint holds from its `meta.json` (base model, labels,
/// spec) and `trainable.safetensors`. Returns the model, its tokenizer, the labels (id =
/// index) and the max sequence length it was trained with.
pub fn load_classifier_checkpoint(
    dir: &Path,
    device: &Device,
) -> Result<(SequenceClassifier, TextTokenizer, Vec<String>, usize), TrainError> {
    let meta = checkpoint::read_meta(dir)?;
    let (labels, spec) = meta.classifier(dir)?;
    let model = rebuild_encoder_model::<SequenceHead>(dir, &meta, spec, device)?;
    let tokenizer = TextTokenizer::from_dir(&meta.base_model_dir)?;
    Ok((model, tokenizer, labels.to_vec(), meta.max_seq_len))
}

/// Writes a classification checkpoint as a merged HF directory or a PEFT adapter.
pub(crate) fn export_classifier_checkpoint(
    dir: &Path,
    format: ExportFormat,
    base_model_id: &str,
    out_dir: &Path,
) -> Result<(), TrainError> {
    let meta = checkpoint::read_meta(dir)?;
    let (model, _tokenizer, labels, _) = load_classifier_checkpoint(dir, &Device::Cpu)?;
    export_encoder_model(model, dir, &meta, &labels, format, base_model_id, out_dir)
}
