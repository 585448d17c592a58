//! Sequence classification (`AutoModelForSequenceClassification`): text → one label, an
//! encoder from `zoo` with a classification head.
//!
//! # Layout
//! - `train.rs`: the classifier as a runner task (`run_classification`) and its metric
//!   names (`CLASSIFICATION_METRICS`).
//! - `data.rs`: tokenization once, labelled batches padded per batch.
//! - `evaluate.rs`, `metrics.rs`: loss, accuracy, macro F1, confusion, sklearn-like report.
//! - `report.rs`: the best checkpoint's classification report (`classification_report.json`).
//! - `export.rs`: checkpoint → served classifier, merged HF dir or PEFT adapter.
//! - `serve.rs`: the serving backend (tokenize, batched logits, softmax) that `infer`'s
//!   engine drives for `/v1/classifications`.
//!
//! Checkpoint variant
//! `CheckpointTask::SequenceClassification`.

pub mod data;
pub mod evaluate;
mod export;
pub mod metrics;
pub mod peft_adapter;
pub(crate) mod report;
pub mod serve;
pub mod shared;
#[cfg(test)]
mod small_data_tests;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_checkpointing;
#[cfg(test)]
mod tests_lifecycle;
#[cfg(test)]
mod tests_precision;
mod train;

pub(crate) use export::export_classifier_checkpoint;
pub use export::load_classifier_checkpoint;
pub use train::{
    plan_classification, run_classification, ClassificationJob, CLASSIFICATION_METRICS,
};
