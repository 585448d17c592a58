//! The pool: one worker task per device slot and one task that requeues orphaned jobs.
//!
//! Shutdown: the caller cancels the token given to `spawn`. Idle workers return at once;
//! busy ones see `Shutdown` on their control flag, checkpoint, release the job to `queued`
//! and return. `join` waits for every task (a `TaskTracker`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::{
    unix_now, FineTuneRunner, JobRunner, JobsContext, Processed, Running, Worker, WorkerLiveness,
};
use crate::domain::job::JobStatus;
use crate::store::{EventRow, StoreError};

pub struct WorkerPool {
    /// Notified by the api after creating or resuming a job, and by the requeue task after
    /// it put jobs back; idle workers wait on it (or on the poll interval).
    wake: Arc<Notify>,
    /// Notified with `wake`: every running job's heartbeat beats at once, so a cancel or
    /// pause the api just wrote reaches its trainer now rather than a third of a lease later.
    beat_now: Arc<Notify>,
    tracker: TaskTracker,
    liveness: WorkerLiveness,
}

impl WorkerPool {
    /// Starts the real fine-tuning workers.
    pub fn spawn(ctx: JobsContext, shutdown: CancellationToken) -> WorkerPool {
        WorkerPool::spawn_with_runner(ctx, Arc::new(FineTuneRunner), shutdown)
    }

    /// Starts one worker per `ctx.devices` entry running `runner`, plus the requeue task.
    pub fn spawn_with_runner(
        ctx: JobsContext,
        runner: Arc<dyn JobRunner>,
        shutdown: CancellationToken,
    ) -> WorkerPool {
        let wake = Arc::new(Notify::new());
        let beat_now = Arc::new(Notify::new());
        let tracker = TaskTracker::new();
        let liveness = WorkerLiveness::default();
        let requeue = requeue_loop(ctx.clone(), wake.clone(), shutdown.clone());
        tracker.spawn(counted(liveness.running(), requeue));
        for device in &ctx.devices {
            let worker = Worker::new(ctx.clone(), runner.clone(), device, shutdown.clone())
                .beat_on(beat_now.clone())
                .report_busy(liveness.worker(device));
            let work = worker_loop(worker, ctx.poll_interval, wake.clone(), shutdown.clone());
            tracker.spawn(counted(liveness.running(), work));
        }
        tracker.close();
        WorkerPool {
            wake,
            beat_now,
            tracker,
            liveness,
        }
    }

    /// Nudges idle workers to look for work now, and running jobs to read their row now
    /// (the api calls this after every create, cancel, pause and resume).
    pub fn wake(&self) {
        self.wake.notify_waiters();
        self.beat_now.notify_waiters();
    }

    /// Which of the pool's tasks still run (`/health`).
    pub fn liveness(&self) -> WorkerLiveness {
        self.liveness.clone()
    }

    /// Waits for every worker (after the shutdown token was cancelled: running jobs are
    /// checkpointed and back in `queued` when this returns).
    pub async fn join(self) {
        self.tracker.wait().await;
    }
}

/// `task`, counted as running by `liveness` until it ends.
async fn counted(liveness: Running, task: impl std::future::Future<Output = ()>) {
    let _running = liveness;
    task.await
}

async fn worker_loop(
    worker: Worker,
    poll_interval: Duration,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        // Registered before looking for work, so a wake sent while claiming is not lost.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // `process_next` logs what it settled, and its errors, itself: in the job's span.
        let idle = match worker.process_next().await {
            Ok(Processed::Idle) | Err(_) => true,
            Ok(_) => false,
        };
        if idle {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = &mut notified => {}
                _ = tokio::time::sleep(poll_interval) => {}
            }
        }
    }
}

/// Runs `requeue_expired` at start (a job orphaned by a killed process comes back once its
/// lease expires) and then every half lease.
async fn requeue_loop(ctx: JobsContext, wake: Arc<Notify>, shutdown: CancellationToken) {
    let period = (ctx.lease / 2).max(Duration::from_millis(100));
    loop {
        match requeue_once(&ctx).await {
            Ok(0) => {}
            Ok(n) => {
                info!(requeued = n, "recovered jobs with expired leases");
                wake.notify_waiters();
            }
            Err(error) => warn!(%error, "requeue_expired failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// One pass of orphan recovery; adds an event to each recovered job saying what happened.
pub(crate) async fn requeue_once(ctx: &JobsContext) -> Result<usize, StoreError> {
    let now = unix_now();
    let ids = ctx
        .store
        .requeue_expired(now, i64::from(ctx.max_attempts))
        .await?;
    for id in &ids {
        let Some(job) = ctx.store.get_job(id).await? else {
            continue;
        };
        let event = match job.status {
            JobStatus::Failed => {
                let error = job.error.clone().unwrap_or_default();
                let message = error["message"]
                    .as_str()
                    .unwrap_or("worker lost")
                    .to_string();
                let mut event = EventRow::message(id, "error", message, now);
                event.data =
                    Some(json!({"error_code": error["code"], "error_param": error["param"]}));
                event
            }
            JobStatus::Paused => EventRow::info(id, "Fine-tuning job paused", now),
            _ => EventRow::message(
                id,
                "warn",
                "The worker running this job stopped responding; job requeued",
                now,
            ),
        };
        ctx.store.insert_event(&event).await?;
    }
    Ok(ids.len())
}
