//! The seam between the worker (leases, statuses) and what a job does (validation,
//! training). The real runner is `FineTuneRunner`; worker tests use fakes.

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::{ControlFlag, JobsContext};
use crate::store::JobRow;

/// What a runner gets for one claimed job.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The row as claimed (status `validating_files` or `queued`).
    pub job: JobRow,
    /// The lease owner; every lease-guarded write names it.
    pub owner: String,
    /// `cpu`, `cuda:0`, …
    pub device: String,
    /// Read once per training step; raised by the heartbeat and by shutdown.
    pub control: ControlFlag,
    pub ctx: JobsContext,
}

/// How a run ended without an error. The worker writes the matching status and events.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// Training finished; the runner wrote the model row and the result files. The worker
    /// CASes `running` → `succeeded` and adds the closing events.
    Succeeded {
        fine_tuned_model: String,
        trained_tokens: i64,
        result_files: Vec<String>,
    },
    /// Stopped after a checkpoint at `step` (0: before any step) because the control flag
    /// asked for a pause or a shutdown; the worker releases the job accordingly.
    Stopped { step: usize },
    /// Stopped because the flag said `Cancel` (or `LeaseLost`).
    Cancelled,
    /// The row's status moved under the runner (e.g. paused or cancelled while files were
    /// being validated): nothing left to write.
    Superseded,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobFailure {
    /// Transient (store hiccup, IO): the job goes back to the queue until its attempts are
    /// used up.
    #[error("{0}")]
    Retryable(String),
    /// Permanent (bad data, unknown model, device missing): the job fails with this
    /// OpenAI-shaped error.
    #[error("{message}")]
    Fatal {
        code: String,
        message: String,
        param: Option<String>,
    },
}

impl JobFailure {
    pub fn fatal(code: &str, message: impl Into<String>, param: Option<&str>) -> JobFailure {
        JobFailure::Fatal {
            code: code.to_string(),
            message: message.into(),
            param: param.map(str::to_string),
        }
    }

    /// A server-side failure whose cause is ours, not the user's.
    pub fn internal(message: impl Into<String>) -> JobFailure {
        JobFailure::fatal("server_error", message, None)
    }

    /// OpenAI's job `error` object: `{code, message, param}`.
    pub fn error_object(&self) -> Value {
        match self {
            JobFailure::Fatal {
                code,
                message,
                param,
            } => json!({"code": code, "message": message, "param": param}),
            JobFailure::Retryable(message) => {
                json!({"code": "server_error", "message": message, "param": null})
            }
        }
    }
}

impl From<crate::store::StoreError> for JobFailure {
    fn from(error: crate::store::StoreError) -> JobFailure {
        JobFailure::Retryable(format!("store error: {error}"))
    }
}

/// Runs one claimed job to an outcome. Implementations must honour `RunContext::control`
/// and never block the async runtime (training belongs on its own OS thread).
pub trait JobRunner: Send + Sync + 'static {
    fn run(&self, run: RunContext) -> BoxFuture<'static, Result<RunOutcome, JobFailure>>;
}
