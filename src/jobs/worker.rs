//! One worker: claim a job, run it under a heartbeat, settle the outcome in the store.
//! The worker never crashes on a job's error: failures, panics and lost leases all end
//! in a settled row (or, for a lost lease or a cancel, in writing nothing). Every write is
//! fenced by the claim's [`Lease`]: a worker that lost its job writes nothing into it.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;
use tracing::{info, warn, Instrument};

use super::control::{heartbeat_loop, HeartbeatStop};
use super::runner::without_paths;
use super::{
    unix_now, BusyFlag, ControlFlag, ControlSignal, JobFailure, JobRunner, JobsContext, RunContext,
    RunOutcome,
};
use crate::domain::ids::random_base62;
use crate::domain::job::JobStatus;
use crate::store::{EventRow, Handback, JobRow, Lease, StoreError};

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
    /// Worker name, unique per worker and process; each claim's lease owner extends it.
    owner: String,
    device: String,
    /// Process shutdown: a running job checkpoints and goes back to `queued`.
    shutdown: CancellationToken,
    /// Notified after a user's cancel or pause: the running job's heartbeat beats at once.
    beat_now: Arc<Notify>,
    /// Up while a job runs (`/metrics`); the pool's liveness reads it.
    busy: BusyFlag,
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
            beat_now: Arc::new(Notify::new()),
            busy: BusyFlag::default(),
        }
    }

    /// Raises `busy` while a job runs (the pool passes the flag its liveness reads).
    pub fn report_busy(mut self, busy: BusyFlag) -> Worker {
        self.busy = busy;
        self
    }

    /// Beats the running job's heartbeat whenever `beat_now` is notified (the pool shares
    /// one between its workers and `WorkerPool::wake`).
    pub fn beat_on(mut self, beat_now: Arc<Notify>) -> Worker {
        self.beat_now = beat_now;
        self
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Claims and runs at most one job. Errors are store failures while claiming or
    /// settling; the job's own failures are settled into its row. Everything from the
    /// claim to the settled row runs (and logs) in the job's span.
    pub async fn process_next(&self) -> Result<Processed, StoreError> {
        // A fresh owner per claim: writes from an earlier claim of the same job by this
        // worker are fenced out too.
        let owner = format!("{}.{}", self.owner, random_base62(6));
        let claimed = self
            .ctx
            .store
            .claim_next(&owner, unix_now(), self.ctx.lease_secs())
            .await
            .inspect_err(|error| warn!(%error, owner = %self.owner, "claiming a job failed"))?;
        let Some(job) = claimed else {
            return Ok(Processed::Idle);
        };
        let _busy = self.busy.busy();
        let span = tracing::info_span!(
            crate::telemetry::JOB_SPAN,
            job_id = %job.id,
            device = %self.device
        );
        let lease = Lease {
            job_id: job.id.clone(),
            owner,
        };
        let settled = self.run_claimed(job, lease).instrument(span.clone()).await;
        span.in_scope(|| match &settled {
            Ok(processed) => info!(?processed, "job settled"),
            Err(error) => warn!(%error, "settling the job failed"),
        });
        settled
    }

    async fn run_claimed(&self, job: JobRow, lease: Lease) -> Result<Processed, StoreError> {
        info!(attempt = job.attempts, "claimed job");
        let flag = ControlFlag::new();
        let done = CancellationToken::new();
        let heartbeat = heartbeat_loop(
            self.ctx.clone(),
            lease.clone(),
            flag.clone(),
            HeartbeatStop {
                done: done.clone(),
                shutdown: self.shutdown.clone(),
                beat_now: self.beat_now.clone(),
            },
        );
        let heartbeat = tokio::spawn(heartbeat.in_current_span().with_current_subscriber());
        let run = RunContext {
            job: job.clone(),
            lease: lease.clone(),
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
        let settler = Settler {
            ctx: &self.ctx,
            job: &job,
            lease: &lease,
        };
        settler.settle(result, flag.get()).await
    }
}

/// Writes a finished run's outcome, every write fenced by the claim's lease.
struct Settler<'a> {
    ctx: &'a JobsContext,
    job: &'a JobRow,
    lease: &'a Lease,
}

