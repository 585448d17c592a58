//! The model a job starts from: a base model by id, or a temper fine-tuned model
//! (`model: "ft:…"`, OpenAI's way of continuing from a fine-tune; SFT then DPO is the
//! recommended preference-tuning path).
//!
//! A fine-tuned model's merged weights (adapters folded in) are written once into the
//! job's own directory as a Hugging Face directory, which the trainer then treats as its
//! base model: the job's checkpoints are stored over it, and DPO's reference model is it.
//! The job keeps working when the source model is deleted, and a resumed job finds the
//! directory already there.

use std::path::{Path, PathBuf};

use super::fine_tune::{naming_the_model, prepare_base_model};
use super::{JobFailure, JobsContext};
use crate::artifacts::ExportFormat;
use crate::artifacts::{BaseLocation, BaseModels, START_MODEL_DIR};
use crate::basemodels::{self, BaseModel, BaseModelKind};
use crate::domain::task::ServedKind;
use crate::store::ModelRow;
use crate::tasks::export_checkpoint;

pub enum StartModel {
    Base(BaseModel),
    /// A chat model this server fine-tuned (its model row).
    FineTuned(ModelRow),
}

impl StartModel {
    /// Resolves the job's `model`; an unknown one is a fatal `invalid_model`.
    pub async fn resolve(ctx: &JobsContext, model: &str) -> Result<Self, JobFailure> {
        let missing = |hint: String| {
            JobFailure::fatal(
                "invalid_model",
                format!("The model `{model}` does not exist or is not available.{hint}"),
                Some("model"),
            )
        };
        if !model.starts_with("ft:") {
            return basemodels::resolve(&ctx.models_dir, model)
                .map(StartModel::Base)
                .ok_or_else(|| missing(basemodels::not_found_hint(&ctx.models_dir, model, None)));
        }
        let row = ctx
            .store
            .get_model(model)
            .await?
            .ok_or_else(|| missing(String::new()))?;
        if ServedKind::from_stored(&row.kind) != Some(ServedKind::CausalLm) {
            return Err(JobFailure::fatal(
                "invalid_model",
                format!(
                    "The model `{model}` is a {} model; only chat models can be tuned further.",
                    row.kind
                ),
                Some("model"),
            ));
        }
        Ok(StartModel::FineTuned(row))
    }

    pub fn kind(&self) -> BaseModelKind {
        match self {
            StartModel::Base(base) => base.kind,
            StartModel::FineTuned(_) => BaseModelKind::Decoder,
        }
    }

    /// The base model the result is named after (`ft:{base}:…`): a fine-tuned model's own
    /// base, as OpenAI names models fine-tuned from fine-tunes.
    pub fn base_name<'a>(&'a self, model: &'a str) -> &'a str {
        match self {
            StartModel::Base(_) => model,
            StartModel::FineTuned(row) => row.base_model.as_deref().unwrap_or(model),
        }
    }

    /// The Hugging Face directory the trainer starts from (converted or exported once).
    pub async fn prepare(&self, ctx: &JobsContext, work_dir: &Path) -> Result<PathBuf, JobFailure> {
        let data_root = ctx.blobs.root();
        match self {
            StartModel::Base(base) => prepare_base_model(base, data_root).await,
            StartModel::FineTuned(row) => {
                let bases = BaseModels::new(&ctx.models_dir, data_root);
                materialize(data_root, &bases, row, work_dir).await
            }
        }
    }

    /// How the job's checkpoints name the model prepared in `dir`: a base model by id with
    /// the fingerprint of the version trained over (read on a blocking thread), a fine-tuned
    /// one as the job's own starting model.
    pub async fn location(&self, dir: &Path) -> Result<BaseLocation, JobFailure> {
        match self {
            StartModel::Base(base) => {
                let (id, dir) = (base.id.clone(), dir.to_path_buf());
                tokio::task::spawn_blocking(move || BaseLocation::of_base_model(&id, &dir))
                    .await
                    .map_err(|e| {
                        JobFailure::internal(format!("internal error: base model fingerprint: {e}"))
                    })?
                    .map_err(|e| {
                        JobFailure::internal(format!("reading base model `{}`: {e}", base.id))
                    })
            }
            StartModel::FineTuned(row) => Ok(BaseLocation::JobStartModel { id: row.id.clone() }),
        }
    }

    /// A training failure with server paths replaced by the model's name.
    pub fn name_failure(&self, failure: JobFailure, model_dir: &Path) -> JobFailure {
        match self {
            StartModel::Base(base) => naming_the_model(failure, base, model_dir),
            StartModel::FineTuned(_) => failure,
        }
    }
}

/// Writes `row`'s merged weights into `work_dir/start-model` (once; kept across resumes)
/// and returns that directory. The export runs on a blocking thread.
async fn materialize(
    data_root: &Path,
    bases: &BaseModels,
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
    let bases = bases.clone();
    let done = target.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| e.to_string())?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| e.to_string())?;
        export_checkpoint(
            &checkpoint,
            &bases,
            ExportFormat::Merged,
            &model_id,
            &partial,
        )
        .map_err(|e| e.to_string())?;
        std::fs::rename(&partial, &done).map_err(|e| e.to_string())
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
