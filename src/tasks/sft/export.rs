//! `export_checkpoint` for `causal_lm` checkpoints: merged HF directory or PEFT adapter.

use std::path::Path;

use candle_core::{DType, Device};

use super::load::{load_unmerged, Unmerged};
use crate::domain::hyperparams::Precision;
use crate::train::checkpoint::{self, LmSpec, META_FILE};
use crate::train::{ExportFormat, TrainError};

/// `export_checkpoint` for `causal_lm` checkpoints.
pub(crate) fn export_lm_checkpoint(
    dir: &Path,
    format: ExportFormat,
    base_model_id: &str,
    out_dir: &Path,
) -> Result<(), TrainError> {
    let meta = match dir.join(META_FILE).exists() {
        true => Some(checkpoint::read_meta(dir)?),
        false => None,
    };
    let has_lora = meta.as_ref().is_some_and(|m| m.has_lora());
    let export_dtype = match meta.as_ref().map(|m| m.lm_spec(dir)).transpose()? {
        Some(LmSpec {
            export_dtype: Some(Precision::Bf16),
            ..
        }) => DType::BF16,
        _ => DType::F32,
    };
    let Unmerged {
        mut model,
        base_dir,
        ..
    } = load_unmerged(dir, &Device::Cpu)?;
    match format {
        ExportFormat::Merged => {
            model.merge_lora()?;
            model.export_merged_as(&base_dir, out_dir, export_dtype)?;
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
