//! `export_checkpoint` for `causal_lm` checkpoints: merged HF directory or PEFT adapter.

use std::path::Path;

use candle_core::{DType, Device};

use super::load::{unmerged_checkpoint, Unmerged};
use crate::artifacts::checkpoint::LmSpec;
use crate::artifacts::{Checkpoint, ExportFormat};
use crate::domain::hyperparams::Precision;
use crate::train::TrainError;

/// `export_checkpoint` for `causal_lm` checkpoints.
pub(crate) fn export_lm_checkpoint(
    ckpt: &Checkpoint,
    format: ExportFormat,
    base_model_id: &str,
    out_dir: &Path,
) -> Result<(), TrainError> {
    let has_lora = ckpt.meta.has_lora();
    let export_dtype = match ckpt.meta.lm_spec(&ckpt.dir)? {
        LmSpec {
            export_dtype: Some(Precision::Bf16),
            ..
        } => DType::BF16,
        _ => DType::F32,
    };
    let Unmerged {
        mut model,
        base_dir,
        ..
    } = unmerged_checkpoint(ckpt, &Device::Cpu, DType::F32)?;
    match format {
        ExportFormat::Merged => {
            model.merge_lora()?;
            model.export_merged_as(&base_dir, out_dir, export_dtype)?;
        }
        ExportFormat::Adapter => {
            if !has_lora {
                return Err(TrainError::checkpoint(
                    &ckpt.dir,
                    "this checkpoint is a full fine-tune and has no LoRA adapter; export it as a merged model",
                ));
            }
            model.export_adapter(base_model_id, out_dir)?;
        }
    }
    Ok(())
}
