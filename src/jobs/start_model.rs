//! Starting a job from a temper fine-tuned model (`model: "ft:…"`, OpenAI's way of
//! continuing from a fine-tune; SFT then DPO is the recommended preference-tuning path).
//!
//! The fine-tuned model's merged weights (adapters folded in) are written once into the
//! job's own directory as a Hugging Face directory, which the trainer then treats as its
//! base model: its checkpoints are stored over it, and DPO's reference model is it. The
//! job thus keeps working when the source model is deleted, and a resumed job finds the
//! directory already there.

use std::path::{Path, PathBuf};

use super::JobFailure;
use crate::store::{ModelRow, Store};
use crate::tasks::export_checkpoint;
use crate::train::ExportFormat;

/// The directory, inside the job's work dir, holding the merged starting model.
pub const START_MODEL_DIR: &str = "start-model";

/// Whether a job's `model` names a temper fine-tuned model rather than a base model.
pub fn is_fine_tuned(model: &str) -> bool {
    model.starts_with("ft:")
}

/// The fine-tuned model's row; a fatal `invalid_model` failure when there is none.
pub async fn fine_tuned_row(store: &Store, model: &str) -> Result<ModelRow, JobFailure> {
    store.get_model(model).await?.ok_or_else(|| {
        JobFailure::fatal(
            "invalid_model",
            format!("The model `{model}` does not exist or is not available."),
            Some("model"),
        )
    })
}

/// Writes `row`'s merged weights into `work_dir/start-model` (once; kept across resumes)
/// and returns that directory. The export runs on a blocking thread.
pub async fn materialize(
    data_root: &Path,
    row: &ModelRow,
    work_dir: &Path,
) -> Result<PathBuf, JobFailure> {
    let target = work_dir.join(START_MODEL_DIR);
    if target.join("config.json").is_file() {
        return Ok(target);
    }
    let checkpoint = data_root.join(&row.artifact_dir);
    let partial = work_dir.join(format!("{START_MODEL_DIR}.partial"));
    let model_id = row.id.clone();
    let (out, done) = (partial.clone(), target.clone());
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        if out.exists() {
            std::fs::remove_dir_all(&out).map_err(|e| e.to_string())?;
        }
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        export_checkpoint(&checkpoint, ExportFormat::Merged, &model_id, &out)
            .map_err(|e| e.to_string())?;
        std::fs::rename(&out, &done).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| JobFailure::internal(format!("internal error: start model export: {e}")))?
    .map_err(|e| {
        JobFailure::internal(format!(
            "The fine-tuned model `{}` could not be prepared as the starting model: {e}",
            row.id
        ))
    })?;
    Ok(target)
}
