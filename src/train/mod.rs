//! train: the task-independent core of synchronous fine-tuning on candle. No
//! tokio/sqlx/axum here: the `jobs` worker runs a task's trainer (`crate::tasks`) on its
//! own OS thread and listens through [`TrainObserver`].
//!
//! # Layout
//! - `runner.rs`: the task-independent loop (accumulation, clipping, evaluation points,
//!   best model, early stopping, checkpoints, exact resume, pause/cancel) over a
//!   `TrainTask` that a task folder under `src/tasks/` implements.
//! - `task.rs`: `TrainTask`, what a task gives the loop (micro-batches, evaluations, hooks).
//! - `setup.rs`: what every task's run does around the loop (best metric, checkpoint
//!   meta, the new head's learning rate, resume, outcome), written once.
//! - `data.rs`: seeded per-epoch batch order, sequential batches.
//! - `optim.rs`: own AdamW (fused CPU update, savable state), clipping, accumulation.
//! - `gradients.rs`: the gradients it steps on (tensors, or an embedding table's rows), their
//!   norm and clipping, and the row-wise table update.
//! - `schedule.rs`: warmup + linear/cosine/constant learning rates.
//! - `named_metrics.rs`: metrics as named values; each task declares its `MetricNames`.
//! - `summary.rs`: best-model choice, results CSV, checkpoint metrics, `TrainOutcome`.
//! - `evaluate.rs`: helpers every task's evaluation uses.
//! - `checkpoint.rs`: writing `checkpoints/step-N/` atomically, `state.json`, optimizer
//!   pruning (the layout, `meta.json` and the resume pick are `crate::artifacts`').
//! - `observer.rs`: `TrainObserver`, `Control`, `StepMetrics`, `SavedCheckpoint`.

pub mod checkpoint;
pub mod data;
mod error;
pub mod evaluate;
mod gradients;
pub mod memory;
pub mod named_metrics;
mod observer;
pub mod optim;
pub mod plan;
pub(crate) mod runner;
#[cfg(test)]
mod runner_tests;
pub mod schedule;
pub(crate) mod setup;
#[cfg(test)]
mod setup_tests;
pub(crate) mod summary;
mod task;

pub use error::TrainError;
pub use named_metrics::{MetricNames, Metrics, MetricsRow};
pub use observer::{Control, EventLevel, SavedCheckpoint, StepMetrics, TrainObserver};
pub use summary::{
    results_csv, TrainOutcome, TrainSummary, RESULTS_CSV_HEADER, SFT_RESULTS_CSV_HEADER,
};
