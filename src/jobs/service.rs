//! The job service: the rules of creating and steering fine-tuning jobs, in one place for
//! every front end — the OpenAI routes (`api/jobs.rs`), the dashboard's routes and the CLI
//! (which talks to those routes). A front end translates its wire format into a [`NewJob`]
//! or an id and maps [`JobError`] back; the checks (files, base model, task), the event
//! texts and the nudge to idle workers live here, never in a handler.
//!
//! Webhooks need no call from here: the store writes a job's final state and its outbox
//! row in one statement (a trigger, `migrations/0004_webhooks.sql`), whichever code path
//! ended the job.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::estimate::EstimateSetup;
use crate::basemodels;
use crate::domain::dataset::DataFormat;
use crate::domain::ids::new_job_id;
use crate::domain::job::JobStatus;
use crate::domain::job_spec::{JobSpec, Method, SpecError};
use crate::domain::task::ServedKind;
use crate::store::{
    CheckpointRow, ControlAction, ControlOutcome, EventRow, FileRow, JobRow, Page, Store,
    StoreError,
};

/// Nudges idle workers after a job becomes claimable (created or resumed). The app wires
/// it to `WorkerPool::wake`; tests pass a no-op.
pub type WakeWorkers = Arc<dyn Fn() + Send + Sync>;

/// A create request that passed every check that needs no IO (the front end's parse).
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub suffix: Option<String>,
    pub seed: i64,
    pub metadata: Option<Value>,
    /// `method` and the deprecated `hyperparameters`, typed.
    pub spec: JobSpec,
}

