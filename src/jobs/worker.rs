//! One worker: claim a job, run it under a heartbeat, settle the outcome in the store.
//! The worker never crashes on a job's error: failures, panics and lost leases all end
//! in a settled row (or, for a lost lease, in writing nothing).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use super::control::{heartbeat_loop, HeartbeatStop};
use super::{
    unix_now, ControlFlag, ControlSignal, JobFailure, JobRunner, JobsContext, RunContext,
    RunOutcome,
};
use crate::domain::ids::random_base62;
use crate::domain::job::JobStatus;
use crate::store::{EventRow, JobRow, StoreError};

/// What `process_next` did; every variant but `Idle` names the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// Nothing claimable.
    Idle,
    Succeeded(String),
    Failed(String),
    /// A retryable failure put the job back in the queue.
    Retried(String),
    Paused(String),
    /// Shutdown: checkpointed and back to `queued`.
    Requeued(String),
    Cancelled(String),
    /// The lease was lost or the status moved under us: nothing written.
    Abandoned(String),
}

pub struct Worker {
    ctx: JobsContext,
    runner: Arc<dyn JobRunner>,
    /// Lease owner name, unique per worker and process.
    owner: String,
    device: String,
    /// Process shutdown: a running job checkpoints and goes back to `queued`.
    shutdown: CancellationToken,
}

impl Worker {
    pub fn new(
        ctx: JobsContext,
        runner: Arc<dyn JobRunner>,
        device: &str,
        shutdown: CancellationToken,
    ) -> Worker {
        let owner = format!(
            "worker-{device}-{}-{}",
            std::process::id(),
            random_base62(8)
        );
        Worker {
            ctx,
            runner,
            owner,
            device: device.to_string(),
            shutdown,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Claims and runs at most one job. Errors are store failures while claiming or
    /// settling; the job's own failures are settled into its row.
    pub async fn process_next(&self) -> Result<Processed, StoreError> {
        let claimed = self
            .ctx
            .store
            .claim_next(&self.owner, unix_now(), self.ctx.lease_secs())
            .await?;
        match claimed {
            None => Ok(Processed::Idle),
            Some(job) => self.run_claimed(job).await,
        }
    }

    #[instrument(skip_all, fields(job_id = %job.id, device = %self.device))]
    async fn run_claimed(&self, job: JobRow) -> Result<Processed, StoreError> {
        info!(attempt = job.attempts, "claimed job");
        let flag = ControlFlag::new();
        let done = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.ctx.clone(),
            job.id.clone(),
            self.owner.clone(),
            flag.clone(),
            HeartbeatStop {
                done: done.clone(),
                shutdown: self.shutdown.clone(),
            },
        ));
        let run = RunContext {
            job: job.clone(),
            owner: self.owner.clone(),
            device: self.device.clone(),
            control: flag.clone(),
            ctx: self.ctx.clone(),
        };
        let result = AssertUnwindSafe(self.runner.run(run))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(JobFailure::internal(format!(
                    "internal error: the job runner panicked ({})",
                    panic_message(panic.as_ref())
                )))
            });
        done.cancel();
        if let Err(error) = heartbeat.await {
            warn!(%error, "heartbeat task ended abnormally");
        }
        self.settle(&job, result, flag.get()).await
    }

    #[instrument(skip_all, fields(job_id = %job.id))]
    async fn settle(
        &self,
        job: &JobRow,
        result: Result<RunOutcome, JobFailure>,
        signal: ControlSignal,
    ) -> Result<Processed, StoreError> {
        let id = job.id.clone();
        if signal == ControlSignal::LeaseLost {
            warn!("lease lost; leaving the job to its new owner");
            return Ok(Processed::Abandoned(id));
        }
        let store = &self.ctx.store;
        match result {
            Ok(RunOutcome::Succeeded {
                fine_tuned_model,
                trained_tokens,
                result_files,
            }) => {
                let now = unix_now();
                let applied = store
                    .finish_succeeded(&id, &fine_tuned_model, trained_tokens, &result_files, now)
                    .await?;
                if !applied {
                    return Ok(Processed::Abandoned(id));
                }
                let created = format!("New fine-tuned model created: {fine_tuned_model}");
                store
                    .insert_event(&EventRow::info(&id, created, now))
                    .await?;
                let completed = "The job has successfully completed";
                store
                    .insert_event(&EventRow::info(&id, completed, now))
                    .await?;
                Ok(Processed::Succeeded(id))
            }
            Ok(RunOutcome::Stopped { step }) => self.release_stopped(&id, step, signal).await,
            Ok(RunOutcome::Cancelled) => {
                let event = EventRow::info(&id, "Fine-tuning job cancelled", unix_now());
                store.insert_event(&event).await?;
                Ok(Processed::Cancelled(id))
            }
            Ok(RunOutcome::Superseded) => Ok(Processed::Abandoned(id)),
            Err(JobFailure::Retryable(message)) => self.retry_or_fail(job, message).await,
            Err(failure) => self.fail(&id, &failure).await,
        }
    }

    /// Pause completes to `paused`; shutdown (or a runner that stopped on its own) goes
    /// back to `queued`, or to `paused` when a pause arrived meanwhile.
    async fn release_stopped(
        &self,
        id: &str,
        step: usize,
        signal: ControlSignal,
    ) -> Result<Processed, StoreError> {
        let store = &self.ctx.store;
        if signal != ControlSignal::Pause
            && store.release(id, &self.owner, JobStatus::Queued).await?
        {
            info!(step, "released to the queue");
            return Ok(Processed::Requeued(id.to_string()));
        }
        if store.release(id, &self.owner, JobStatus::Paused).await? {
            let message = format!("Fine-tuning job paused at step {step}");
            store
                .insert_event(&EventRow::info(id, message, unix_now()))
                .await?;
            return Ok(Processed::Paused(id.to_string()));
        }
        Ok(Processed::Abandoned(id.to_string()))
    }

    async fn retry_or_fail(&self, job: &JobRow, message: String) -> Result<Processed, StoreError> {
        let id = job.id.clone();
        if job.attempts >= i64::from(self.ctx.max_attempts) {
            let failure = JobFailure::internal(format!(
                "The job failed after {} attempts: {message}",
                job.attempts
            ));
            return self.fail(&id, &failure).await;
        }
        let store = &self.ctx.store;
        let current = store.get_job(&id).await?.map(|row| row.status);
        let back_to = match current {
            Some(JobStatus::ValidatingFiles) => JobStatus::ValidatingFiles,
            _ => JobStatus::Queued,
        };
        if !store.release(&id, &self.owner, back_to).await? {
            return Ok(Processed::Abandoned(id));
        }
        warn!(%message, "attempt failed; job requeued");
        let text = format!("Attempt {} failed, retrying: {message}", job.attempts);
        store
            .insert_event(&EventRow::message(&id, "warn", text, unix_now()))
            .await?;
        Ok(Processed::Retried(id))
    }

    async fn fail(&self, id: &str, failure: &JobFailure) -> Result<Processed, StoreError> {
        let store = &self.ctx.store;
        let error = failure.error_object();
        if !store.finish_failed(id, &error, unix_now()).await? {
            return Ok(Processed::Abandoned(id.to_string()));
        }
        warn!(%failure, "job failed");
        let mut event = EventRow::message(id, "error", failure.to_string(), unix_now());
        event.data = Some(json!({"error_code": error["code"], "error_param": error["param"]}));
        store.insert_event(&event).await?;
        Ok(Processed::Failed(id.to_string()))
    }
}

/// The text of a panic payload (`&str` or `String`), for the job's error message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}
