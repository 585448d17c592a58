//! A classification checkpoint back into a model: for serving (`infer`) and for the user's
//! downloads (merged Hugging Face directory with `id2label`, or PEFT adapter).

use std::path::Path;

use candle_core::Device;

use crate::train::checkpoint::{self, TRAINABLE_FILE};
use crate::train::{ExportFormat, TrainError};
use crate::zoo::{SequenceClassifier, TextTokenizer};

/// Rebuilds the classifier a checkpoint holds from its `meta.json` (base model, labels,
/// spec) and `trainable.safetensors`. Returns the model, its tokenizer, the labels (id =
/// index) and the max sequence length it was trained with.
pub fn load_classifier_checkpoint(
    dir: &Path,
    device: &Device,
) -> Result<(SequenceClassifier, TextTokenizer, Vec<String>, usize), TrainError> {
    let meta = checkpoint::read_meta(dir)?;
    let (labels, spec) = meta.classifier(dir)?;
    let model = SequenceClassifier::from_pretrained(&meta.base_model_dir, spec, device, meta.seed)?;
    let tensors = checkpoint::read_tensors(dir, TRAINABLE_FILE, device)?;
    model.load_trainable(&tensors)?;
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
    let (mut model, _tokenizer, labels, _) = load_classifier_checkpoint(dir, &Device::Cpu)?;
    match format {
        ExportFormat::Merged => {
            model.merge_lora()?;
            model.export_merged(&meta.base_model_dir, &labels, out_dir)?;
        }
        ExportFormat::Adapter => {
            if meta.classifier_spec(dir)?.lora.is_none() {
                return Err(TrainError::checkpoint(
                    dir,
                    "this checkpoint is a full fine-tune and has no LoRA adapter; export it as a merged model",
                ));
            }
            model.export_adapter(base_model_id, out_dir)?;
        }
    }
    Ok(())
}
