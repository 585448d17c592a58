//! train: synchronous fine-tuning on candle, models from `zoo`. No tokio/sqlx/axum here:
//! the `jobs` worker runs this on its own OS thread and listens through [`TrainObserver`].
//!
//! # Layout
//! - `runner.rs`: the task-independent loop (accumulation, clipping, evaluation points,
//!   best model, early stopping, checkpoints, exact resume, pause/cancel).
//! - `classify.rs`: sequence classification as a runner task (`run_classification`).
//! - `data.rs`: tokenization once, seeded per-epoch batch order, collation.
//! - `optim.rs`: own AdamW (fused CPU update, savable state), clipping, accumulation.
//! - `schedule.rs`: warmup + linear/cosine/constant learning rates.
//! - `evaluate.rs`, `metrics.rs`: loss, accuracy, F1, confusion, sklearn-like report.
//! - `named_metrics.rs`: metrics as named values; each task declares its `MetricNames`.
//! - `checkpoint.rs`: atomic `checkpoints/step-N/` dirs, resume pick, optimizer pruning.
//! - `summary.rs`: best-model choice, results CSV, final report.
//! - `export.rs`: checkpoint → servable model, merged HF dir or PEFT adapter.
//! - `observer.rs`: `TrainObserver`, `Control`, `StepMetrics`, `SavedCheckpoint`.

pub mod checkpoint;
mod classify;
#[cfg(test)]
pub(crate) mod classify_tests;
pub mod data;
mod error;
pub mod evaluate;
mod export;
pub mod metrics;
pub mod named_metrics;
mod observer;
pub mod optim;
pub(crate) mod runner;
#[cfg(test)]
mod runner_tests;
pub mod schedule;
pub mod sft;
pub(crate) mod summary;

pub use classify::{
    run_classification, ClassificationJob, TrainOutcome, TrainSummary, CLASSIFICATION_METRICS,
};
pub use error::TrainError;
pub use export::{export_checkpoint, load_classifier_checkpoint, ExportFormat};
pub use named_metrics::{MetricNames, Metrics, MetricsRow};
pub use observer::{Control, EventLevel, SavedCheckpoint, StepMetrics, TrainObserver};
pub use sft::SFT_METRICS;
pub use sft::{load_lm_checkpoint, run_sft, LoadedLm, SftExamples, SftJob};
pub use summary::{results_csv, RESULTS_CSV_HEADER, SFT_RESULTS_CSV_HEADER};
