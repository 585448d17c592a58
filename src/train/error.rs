//! The trainer's error type; `jobs` maps `InvalidData` to a fatal `invalid_training_file`
//! failure and the rest to server-side failures.

use crate::zoo::ZooError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The dataset cannot be trained on (unknown label, empty set…); the message names
    /// the example.
    #[error("{0}")]
    InvalidData(String),
    /// A checkpoint directory is incomplete or does not describe a model we can load.
    #[error("invalid checkpoint `{path}`: {message}")]
    InvalidCheckpoint { path: String, message: String },
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("model error: {0}")]
    Zoo(#[from] ZooError),
    #[error("invalid json: {0}")]
    Json(#[from] serde_json::Error),
}

impl TrainError {
    pub(crate) fn checkpoint(path: &std::path::Path, message: impl Into<String>) -> Self {
        Self::InvalidCheckpoint {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}
