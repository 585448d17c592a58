//! infer: serving fine-tuned models (see lib.rs for the layout).
//!
//! - [`InferenceHandle`] (here): what `api` calls; validates requests, finds the engine
//!   through the registry, runs exports off the runtime.
//! - [`registry`]: model name → `Loading` / `Ready` / `Failed`, single-flight loads,
//!   byte budget with LRU eviction, names resolved through [`ModelCatalog`].
//! - [`engine`]: one model on its own OS thread, batched forwards, 429 on a full queue.
//! - [`classifier`]: the real backend (training checkpoint → merged classifier).
//! - [`catalog`], [`error`]: the narrow types shared with `app` and `api`.

pub mod catalog;
pub mod classifier;
pub mod engine;
mod error;
pub mod registry;

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod handle_tests;
#[cfg(test)]
mod registry_tests;
#[cfg(test)]
mod test_support;

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use candle_core::Device;
use tokio_util::sync::CancellationToken;

pub use catalog::{ModelCatalog, ModelKind, ServableModel};
pub use classifier::{CheckpointClassifier, CheckpointLoader};
pub use engine::{ClassPrediction, ClassifierBackend, Engine, EngineConfig};
pub use error::InferError;
pub use registry::{ModelLoader, ModelRegistry, Servable};

/// How long a failed load is reported before the next request tries again.
pub const DEFAULT_FAILURE_TTL: Duration = Duration::from_secs(5);

/// Settings of the inference side.
#[derive(Debug, Clone)]
pub struct InferOptions {
    /// Budget for the summed parameter bytes of loaded models (LRU eviction beyond).
    pub cache_bytes: usize,
    pub device: Device,
    pub engine: EngineConfig,
    pub failure_ttl: Duration,
}

impl InferOptions {
    pub fn cpu(cache_bytes: usize) -> Self {
        Self {
            cache_bytes,
            device: Device::Cpu,
            engine: EngineConfig::default(),
            failure_ttl: DEFAULT_FAILURE_TTL,
        }
    }
}

/// The async face of inference; cheap to clone (one registry behind an `Arc`).
#[derive(Clone)]
pub struct InferenceHandle {
    registry: Arc<ModelRegistry<Engine>>,
}

impl InferenceHandle {
    /// CPU engines with default batching; models load from training checkpoints.
    pub fn new(
        catalog: Arc<dyn ModelCatalog>,
        cache_bytes: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self::with_options(catalog, InferOptions::cpu(cache_bytes), shutdown)
    }

    pub fn with_options(
        catalog: Arc<dyn ModelCatalog>,
        options: InferOptions,
        shutdown: CancellationToken,
    ) -> Self {
        let loader = CheckpointLoader {
            device: options.device.clone(),
            engine: options.engine,
        };
        let registry = ModelRegistry::new(
            catalog,
            Arc::new(loader),
            options.cache_bytes,
            options.failure_ttl,
        );
        Self::from_registry(registry, shutdown)
    }

    /// Any loader: `api` tests serve fake engines (`Engine::spawn` over a fake
    /// [`ClassifierBackend`]) through the real registry this way.
    pub fn with_loader(
        catalog: Arc<dyn ModelCatalog>,
        loader: Arc<dyn ModelLoader<Engine>>,
        cache_bytes: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let registry = ModelRegistry::new(catalog, loader, cache_bytes, DEFAULT_FAILURE_TTL);
        Self::from_registry(registry, shutdown)
    }

    fn from_registry(registry: ModelRegistry<Engine>, shutdown: CancellationToken) -> Self {
        let registry = Arc::new(registry);
        // At shutdown every engine is dropped (joining its thread) and later requests are
        // refused. The watcher holds only a weak reference, so dropping every handle
        // still frees the engines when the token is never cancelled (tests).
        let weak: Weak<ModelRegistry<Engine>> = Arc::downgrade(&registry);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                shutdown.cancelled().await;
                if let Some(registry) = weak.upgrade() {
                    registry.close();
                }
            });
        }
        Self { registry }
    }

    /// Classifies each input with `model`: per input the argmax label, its probability
    /// and every label's probability. Texts longer than the model's training length are
    /// truncated.
    pub async fn classify(
        &self,
        model: &str,
        inputs: Vec<String>,
    ) -> Result<Vec<ClassPrediction>, InferError> {
        validate_inputs(&inputs)?;
        let engine = self.registry.get(model).await?;
        let answer = engine.classify(inputs).await;
        // If the model was evicted meanwhile, this request holds the last reference and
        // dropping it joins the engine thread: do that off the runtime.
        if let Some(last) = Arc::into_inner(engine) {
            drop(tokio::task::spawn_blocking(move || drop(last)));
        }
        answer
    }

    /// Writes a checkpoint as a merged Hugging Face directory or a PEFT adapter, on a
    /// blocking thread (it reads and writes the whole model).
    pub async fn export(
        &self,
        checkpoint_dir: PathBuf,
        format: crate::train::ExportFormat,
        base_model_id: String,
        out_dir: PathBuf,
    ) -> Result<(), InferError> {
        tokio::task::spawn_blocking(move || {
            export_blocking(&checkpoint_dir, format, &base_model_id, &out_dir)
        })
        .await
        .map_err(|e| InferError::engine(format!("export panicked: {e}")))?
    }

    /// Forgets `model` (after DELETE /v1/models/{id}); requests already running finish.
    pub fn evict(&self, model: &str) {
        self.registry.evict(model);
    }

    /// Whether `model` is loaded and ready (for readiness reporting and tests).
    pub fn is_loaded(&self, model: &str) -> bool {
        self.registry.is_loaded(model)
    }

    /// Summed parameter bytes of the loaded models.
    pub fn cached_bytes(&self) -> usize {
        self.registry.used_bytes()
    }
}

/// The request rules every engine relies on: at least one input, none empty.
fn validate_inputs(inputs: &[String]) -> Result<(), InferError> {
    if inputs.is_empty() {
        return Err(InferError::invalid(
            "input",
            "`input` must contain at least one string",
        ));
    }
    if let Some(index) = inputs.iter().position(String::is_empty) {
        return Err(InferError::invalid(
            "input",
            format!("`input[{index}]` is an empty string"),
        ));
    }
    Ok(())
}

fn export_blocking(
    checkpoint_dir: &std::path::Path,
    format: crate::train::ExportFormat,
    base_model_id: &str,
    out_dir: &std::path::Path,
) -> Result<(), InferError> {
    // A full fine-tune has no adapter: that is the caller's choice of format, not a
    // server fault, so it is answered as a 400 before any work.
    if format == crate::train::ExportFormat::Adapter {
        let meta = crate::train::checkpoint::read_meta(checkpoint_dir)
            .map_err(|e| InferError::engine(format!("reading checkpoint: {e}")))?;
        if !meta.has_lora() {
            return Err(InferError::invalid(
                "format",
                "this model is a full fine-tune and has no LoRA adapter; download the merged model instead",
            ));
        }
    }
    crate::train::export_checkpoint(checkpoint_dir, format, base_model_id, out_dir)
        .map_err(|e| InferError::engine(format!("export: {e}")))
}
