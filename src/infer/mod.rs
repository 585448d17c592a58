//! infer: serving fine-tuned models (see lib.rs for the layout).
//!
//! - [`InferenceHandle`] (here): what `api` calls; validates requests, finds the engine
//!   through the registry, runs exports off the runtime.
//! - [`registry`]: model name → `Loading` / `Ready` / `Failed`, single-flight loads,
//!   byte budget with LRU eviction, names resolved through [`ModelCatalog`].
//! - [`batch`]: `BatchEngine`, one model on its own OS thread, batched forwards, 429 on a
//!   full queue, generic over a task's serving backend (`tasks::serve::ServeBackend`,
//!   implemented in `tasks/<task>/serve.rs`).
//! - [`engine`], [`question_answering`], [`token_classification`]: the classification, QA
//!   and NER engines, each a `BatchEngine` over its task's backend.
//! - [`loader`]: catalog entry → the engine of its kind.
//! - [`generate`]: text generation (one thread per language model, continuous batching,
//!   sampling, stop strings, streaming) behind `chat` / `complete`.
//! - [`adapters`]: LoRA adapters served unmerged over a shared base, in a registry of
//!   their own (byte budget, LRU) beside the models': decoder adapters joining their base's
//!   decode batches, classifier adapters built over a [`shared_encoder`] engine.
//! - [`shared_encoder`]: a base encoder loaded once for all its LoRA classifiers.
//! - `requests`: the handle's classification, NER and QA requests.
//! - [`catalog`], [`error`]: the narrow types shared with `app` and `api`.

pub mod adapters;
pub mod batch;
pub mod catalog;
pub mod engine;
mod error;
pub mod generate;
pub mod image_classification;
pub mod loader;
pub mod question_answering;
pub mod registry;
mod requests;
pub mod shared_encoder;
pub mod token_classification;

#[cfg(test)]
pub(crate) mod adapter_handle_tests;
#[cfg(test)]
mod classifier_adapter_tests;
#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod handle_tests;
#[cfg(test)]
mod registry_devices_tests;
#[cfg(test)]
mod registry_tests;
#[cfg(test)]
mod test_support;

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use candle_core::Device;
use tokio_util::sync::CancellationToken;

use crate::artifacts::{BaseModels, ExportFormat};
use crate::telemetry::metrics::{GenerationMetrics, LoadedModel as LoadedBytes};

pub use crate::domain::task::ServedKind;
pub use crate::tasks::sequence_classification::serve::CheckpointClassifier;
use adapters::{AdapterSettings, LoadedAdapter};
pub use batch::BatchEngine;
pub use catalog::{ModelCatalog, ServableModel};
pub use engine::{ClassPrediction, ClassifierBackend, Engine, EngineConfig};
pub use error::InferError;
pub use generate::{
    Choice, FinishReason, GenEngine, GenEngineConfig, Generation, GenerationEvent,
    GenerationParams, GenerationRequest, GenerationStream, LmBackend, Prompt, TokenLogprob,
    TopLogprob, Usage,
};
pub use image_classification::ImageEngine;
pub use loader::CheckpointLoader;
pub use question_answering::{QaBackend, QaEngine, QaPrediction, QaQuestion};
pub use registry::{ModelLoader, ModelRegistry, Servable};
use requests::{wrong_kind_qa, wrong_kind_token};
pub use shared_encoder::SharedEncoderEngine;
pub use token_classification::{Aggregation, TextToTag, TokenEngine, TokenEntity};

/// How long a failed load is reported before the next request tries again.
pub const DEFAULT_FAILURE_TTL: Duration = Duration::from_secs(5);

/// Settings of the inference side.
#[derive(Debug, Clone)]
pub struct InferOptions {
    /// Budget for the summed parameter bytes of the models loaded on each serving device
    /// (LRU eviction beyond).
    pub cache_bytes: usize,
    /// The serving devices; a new model goes to the one with the most budget free.
    pub devices: Vec<Device>,
    pub engine: EngineConfig,
    pub generation: GenEngineConfig,
    pub failure_ttl: Duration,
    /// Budget for the summed bytes of the LoRA adapters kept loaded (LRU eviction beyond),
    /// beside the models' budget.
    pub adapter_cache_bytes: usize,
    /// Where the bases that checkpoints name by id are found.
    pub bases: BaseModels,
    /// What the language models' engines record (`/metrics`); by default into metrics no
    /// registry holds.
    pub metrics: GenerationMetrics,
}

/// A loaded model of either kind: what the registry caches and evicts.
pub enum LoadedModel {
    Classifier(Engine),
    Generator(GenEngine),
    QuestionAnswerer(QaEngine),
    TokenClassifier(TokenEngine),
    ImageClassifier(ImageEngine),
    /// A base encoder its LoRA classifiers share (served only with one of them).
    SharedEncoder(SharedEncoderEngine),
}

