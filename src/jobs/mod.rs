//! jobs: the durable queue's workers. Job rows in the store are the queue; this module
//! claims them, runs them and writes what happened back.
//!
//! # Layout
//! - `pool.rs`: [`WorkerPool`]: one worker task per device slot plus the periodic
//!   `requeue_expired` task, all stopped by one `CancellationToken`.
//! - `worker.rs`: [`Worker`]: claim one job, run it under a heartbeat, settle the outcome
//!   (succeeded / failed / retried / paused / released / cancelled). Every write to the
//!   job names the claim's `Lease` and is refused once the lease lapsed or the job was
//!   cancelled (`Store::leased_*`), so a stale worker never writes into a job another runs.
//! - `control.rs`: [`ControlFlag`] (what the trainer should do next) and the heartbeat task
//!   that extends the lease and turns the row's status into that flag; `WorkerPool::wake`
//!   (called by the api after a cancel or pause) makes it beat at once.
//! - `runner.rs`: the [`JobRunner`] trait, [`RunOutcome`] and [`JobFailure`].
//! - `fine_tune.rs`: [`FineTuneRunner`], the real runner (validation phase, start, training
//!   thread, completion).
//! - `training.rs`: one job's trainer input by task (`src/tasks/<name>/`'s job structs)
//!   and the base-model architecture check.
//! - `progress.rs`: the bridge from the training thread's observer to the async writer of
//!   events, progress, checkpoints and model rows; the observer also records the job's
//!   training speed (`telemetry::metrics`).
//! - `liveness.rs`: which pool tasks still run (`/health`) and which workers are busy
//!   (`/metrics`).
//! - `service.rs`: [`JobService`], the rules of creating and steering jobs that every front
//!   end (OpenAI routes, dashboard, webhooks' outbox) shares.
//! - `results.rs`: result files (CSV served base64-encoded, classification report JSON).
//! - `view.rs`: the dashboard's read-only views through [`JobService`]: the job list with
//!   progress, one job with every metrics event as series, checkpoints, events and report.
//!
//! Logging: everything a job does runs in its `job` span (`telemetry::JOB_SPAN`, with
//! `job_id`): the worker's run, the heartbeat and progress-writer tasks, and the training
//! thread, which also inherits the caller's subscriber.
//!
//! Shutdown flows from the pool's token: workers stop claiming, the heartbeat task sets
//! the flag to `Shutdown`, the trainer checkpoints and the worker releases the job to
//! `queued` (a clean hand-back: the attempt is given back, only lost leases and failed runs
//! count towards `max_attempts`); `WorkerPool::join` waits for all of it.

mod control;
mod device;
mod estimate;
mod fine_tune;
mod liveness;
mod pool;
mod progress;
mod results;
mod runner;
mod service;
mod start_model;
mod training;
mod validate;
mod view;
mod worker;

#[cfg(test)]
mod fine_tune_tests;
#[cfg(test)]
mod log_tests;
#[cfg(test)]
mod method_tests;
#[cfg(test)]
mod ner_job_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod sft_job_tests;
#[cfg(test)]
mod task_option_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod worker_tests;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::blobs::Blobs;
use crate::store::Store;
use crate::telemetry::metrics::TrainingMetrics;

pub use control::{ControlFlag, ControlSignal};
pub use device::device_by_name;
pub use estimate::{
    DeviceEstimate, Duration as EstimatedDuration, DurationBasis, Estimate, EstimateSetup, RateUnit,
};
pub use fine_tune::FineTuneRunner;
pub use liveness::{Busy, BusyFlag, Running, WorkerLiveness};
pub use pool::WorkerPool;
pub use runner::{JobFailure, JobRunner, RunContext, RunOutcome};
pub use service::{JobError, JobService, NewJob, WakeWorkers};
pub use view::{
    AllowedActions, JobList, JobProgress, JobReport, JobSummary, JobView, MetricSeries,
    VIEW_EVENTS, VIEW_JOBS,
};
pub use worker::{Processed, Worker};

/// Everything a worker needs; cheap to clone (store and blobs are handles).
#[derive(Debug, Clone)]
pub struct JobsContext {
    pub store: Store,
    pub blobs: Blobs,
    /// Local base models: `<models_dir>/<org>/<name>/`.
    pub models_dir: PathBuf,
    /// One worker per entry: `cpu`, `cuda:0`, …
    pub devices: Vec<String>,
    /// How long a claim lasts without a heartbeat (heartbeats come every third of it).
    pub lease: Duration,
    /// How often an idle worker looks for work when nobody calls `wake`.
    pub poll_interval: Duration,
    /// Claims allowed per job before a lost or retried job is failed.
    pub max_attempts: u32,
    /// Where running jobs report their training speed (`/metrics`).
    pub metrics: TrainingMetrics,
}

impl JobsContext {
    pub(crate) fn lease_secs(&self) -> i64 {
        i64::try_from(self.lease.as_secs().max(1)).unwrap_or(i64::MAX)
    }
}

/// Unix seconds, the store's clock.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
