//! LoRA adapters served unmerged over a shared base: a second [`ModelRegistry`] beside the
//! models' one, with its own byte budget, single-flight loads and LRU eviction, whose
//! entries are adapters (a few MB) rather than engines. Evicting an adapter never touches
//! the base; evicting the base leaves its adapters cached, and a request for one of them
//! loads the base again.
//!
//! [`AdapterCatalog`] answers only adapter models, and loads their base first (through the
//! models' registry), so the adapter is built on the base's device.

use std::sync::{Arc, Weak};

use candle_core::Device;
use futures::future::BoxFuture;

use super::catalog::{ModelCatalog, ServableModel};
use super::registry::{ModelLoader, ModelRegistry, Servable};
use super::{InferError, InferenceHandle, LoadedModel};
use crate::domain::task::ServedKind;
use crate::tasks::sequence_classification::shared::ClassifierAdapter;
use crate::zoo::decoder::{DecoderConfig, ServedAdapter};
use crate::zoo::shared_encoder::SharedEncoderBase;

/// What the adapters' registry is built from.
pub(super) struct AdapterSettings {
    pub(super) catalog: Arc<dyn ModelCatalog>,
    pub(super) devices: Vec<Device>,
    pub(super) cache_bytes: usize,
    pub(super) failure_ttl: std::time::Duration,
}

impl AdapterSettings {
    /// The adapters' registry; its catalog loads each adapter's base through `models`.
    pub(super) fn into_registry(
        self,
        models: &Arc<ModelRegistry<LoadedModel>>,
    ) -> ModelRegistry<LoadedAdapter> {
        let catalog = AdapterCatalog {
            inner: self.catalog,
            models: Arc::downgrade(models),
        };
        let loader = AdapterLoader {
            devices: self.devices,
        };
        ModelRegistry::new(
            Arc::new(catalog),
            Arc::new(loader),
            self.cache_bytes,
            self.failure_ttl,
        )
    }
}

impl InferenceHandle {
    /// The engine serving `model` and, when `model` is a LoRA adapter served unmerged, the
    /// adapter its requests add to the base's engine.
    pub(super) async fn engine_and_adapter(
        &self,
        model: &str,
    ) -> Result<(Arc<LoadedModel>, Option<Arc<LoadedAdapter>>), InferError> {
        if !self.registry.is_loaded(model) {
            // Twice at most: an adapter built on a device its base has since left (the
            // base was evicted and loaded onto another) is rebuilt once.
            for _ in 0..2 {
                let adapter = match self.adapters.get(model).await {
                    Ok(adapter) => adapter,
                    Err(InferError::ModelNotFound(_)) => break,
                    Err(error) => return Err(error),
                };
                let base = self.registry.get(&adapter.base).await?;
                if self.registry.device_slot(&adapter.base) == Some(adapter.slot) {
                    return Ok((base, Some(adapter)));
                }
                self.adapters.evict(model);
            }
        }
        Ok((self.registry.get(model).await?, None))
    }
}

/// An adapter ready to join its base's batches.
pub struct LoadedAdapter {
    pub weights: AdapterWeights,
    /// The base model's name (its engine in the models' registry).
    pub base: String,
    /// The serving device it was built on (the base's when it was loaded).
    pub slot: usize,
}

/// What an adapter adds to its base, by the base's kind.
pub enum AdapterWeights {
    /// LoRA on a decoder's projections, added per row of the base's decode batches.
    Decoder(Arc<ServedAdapter>),
    /// LoRA on an encoder with its classification head, built over the shared encoder.
    Classifier(Arc<ClassifierAdapter>),
}

impl LoadedAdapter {
    /// The decoder adapter, for a generation request; `None` for no adapter, an error for
    /// an adapter of another kind (its base is not a decoder either, so this is a fault).
    pub(super) fn decoder(
        adapter: Option<&Arc<LoadedAdapter>>,
    ) -> Result<Option<Arc<ServedAdapter>>, InferError> {
        match adapter.map(|a| &a.weights) {
            None => Ok(None),
            Some(AdapterWeights::Decoder(weights)) => Ok(Some(weights.clone())),
            Some(AdapterWeights::Classifier(_)) => Err(InferError::engine(
                "a classification adapter was sent to a language model",
            )),
        }
    }
}

impl Servable for LoadedAdapter {
    fn parameter_bytes(&self) -> usize {
        match &self.weights {
            AdapterWeights::Decoder(adapter) => adapter.bytes(),
            AdapterWeights::Classifier(adapter) => adapter.bytes(),
        }
    }
}

/// Resolves adapter models only (others are "not found" here and served by the models'
/// registry), after loading their base through `models`.
pub struct AdapterCatalog {
    pub inner: Arc<dyn ModelCatalog>,
    /// Weak: the models' registry owns nothing of this one.
    pub models: Weak<ModelRegistry<LoadedModel>>,
}

