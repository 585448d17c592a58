//! The seam between the worker (leases, statuses) and what a job does (validation,
//! training). The real runner is `FineTuneRunner`; worker tests use fakes.

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::{ControlFlag, JobsContext};
use crate::store::{JobRow, Lease};

/// What a runner gets for one claimed job.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The row as claimed (status `validating_files` or `queued`).
    pub job: JobRow,
    /// This claim's lease; every write to the job names it (`Store::leased_*`).
    pub lease: Lease,
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
    /// The disk is full: the job is paused at its last checkpoint (a retry would only hit
    /// the full disk again) with an event saying what could not be written; the user frees
    /// space and resumes it.
    #[error("{0}")]
    OutOfSpace(String),
    /// A fenced write was refused: the job was cancelled or its lease went to another
    /// worker. Nothing more may be written.
    #[error("the job was cancelled or taken over by another worker")]
    Superseded,
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
            JobFailure::Retryable(message) | JobFailure::OutOfSpace(message) => {
                json!({"code": "server_error", "message": message, "param": null})
            }
            JobFailure::Superseded => {
                json!({"code": "server_error", "message": self.to_string(), "param": null})
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

/// `text` with every absolute path cut to its last component (`/srv/data/jobs/…/model.safetensors`
/// → `model.safetensors`): job errors and events are read by API clients, who must not learn
/// the server's layout. A safety net for messages built from library errors (I/O, candle,
/// GGUF), which often name the file they failed on.
pub(crate) fn without_paths(text: &str) -> String {
    const OPENERS: &[char] = &['`', '\'', '"', '(', '[', '{', '<'];
    const CLOSERS: &[char] = &['`', '\'', '"', ')', ']', '}', '>', ',', ';', ':', '.'];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let token_len = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (token, after) = rest.split_at(token_len);
        let lead = token.len() - token.trim_start_matches(OPENERS).len();
        let core = token[lead..].trim_end_matches(CLOSERS);
        if core.starts_with('/') && core.matches('/').count() >= 2 {
            let name = core
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default();
            out.push_str(&token[..lead]);
            out.push_str(name);
            out.push_str(&token[lead + core.len()..]);
        } else {
            out.push_str(token);
        }
        let space_len = after.len() - after.trim_start().len();
        out.push_str(&after[..space_len]);
        rest = &after[space_len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_are_cut_to_their_last_component() {
        assert_eq!(
            without_paths(
                "cannot open `/tmp/.tmpX/models/org/m/model.safetensors`: No such file (os error 2)"
            ),
            "cannot open `model.safetensors`: No such file (os error 2)"
        );
        assert_eq!(
            without_paths("io error at /srv/data/jobs/ftjob-1/checkpoints/step-30/, retry"),
            "io error at step-30, retry"
        );
        // Words with one slash, ratios and URLs-like text without a leading slash stay.
        let kept = "loss 1/2 and/or model org/name at step 3";
        assert_eq!(without_paths(kept), kept);
    }
}
