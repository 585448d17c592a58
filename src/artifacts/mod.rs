//! artifacts: what a job leaves the user, between `train` (which writes it) and `infer` and
//! the downloads (which read it), so neither side reaches into the other.
//!
//! # Layout
//! - `checkpoint.rs`: the `checkpoints/step-N/` layout, `meta.json` (the task enum, the
//!   base), listing and the resume pick, the trained tensors. A LoRA checkpoint's
//!   `trainable.safetensors` holds only its adapters and heads: the adapter is separable
//!   from the base by construction, served over a shared base and exported as PEFT from it.
//! - `base.rs`: the base model named by id with a fingerprint of its version
//!   (`BaseLocation`), found again through `BaseModels` (models dir, GGUF cache, a job's
//!   starting model); `Checkpoint` is a checkpoint with its base found.
//! - `export.rs`: the download formats (`ExportFormat`).
//! - `peft.rs`: the files of a PEFT adapter directory.
//! - `tensorboard.rs`: a job's metrics events as a TensorBoard event file (the
//!   `tensorboard` download).
//! - `error.rs`: `ArtifactError`.

pub mod base;
pub mod checkpoint;
mod error;
mod export;
pub mod peft;
pub mod tensorboard;

pub use base::{BaseLocation, BaseModels, Checkpoint, Fingerprint, START_MODEL_DIR};
pub use error::ArtifactError;
pub use export::ExportFormat;
