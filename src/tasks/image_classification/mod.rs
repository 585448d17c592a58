//! Image classification by transfer learning (timm's `ImageFolder` recipes): a pretrained
//! CNN from `zoo::vision`, a new head, the backbone frozen and then unfrozen from the top
//! as `unfreeze_schedule` says.
//!
//! # Layout
//! - `train.rs`: the task for the shared loop (`run_image_classification`).
//! - `data.rs`: decoded samples, batches prepared in parallel, seeded augmentation.
//! - `report.rs`: the best checkpoint's classification report and confusion matrix.
//! - `export.rs`: checkpoint → served model, and the timm-layout download.
//! - `serve.rs`: the serving backend behind `/v1/classifications` for image inputs.
//!
//! Checkpoint variant
//! `CheckpointTask::ImageClassification` (the BatchNorm running statistics are kept in
//! `trainable.safetensors` with the trained tensors).

mod data;
pub mod export;
mod report;
pub mod serve;
#[cfg(test)]
mod tests;
mod train;

pub use train::{
    plan_image_classification, run_image_classification, ImageClassificationJob, IMAGE_METRICS,
};
