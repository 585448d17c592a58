//! The artifacts' error type. The trainer and the tasks turn it into a `TrainError`
//! (`From`), keeping I/O errors I/O errors so a full disk stays recognisable.

use std::path::Path;

use crate::zoo::ZooError;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A checkpoint directory is incomplete or does not describe a model we can load.
    #[error("invalid checkpoint `{path}`: {message}")]
    InvalidCheckpoint { path: String, message: String },
    /// The base model a checkpoint was trained over is not on this server, or not the
    /// version it was trained over; the message names it by id.
    #[error("{0}")]
    BaseModel(String),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("model error: {0}")]
    Zoo(#[from] ZooError),
    #[error("invalid json: {0}")]
    Json(#[from] serde_json::Error),
}

impl ArtifactError {
    /// Names the checkpoint by its directory (`step-30`), never by its absolute path: the
    /// message can reach a job's error, which API clients read.
    pub(crate) fn checkpoint(path: &Path, message: impl Into<String>) -> Self {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::InvalidCheckpoint {
            path: name,
            message: message.into(),
        }
    }
}