impl Servable for LoadedModel {
    fn parameter_bytes(&self) -> usize {
        match self {
            LoadedModel::Classifier(engine) => engine.parameter_bytes(),
            LoadedModel::Generator(engine) => engine.parameter_bytes(),
            LoadedModel::QuestionAnswerer(engine) => engine.parameter_bytes(),
            LoadedModel::TokenClassifier(engine) => engine.parameter_bytes(),
            LoadedModel::ImageClassifier(engine) => engine.parameter_bytes(),
            LoadedModel::SharedEncoder(engine) => engine.parameter_bytes(),
        }
    }
}

impl InferOptions {
    pub fn cpu(cache_bytes: usize) -> Self {
        Self {
            cache_bytes,
            devices: vec![Device::Cpu],
            engine: EngineConfig::default(),
            generation: GenEngineConfig::default(),
            failure_ttl: DEFAULT_FAILURE_TTL,
            adapter_cache_bytes: crate::config::DEFAULT_ADAPTER_CACHE_BYTES,
            bases: BaseModels::default(),
            metrics: GenerationMetrics::default(),
        }
    }

    /// Engines on `devices` (at least one) with the `inference` section's budgets.
    pub fn from_config(config: &crate::config::InferenceConfig, devices: Vec<Device>) -> Self {
        let mut options = Self::cpu(config.infer_cache_bytes);
        options.adapter_cache_bytes = config.adapter_cache_bytes;
        options.generation.kv_cache_bytes = config.kv_cache_bytes;
        options.generation.max_batch_sequences = config.max_batch_sequences;
        options.generation.max_queued_sequences = config.max_queued_sequences;
        options.generation.prefill_chunk_tokens = config.prefill_chunk_tokens;
        options.generation.serve_dtype = config.serve_dtype;
        if !devices.is_empty() {
            options.devices = devices;
        }
        options
    }
}

