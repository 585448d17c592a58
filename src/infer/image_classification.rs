//! `ImageEngine`: one loaded image classifier on its own OS thread, behind an async
//! `classify`: the [`BatchEngine`] over `tasks::image_classification::serve::ImageServing`
//! (images of every queued request share forward passes).

use super::batch::BatchEngine;
use super::engine::EngineConfig;
use super::registry::Servable;
use super::{ClassPrediction, InferError};
pub use crate::tasks::image_classification::serve::ImageServing;

pub struct ImageEngine {
    batch: BatchEngine<ImageServing>,
}

impl ImageEngine {
    pub fn spawn(
        name: &str,
        backend: ImageServing,
        config: EngineConfig,
    ) -> Result<Self, InferError> {
        Ok(Self {
            batch: BatchEngine::spawn(name, backend, config)?,
        })
    }

    /// One prediction per image (the file's bytes), in one of the engine's rounds.
    pub async fn classify(&self, images: Vec<Vec<u8>>) -> Result<Vec<ClassPrediction>, InferError> {
        self.batch.serve(images).await
    }
}

impl Servable for ImageEngine {
    fn parameter_bytes(&self) -> usize {
        self.batch.parameter_bytes()
    }
}