impl ModelCatalog for AdapterCatalog {
    fn resolve(&self, model: &str) -> BoxFuture<'_, Result<Option<ServableModel>, String>> {
        let model = model.to_string();
        Box::pin(async move {
            let Some(mut served) = self.inner.resolve(&model).await? else {
                return Ok(None);
            };
            let Some(base) = served.adapter_of.as_mut() else {
                return Ok(None);
            };
            let models = self
                .models
                .upgrade()
                .ok_or_else(|| "inference is shutting down".to_string())?;
            let loaded = models
                .get(&base.name)
                .await
                .map_err(|e| format!("loading base model `{}` of `{model}`: {e}", base.name))?;
            drop(loaded);
            base.slot = models.device_slot(&base.name).unwrap_or(0);
            Ok(Some(served))
        })
    }
}

/// Builds adapters on their base's serving device.
pub struct AdapterLoader {
    /// The serving devices, in the models' registry's budget order.
    pub devices: Vec<Device>,
}

impl ModelLoader<LoadedAdapter> for AdapterLoader {
    fn load(&self, model: &ServableModel) -> Result<LoadedAdapter, InferError> {
        let base = model
            .adapter_of
            .as_ref()
            .ok_or_else(|| InferError::ModelNotFound(model.name.clone()))?;
        let device = self
            .devices
            .get(base.slot)
            .ok_or_else(|| InferError::engine(format!("no serving device {}", base.slot)))?;
        let failed = |e: &dyn std::fmt::Display| {
            InferError::engine(format!("loading adapter `{}`: {e}", model.name))
        };
        let weights = match model.kind {
            ServedKind::Classifier => AdapterWeights::Classifier(Arc::new(
                ClassifierAdapter::load(&model.dir, device).map_err(|e| failed(&e))?,
            )),
            ServedKind::CausalLm => {
                let (config, _) = DecoderConfig::from_dir(&base.dir).map_err(|e| failed(&e))?;
                let adapter = crate::tasks::sft::adapter::load_adapter(&model.dir, &config, device)
                    .map_err(|e| failed(&e))?;
                AdapterWeights::Decoder(Arc::new(adapter))
            }
            other => {
                let kind = other.as_str();
                return Err(failed(&format!("no adapters are served for {kind} models")));
            }
        };
        let loaded = LoadedAdapter {
            weights,
            base: base.name.clone(),
            slot: base.slot,
        };
        let bytes = loaded.parameter_bytes();
        // The file read whole and its tensors before the transposed copies kept here: freed
        // now, and without this they stayed resident in this thread's heap (the 20-adapter
        // benchmark's RSS grew 1.13–1.17× the adapters' bytes).
        crate::runtime::release_free_memory();
        tracing::info!(model = %model.name, base = %base.name, bytes, "adapter loaded");
        Ok(loaded)
    }
}

/// Checks PEFT adapter directory `dir` against base decoder directory `base_dir` as serving
/// will load it (names, shapes, pairs, the config's options); a 400 on `param` says what is
/// wrong with the adapter.
pub fn check_peft_adapter(
    dir: &std::path::Path,
    base_dir: &std::path::Path,
    param: &'static str,
) -> Result<(), InferError> {
    let (config, _) = DecoderConfig::from_dir(base_dir)
        .map_err(|e| InferError::engine(format!("reading the base's config: {e}")))?;
    let checked = crate::tasks::sft::adapter::load_peft_adapter(dir, &config, &Device::Cpu)
        .map(drop)
        .map_err(|e| {
            InferError::invalid(
                param,
                format!("The adapter cannot be served over this base model: {e}"),
            )
        });
    // The adapter was built to be checked and dropped: its bytes go back to the system.
    crate::runtime::release_free_memory();
    checked
}

/// Checks PEFT sequence-classification adapter directory `dir` against base encoder
/// directory `base_dir` as serving will build it (every tensor an adapter factor or a head
/// module of this encoder, all of them there, in their shapes; the config's options; the
/// labels' count); a 400 on `param` says what is wrong with the adapter.
pub fn check_classifier_adapter(
    dir: &std::path::Path,
    base_dir: &std::path::Path,
    param: &'static str,
) -> Result<(), InferError> {
    let refused = |e: &dyn std::fmt::Display| {
        InferError::invalid(
            param,
            format!("The adapter cannot be served over this base model: {e}"),
        )
    };
    let checked = (|| {
        let adapter = ClassifierAdapter::load(dir, &Device::Cpu).map_err(|e| refused(&e))?;
        let base = SharedEncoderBase::load(base_dir, &Device::Cpu)
            .map_err(|e| InferError::engine(format!("reading the base encoder: {e}")))?;
        adapter.check_over(&base).map_err(|e| refused(&e))
    })();
    // The adapter and a whole base encoder were loaded to be checked and dropped.
    crate::runtime::release_free_memory();
    checked
}