/// The async face of inference; cheap to clone (the registries behind `Arc`s).
#[derive(Clone)]
pub struct InferenceHandle {
    registry: Arc<ModelRegistry<LoadedModel>>,
    /// LoRA adapters served over a base of `registry`.
    adapters: Arc<ModelRegistry<LoadedAdapter>>,
    /// Where exports find the bases checkpoints name.
    bases: BaseModels,
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
        let budgets = vec![options.cache_bytes; options.devices.len().max(1)];
        let loader = CheckpointLoader {
            devices: options.devices.clone(),
            engine: options.engine,
            generation: options.generation,
            bases: options.bases.clone(),
            metrics: options.metrics,
        };
        let registry = ModelRegistry::with_budgets(
            catalog.clone(),
            Arc::new(loader),
            budgets,
            options.failure_ttl,
        );
        let adapters = AdapterSettings {
            catalog,
            devices: options.devices,
            cache_bytes: options.adapter_cache_bytes,
            failure_ttl: options.failure_ttl,
        };
        Self::from_registry(registry, adapters, options.bases, shutdown)
    }

    /// Any loader: `api` tests serve fake engines (`Engine::spawn` over a fake
    /// [`ClassifierBackend`], `GenEngine::spawn` over a fake [`LmBackend`]) through the
    /// real registry this way.
    pub fn with_loader(
        catalog: Arc<dyn ModelCatalog>,
        loader: Arc<dyn ModelLoader<LoadedModel>>,
        cache_bytes: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let registry =
            ModelRegistry::new(catalog.clone(), loader, cache_bytes, DEFAULT_FAILURE_TTL);
        let adapters = AdapterSettings {
            catalog,
            devices: vec![Device::Cpu],
            cache_bytes: crate::config::DEFAULT_ADAPTER_CACHE_BYTES,
            failure_ttl: DEFAULT_FAILURE_TTL,
        };
        Self::from_registry(registry, adapters, BaseModels::default(), shutdown)
    }

    fn from_registry(
        registry: ModelRegistry<LoadedModel>,
        adapters: AdapterSettings,
        bases: BaseModels,
        shutdown: CancellationToken,
    ) -> Self {
        let registry = Arc::new(registry);
        let adapters = Arc::new(adapters.into_registry(&registry));
        // At shutdown every engine is dropped (joining its thread) and later requests are
        // refused. The watcher holds only a weak reference, so dropping every handle
        // still frees the engines when the token is never cancelled (tests).
        let weak: Weak<ModelRegistry<LoadedModel>> = Arc::downgrade(&registry);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak_adapters = Arc::downgrade(&adapters);
            runtime.spawn(async move {
                shutdown.cancelled().await;
                if let Some(registry) = weak.upgrade() {
                    registry.close();
                }
                if let Some(adapters) = weak_adapters.upgrade() {
                    adapters.close();
                }
            });
        }
        Self {
            registry,
            adapters,
            bases,
        }
    }

    /// Starts a chat completion: `messages` go through the model's chat template. The
    /// stream yields deltas as they are generated; `GenerationStream::collect` waits for
    /// the whole answer. Prompt errors (too long…) are returned here, before any event.
    pub async fn chat(
        &self,
        model: &str,
        messages: Vec<serde_json::Value>,
        tools: Option<serde_json::Value>,
        params: GenerationParams,
    ) -> Result<GenerationStream, InferError> {
        let request = GenerationRequest {
            prompt: Prompt::Chat { messages, tools },
            params,
        };
        self.generate(model, request).await
    }

    /// Starts a text completion of `prompt` (tokenized as is, no template).
    pub async fn complete(
        &self,
        model: &str,
        prompt: String,
        params: GenerationParams,
    ) -> Result<GenerationStream, InferError> {
        let request = GenerationRequest {
            prompt: Prompt::Text(prompt),
            params,
        };
        self.generate(model, request).await
    }

    async fn generate(
        &self,
        model: &str,
        request: GenerationRequest,
    ) -> Result<GenerationStream, InferError> {
        let (loaded, adapter) = self.engine_and_adapter(model).await?;
        let answer = match loaded.as_ref() {
            LoadedModel::Generator(engine) => match LoadedAdapter::decoder(adapter.as_ref()) {
                Ok(adapter) => {
                    // The stream keeps the model loaded until it ends, even if evicted (the
                    // engine holds the adapter while the request runs).
                    let keep_alive: generate::KeepAlive = loaded.clone();
                    engine
                        .generate_keeping(request, adapter, Some(keep_alive))
                        .await
                }
                Err(error) => Err(error),
            },
            LoadedModel::Classifier(_) | LoadedModel::SharedEncoder(_) => Err(InferError::invalid(
                "model",
                format!("`{model}` is a classification model; use /v1/classifications"),
            )),
            LoadedModel::QuestionAnswerer(_) => Err(wrong_kind_qa(model)),
            LoadedModel::TokenClassifier(_) => Err(wrong_kind_token(model)),
            LoadedModel::ImageClassifier(_) => Err(InferError::invalid(
                "model",
                format!("`{model}` is an image classification model; use /v1/classifications"),
            )),
        };
        release_off_runtime(loaded);
        answer
    }

    /// Writes a checkpoint as a merged Hugging Face directory or a PEFT adapter, on a
    /// blocking thread (it reads and writes the whole model).
    pub async fn export(
        &self,
        checkpoint_dir: PathBuf,
        format: ExportFormat,
        base_model_id: String,
        out_dir: PathBuf,
    ) -> Result<(), InferError> {
        let bases = self.bases.clone();
        tokio::task::spawn_blocking(move || {
            export_blocking(&checkpoint_dir, &bases, format, &base_model_id, &out_dir)
        })
        .await
        .map_err(|e| InferError::engine(format!("export panicked: {e}")))?
    }

    /// Forgets `model` (after DELETE /v1/models/{id}); requests already running finish.
    pub fn evict(&self, model: &str) {
        self.registry.evict(model);
        self.adapters.evict(model);
    }

    /// Whether `model` is loaded and ready, as a model or as an adapter (for readiness
    /// reporting and tests).
    pub fn is_loaded(&self, model: &str) -> bool {
        self.registry.is_loaded(model) || self.adapters.is_loaded(model)
    }

    /// Every loaded model and adapter with its bytes (`/metrics`).
    pub fn loaded_models(&self) -> Vec<LoadedBytes> {
        let of_kind = |kind: &'static str, loaded: Vec<(String, usize)>| {
            loaded.into_iter().map(move |(name, bytes)| LoadedBytes {
                name,
                kind,
                bytes: u64::try_from(bytes).unwrap_or(u64::MAX),
            })
        };
        of_kind("model", self.registry.loaded())
            .chain(of_kind("adapter", self.adapters.loaded()))
            .collect()
    }

    /// Summed parameter bytes of the loaded models.
    pub fn cached_bytes(&self) -> usize {
        self.registry.used_bytes()
    }

    /// Summed bytes of the loaded adapters.
    pub fn cached_adapter_bytes(&self) -> usize {
        self.adapters.used_bytes()
    }
}

/// If the model was evicted meanwhile, `loaded` may be the last reference, and dropping
/// it joins the engine thread: do that off the runtime.
fn release_off_runtime(loaded: Arc<LoadedModel>) {
    if let Some(last) = Arc::into_inner(loaded) {
        drop(tokio::task::spawn_blocking(move || drop(last)));
    }
}

fn export_blocking(
    checkpoint_dir: &std::path::Path,
    bases: &BaseModels,
    format: ExportFormat,
    base_model_id: &str,
    out_dir: &std::path::Path,
) -> Result<(), InferError> {
    // A full fine-tune has no adapter: that is the caller's choice of format, not a
    // server fault, so it is answered as a 400 before any work.
    if format == ExportFormat::Adapter {
        let meta = crate::artifacts::checkpoint::read_meta(checkpoint_dir)
            .map_err(|e| InferError::engine(format!("reading checkpoint: {e}")))?;
        if !meta.has_lora() {
            return Err(InferError::invalid(
                "format",
                "this model is a full fine-tune and has no LoRA adapter; download the merged model instead",
            ));
        }
    }
    crate::tasks::export_checkpoint(checkpoint_dir, bases, format, base_model_id, out_dir)
        .map_err(|e| InferError::engine(format!("export: {e}")))
}
