//! Turning a checkpoint directory back into a model: for serving (`infer`) and for the
//! user's downloads (merged Hugging Face directory or PEFT adapter).

use std::path::Path;

use candle_core::Device;

use super::checkpoint::{self, CheckpointTask, TRAINABLE_FILE};
use super::TrainError;
use crate::zoo::{SequenceClassifier, TextTokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Hugging Face directory with LoRA folded into the weights.
    Merged,
    /// PEFT adapter directory (LoRA checkpoints only).
    Adapter,
}

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

/// Writes the checkpoint as a merged HF directory or a PEFT adapter into `out_dir`
/// (classifier or causal LM, by `meta.json`'s task).
/// `base_model_id` is what `adapter_config.json` names as the base model.
pub fn export_checkpoint(
    dir: &Path,
    format: ExportFormat,
    base_model_id: &str,
    out_dir: &Path,
) -> Result<(), TrainError> {
    let meta = checkpoint::read_meta(dir)?;
    if let CheckpointTask::CausalLm { .. } = meta.task {
        return super::sft::export::export_lm_checkpoint(dir, format, base_model_id, out_dir);
    }
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