/// Why the service refused. Each variant keeps the facts its front end needs to word the
/// error (the api echoes user input shortened, in OpenAI's texts).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no such job: {0}")]
    NoSuchJob(String),
    #[error("no such file {id} ({param})")]
    NoSuchFile { id: String, param: &'static str },
    #[error("file {id} has purpose {purpose} ({param})")]
    WrongFilePurpose {
        id: String,
        purpose: String,
        param: &'static str,
    },
    #[error("file {id} did not parse: {details} ({param})")]
    InvalidFile {
        id: String,
        details: String,
        param: &'static str,
    },
    #[error("no base model {model}")]
    BaseModelNotFound { model: String, hint: String },
    #[error("supervised jobs cannot start from fine-tuned model {0}")]
    FineTunedStart(String),
    #[error("no fine-tuned model {0}")]
    FineTunedModelNotFound(String),
    #[error("model {model} is a {kind} model, not a chat model")]
    NotAChatModel { model: String, kind: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot {verb} job {id} in status {status}")]
    NotAllowed {
        id: String,
        verb: &'static str,
        status: JobStatus,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An estimate found what the job would fail on (its data, its settings, its model),
    /// worded as the job's failure would be.
    #[error("{0}")]
    WouldFail(super::JobFailure),
}

/// Cheap to clone: a store handle, the wake callback, paths and handles.
#[derive(Clone)]
pub struct JobService {
    store: Store,
    wake_workers: WakeWorkers,
    /// Where base models are resolved (`basemodels::resolve`).
    models_dir: PathBuf,
    /// What estimates read (`estimate.rs`).
    estimates: EstimateSetup,
}

impl JobService {
    pub fn new(
        store: Store,
        wake_workers: WakeWorkers,
        models_dir: PathBuf,
        estimates: EstimateSetup,
    ) -> JobService {
        JobService {
            store,
            wake_workers,
            models_dir,
            estimates,
        }
    }

    pub(super) fn estimates(&self) -> &EstimateSetup {
        &self.estimates
    }

    pub(super) fn models_dir(&self) -> &std::path::Path {
        &self.models_dir
    }

    /// Checks the job against the store (files, base model, the data's task) and queues
    /// it with its first event; idle workers are woken to claim it.
    pub async fn create(&self, job: NewJob, now: i64) -> Result<JobRow, JobError> {
        self.check(&job).await?;
        let row = JobRow {
            validation_file: job.validation_file,
            suffix: job.suffix,
            metadata: job.metadata,
            spec: job.spec,
            ..JobRow::new(new_job_id(), job.model, job.training_file, job.seed, now)
        };
        let event = EventRow::info(&row.id, format!("Created fine-tuning job: {}", row.id), now);
        self.store.create_job(&row, &event).await?;
        (self.wake_workers)();
        Ok(row)
    }

    /// Every check `create` makes, without creating anything; the training file's row.
    pub async fn check(&self, job: &NewJob) -> Result<FileRow, JobError> {
        self.check_base_model(&job.model, &job.spec.method).await?;
        let training = self.check_file(&job.training_file, "training_file").await?;
        // The data decides the task: a hyperparameter of another task is refused now, not
        // an option the job would ignore.
        let format = training.format.as_deref().and_then(DataFormat::from_stored);
        if let Some(task) = format.and_then(|format| job.spec.task_on(format)) {
            job.spec.check_task(task)?;
        }
        if let Some(validation) = &job.validation_file {
            self.check_file(validation, "validation_file").await?;
        }
        Ok(training)
    }

    /// The store, for the read-only views in `view.rs`.
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    pub async fn get(&self, id: &str) -> Result<JobRow, JobError> {
        self.store
            .get_job(id)
            .await?
            .ok_or_else(|| JobError::NoSuchJob(id.to_string()))
    }

    /// Jobs newest first, after the job `after`, optionally filtered on one metadata pair.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: i64,
        metadata: Option<(&str, &str)>,
    ) -> Result<Page<JobRow>, JobError> {
        Ok(self.store.list_jobs(after, limit, metadata).await?)
    }

    pub async fn events(
        &self,
        id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Page<EventRow>, JobError> {
        self.get(id).await?;
        Ok(self.store.list_events(id, after, limit).await?)
    }

    pub async fn checkpoints(
        &self,
        id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Page<CheckpointRow>, JobError> {
        self.get(id).await?;
        Ok(self.store.list_checkpoints(id, after, limit).await?)
    }

    /// A user's cancel, pause or resume: one compare-and-set in the store with its event.
    /// Workers are woken: idle ones claim a resumed job, a running job's heartbeat reads
    /// the cancel or pause at once.
    pub async fn control(
        &self,
        id: &str,
        action: ControlAction,
        now: i64,
    ) -> Result<JobRow, JobError> {
        let (verb, message) = match action {
            ControlAction::Cancel => ("cancel", "Fine-tuning job cancelled"),
            ControlAction::Pause => ("pause", "Fine-tuning job pause requested"),
            ControlAction::Resume => ("resume", "Fine-tuning job resumed"),
        };
        let event = EventRow::info(id, message, now);
        let outcome = match self.store.request_control(id, action, &event, now).await {
            Err(StoreError::NotFound) => return Err(JobError::NoSuchJob(id.to_string())),
            other => other?,
        };
        match outcome {
            ControlOutcome::Applied(job) => {
                (self.wake_workers)();
                Ok(*job)
            }
            ControlOutcome::NotAllowed(status) => Err(JobError::NotAllowed {
                id: id.to_string(),
                verb,
                status,
            }),
        }
    }

    async fn check_base_model(&self, model: &str, method: &Method) -> Result<(), JobError> {
        if model.starts_with("ft:") {
            return self.check_fine_tuned_start(model, method).await;
        }
        match basemodels::resolve(&self.models_dir, model) {
            Some(_) => Ok(()),
            None => Err(JobError::BaseModelNotFound {
                model: model.to_string(),
                hint: basemodels::not_found_hint(&self.models_dir, model, None),
            }),
        }
    }

    /// A DPO job may start from a chat model this server fine-tuned (SFT then DPO, the path
    /// OpenAI recommends); supervised jobs start from base models.
    async fn check_fine_tuned_start(&self, model: &str, method: &Method) -> Result<(), JobError> {
        if !matches!(method, Method::Dpo { .. }) {
            return Err(JobError::FineTunedStart(model.to_string()));
        }
        let Some(row) = self.store.get_model(model).await? else {
            return Err(JobError::FineTunedModelNotFound(model.to_string()));
        };
        if ServedKind::from_stored(&row.kind) != Some(ServedKind::CausalLm) {
            return Err(JobError::NotAChatModel {
                model: model.to_string(),
                kind: row.kind,
            });
        }
        Ok(())
    }

    /// The file exists, has purpose `fine-tune` and parsed at upload; its row.
    async fn check_file(&self, id: &str, param: &'static str) -> Result<FileRow, JobError> {
        let Some(file) = self.store.get_file(id).await? else {
            return Err(JobError::NoSuchFile {
                id: id.to_string(),
                param,
            });
        };
        if file.purpose != "fine-tune" {
            return Err(JobError::WrongFilePurpose {
                id: id.to_string(),
                purpose: file.purpose,
                param,
            });
        }
        if file.status == "error" {
            return Err(JobError::InvalidFile {
                id: id.to_string(),
                details: file.status_details.unwrap_or_default(),
                param,
            });
        }
        Ok(file)
    }
}