impl Settler<'_> {
    fn id(&self) -> String {
        self.job.id.clone()
    }

    /// `applied` → `done`, otherwise the job moved on without us.
    fn fenced(&self, applied: bool, done: Processed) -> Processed {
        if applied {
            done
        } else {
            info!("a fenced write was refused; the job moved on without this worker");
            Processed::Abandoned(self.id())
        }
    }

    async fn settle(
        &self,
        result: Result<RunOutcome, JobFailure>,
        signal: ControlSignal,
    ) -> Result<Processed, StoreError> {
        let id = self.id();
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
                let created = format!("New fine-tuned model created: {fine_tuned_model}");
                let events = [
                    EventRow::info(&id, created, now),
                    EventRow::info(&id, "The job has successfully completed", now),
                ];
                let applied = store
                    .finish_succeeded(
                        self.lease,
                        &fine_tuned_model,
                        trained_tokens,
                        &result_files,
                        &events,
                        now,
                    )
                    .await?;
                Ok(self.fenced(applied, Processed::Succeeded(id)))
            }
            Ok(RunOutcome::Stopped { step }) => self.release_stopped(step, signal).await,
            // The api wrote the status and the one "cancelled" event; nothing to add.
            Ok(RunOutcome::Cancelled) => Ok(Processed::Cancelled(id)),
            Ok(RunOutcome::Superseded) | Err(JobFailure::Superseded) => self.moved_on().await,
            Err(JobFailure::OutOfSpace(message)) => self.pause_out_of_space(&message).await,
            Err(JobFailure::Retryable(message)) => self.retry_or_fail(&message).await,
            Err(failure) => self.fail(&failure).await,
        }
    }

    /// A fenced write was refused: `Cancelled` when the user cancelled the job this worker
    /// still holds, `Abandoned` otherwise (paused meanwhile, or another worker's now).
    async fn moved_on(&self) -> Result<Processed, StoreError> {
        let row = self.ctx.store.get_job(&self.job.id).await?;
        let cancelled = row.is_some_and(|row| {
            row.status == JobStatus::Cancelled
                && row.lease_owner.as_deref() == Some(self.lease.owner.as_str())
        });
        Ok(if cancelled {
            Processed::Cancelled(self.id())
        } else {
            Processed::Abandoned(self.id())
        })
    }

    /// Pause completes to `paused`; shutdown (or a runner that stopped on its own) goes
    /// back to `queued`, or to `paused` when a pause arrived meanwhile. Both are clean
    /// hand-backs: the claim does not count as a failed attempt.
    async fn release_stopped(
        &self,
        step: usize,
        signal: ControlSignal,
    ) -> Result<Processed, StoreError> {
        let store = &self.ctx.store;
        let id = self.id();
        if signal != ControlSignal::Pause
            && store
                .release(self.lease, JobStatus::Queued, Handback::Clean, None)
                .await?
        {
            info!(step, "released to the queue");
            return Ok(Processed::Requeued(id));
        }
        let message = format!("Fine-tuning job paused at step {step}");
        let event = EventRow::info(&id, message, unix_now());
        let applied = store
            .release(self.lease, JobStatus::Paused, Handback::Clean, Some(&event))
            .await?;
        Ok(self.fenced(applied, Processed::Paused(id)))
    }

    /// A full disk pauses the job (its last checkpoint is intact; retrying would only hit
    /// the full disk again) with an error event that says what could not be written.
    async fn pause_out_of_space(&self, message: &str) -> Result<Processed, StoreError> {
        let id = self.id();
        warn!(%message, "out of disk space; pausing the job");
        let text = format!(
            "{}. The job is paused at its last checkpoint: free space on the server, then resume it.",
            without_paths(message)
        );
        let event = EventRow::message(&id, "error", text, unix_now());
        let applied = self
            .ctx
            .store
            .release(self.lease, JobStatus::Paused, Handback::Clean, Some(&event))
            .await?;
        Ok(self.fenced(applied, Processed::Paused(id)))
    }

    async fn retry_or_fail(&self, message: &str) -> Result<Processed, StoreError> {
        let id = self.id();
        let attempts = self.job.attempts;
        let message = without_paths(message);
        if attempts >= i64::from(self.ctx.max_attempts) {
            let failure = JobFailure::internal(format!(
                "The job failed after {attempts} attempts: {message}"
            ));
            return self.fail(&failure).await;
        }
        let store = &self.ctx.store;
        let current = store.get_job(&id).await?.map(|row| row.status);
        let back_to = match current {
            Some(JobStatus::ValidatingFiles) => JobStatus::ValidatingFiles,
            _ => JobStatus::Queued,
        };
        warn!(%message, "attempt failed; requeueing the job");
        let text = format!("Attempt {attempts} failed, retrying: {message}");
        let event = EventRow::message(&id, "warn", text, unix_now());
        let applied = store
            .release(self.lease, back_to, Handback::Failed, Some(&event))
            .await?;
        Ok(self.fenced(applied, Processed::Retried(id)))
    }

    async fn fail(&self, failure: &JobFailure) -> Result<Processed, StoreError> {
        let id = self.id();
        let mut error = failure.error_object();
        let message = without_paths(error["message"].as_str().unwrap_or_default());
        error["message"] = message.clone().into();
        warn!(%message, "job failed");
        let mut event = EventRow::message(&id, "error", message, unix_now());
        event.data = Some(json!({"error_code": error["code"], "error_param": error["param"]}));
        let applied = self
            .ctx
            .store
            .leased_fail(self.lease, &error, &event, unix_now())
            .await?;
        Ok(self.fenced(applied, Processed::Failed(id)))
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
