//! The trainer's error type; `jobs` maps `InvalidData` to a fatal `invalid_training_file`
//! failure and the rest to server-side failures.

use crate::artifacts::ArtifactError;
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
    /// The job's estimated peak memory is over what its device has; the message says what
    /// would fit (`train::memory`).
    #[error("{0}")]
    DoesNotFit(String),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    /// Writing `what` (e.g. `checkpoint step-30`) failed; a full disk is told apart from
    /// other I/O errors by `source.kind()`.
    #[error("writing {what} failed: {source}")]
    Write {
        what: String,
        source: std::io::Error,
    },
    #[error("model error: {0}")]
    Zoo(#[from] ZooError),
    #[error("invalid json: {0}")]
    Json(#[from] serde_json::Error),
    /// A checkpoint's base model is missing or not the version it was trained over.
    #[error("{0}")]
    BaseModel(String),
}

impl From<ArtifactError> for TrainError {
    fn from(error: ArtifactError) -> Self {
        match error {
            ArtifactError::InvalidCheckpoint { path, message } => {
                Self::InvalidCheckpoint { path, message }
            }
            ArtifactError::BaseModel(message) => Self::BaseModel(message),
            ArtifactError::Candle(e) => Self::Candle(e),
            ArtifactError::Io(e) => Self::Io(e),
            ArtifactError::Zoo(e) => Self::Zoo(e),
            ArtifactError::Json(e) => Self::Json(e),
        }
    }
}

impl TrainError {
    /// Names the checkpoint by its directory (`step-30`), never by its absolute path: the
    /// message can reach a job's error, which API clients read.
    pub(crate) fn checkpoint(path: &std::path::Path, message: impl Into<String>) -> Self {
        ArtifactError::checkpoint(path, message).into()
    }

    /// A data error found in the validation file says so; other errors pass unchanged.
    pub(crate) fn in_validation_file(self) -> Self {
        match self {
            Self::InvalidData(message) => Self::InvalidData(format!("Validation file: {message}")),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TrainError;

    #[test]
    fn only_data_errors_are_named_as_the_validation_files() {
        let data = TrainError::InvalidData("Example 3: no assistant message".into());
        assert_eq!(
            data.in_validation_file().to_string(),
            "Validation file: Example 3: no assistant message"
        );
        let io = TrainError::Io(std::io::Error::other("disk"));
        assert_eq!(io.in_validation_file().to_string(), "io error: disk");
    }
}
