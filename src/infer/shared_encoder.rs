//! `SharedEncoderEngine`: a base encoder loaded once for every LoRA classifier of it, on
//! its own OS thread, behind an async `classify` that names the adapter: the
//! [`BatchEngine`] over `tasks::sequence_classification::shared`. Texts of several
//! adapters share its rounds (one forward per adapter in each).

use std::sync::Arc;

use super::batch::BatchEngine;
use super::engine::EngineConfig;
use super::registry::Servable;
use super::InferError;
use crate::tasks::sequence_classification::serve::ClassPrediction;
use crate::tasks::sequence_classification::shared::{
    AdapterText, ClassifierAdapter, SharedEncoderClassifier,
};

pub struct SharedEncoderEngine {
    batch: BatchEngine<SharedEncoderClassifier>,
}

impl SharedEncoderEngine {
    /// Starts the engine thread for `backend`.
    pub fn spawn(
        name: &str,
        backend: SharedEncoderClassifier,
        config: EngineConfig,
    ) -> Result<Self, InferError> {
        Ok(Self {
            batch: BatchEngine::spawn(name, backend, config)?,
        })
    }

    /// Classifies `texts` (already validated as non-empty) with `adapter` over this base.
    pub async fn classify(
        &self,
        texts: Vec<String>,
        adapter: Arc<ClassifierAdapter>,
    ) -> Result<Vec<ClassPrediction>, InferError> {
        let inputs = texts
            .into_iter()
            .map(|text| AdapterText {
                text,
                adapter: adapter.clone(),
            })
            .collect();
        self.batch.serve(inputs).await
    }
}

impl Servable for SharedEncoderEngine {
    fn parameter_bytes(&self) -> usize {
        self.batch.parameter_bytes()
    }
}
