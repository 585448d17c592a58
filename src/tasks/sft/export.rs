//! `export_checkpoint` for `causal_lm` checkpoints: merged HF directory or PEFT adapter.

use std::path::Path;

use candle_core::Device;

use super::load::{load_unmerged, Unmerged};
use crate::train::checkpoint::{self, META_FILE};
use crate::train::{ExportFormat, TrainError};

/// `export_checkpoint` for `causal_lm` checkpoints.
pub(crate) fn export_lm_checkpoint(
    dir: &Path,
    format: ExportFormat,
    base_model_id: &str,
    out_dir: &Path,
) -> Result<(), TrainError> {
    let has_lora = dir.join(META_FILE).exists() && checkpoint::read_meta(dir)?.has_lora();
    let Unmerged {
        mut model,
        base_dir,
        ..
    } = load_unmerged(dir, &Device::Cpu)?;
    match format {
        ExportFormat::Merged => {
            model.merge_lora()?;
            model.export_merged(&base_dir, out_dir)?;
        }
        ExportFormat::Adapter => {
            if !has_lora {
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
