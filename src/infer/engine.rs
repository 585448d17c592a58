//! `Engine`: one loaded classifier on its own OS thread, behind an async `classify`: the
//! [`BatchEngine`] over the classification backend of
//! `tasks::sequence_classification::serve`. Also the settings and the admission every
//! engine shares (`EngineConfig`, `admit`, thread names).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::batch::BatchEngine;
use super::registry::Servable;
use super::InferError;
use crate::tasks::sequence_classification::serve::ClassifierServing;
pub use crate::tasks::sequence_classification::serve::{ClassPrediction, ClassifierBackend};
#[cfg(test)]
pub(crate) use crate::tasks::{sequence_classification::serve::prediction, serve::plan_batches};

/// Batching and back-pressure settings of one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Most texts in one forward pass (and roughly in one serving round).
    pub max_batch_texts: usize,
    /// Most texts queued or running at once; beyond it `classify` answers `Overloaded`.
    /// Also the most inputs one request may carry.
    pub max_queued_texts: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch_texts: 64,
            max_queued_texts: 1024,
        }
    }
}

pub struct Engine {
    batch: BatchEngine<ClassifierServing>,
    labels: Vec<String>,
}

impl Engine {
    /// Starts the engine thread for `backend`.
    pub fn spawn(
        name: &str,
        backend: Box<dyn ClassifierBackend>,
        config: EngineConfig,
    ) -> Result<Self, InferError> {
        let labels = backend.labels().to_vec();
        Ok(Self {
            batch: BatchEngine::spawn(name, ClassifierServing(backend), config)?,
            labels,
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Classifies `texts` (already validated as non-empty) in one of the engine's batches.
    pub async fn classify(&self, texts: Vec<String>) -> Result<Vec<ClassPrediction>, InferError> {
        self.batch.serve(texts).await
    }
}

impl Servable for Engine {
    fn parameter_bytes(&self) -> usize {
        self.batch.parameter_bytes()
    }
}

/// `infer-<model>` with only characters every platform accepts in a thread name
/// (model names come from the catalog and may hold anything).
pub(crate) fn thread_name(model: &str) -> String {
    let safe: String = model
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    format!("infer-{safe}")
}

/// Takes `wanted` places in an engine's bounded queue, or answers 429 at once: a full
/// queue must push back on clients, not grow without bound. Shared by the classification
/// and generation engines; `param` names the request field that counts the places.
pub(crate) fn admit(
    queue: &Arc<Semaphore>,
    wanted: usize,
    model: &str,
    param: &str,
) -> Result<OwnedSemaphorePermit, InferError> {
    let wanted = u32::try_from(wanted)
        .map_err(|_| InferError::invalid(param, format!("`{param}` is too large")))?;
    match queue.clone().try_acquire_many_owned(wanted) {
        Ok(permits) => Ok(permits),
        Err(TryAcquireError::NoPermits) => {
            tracing::warn!(model = %model, "engine queue full");
            Err(InferError::Overloaded)
        }
        Err(TryAcquireError::Closed) => Err(InferError::engine("engine stopped")),
    }
}
