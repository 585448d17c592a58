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
use super::{InferError, LoadedModel};
use crate::zoo::decoder::{DecoderConfig, ServedAdapter};

/// An adapter ready to join its base's batches.
pub struct LoadedAdapter {
    pub adapter: Arc<ServedAdapter>,
    /// The base model's name (its engine in the models' registry).
    pub base: String,
    /// The serving device it was built on (the base's when it was loaded).
    pub slot: usize,
}

impl Servable for LoadedAdapter {
    fn parameter_bytes(&self) -> usize {
        self.adapter.bytes()
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
        let (config, _) = DecoderConfig::from_dir(&base.dir).map_err(|e| failed(&e))?;
        let adapter = crate::tasks::sft::adapter::load_adapter(&model.dir, &config, device)
            .map_err(|e| failed(&e))?;
        tracing::info!(model = %model.name, base = %base.name, bytes = adapter.bytes(), "adapter loaded");
        Ok(LoadedAdapter {
            adapter: Arc::new(adapter),
            base: base.name.clone(),
            slot: base.slot,
        })
    }
}

/// Checks PEFT adapter directory `dir` against base decoder directory `base_dir` as serving
/// will load it (names, shapes, pairs, the config's options): its bytes once loaded, or a
/// 400 on `param` saying what is wrong with the adapter.
pub fn check_peft_adapter(
    dir: &std::path::Path,
    base_dir: &std::path::Path,
    param: &'static str,
) -> Result<usize, InferError> {
    let (config, _) = DecoderConfig::from_dir(base_dir)
        .map_err(|e| InferError::engine(format!("reading the base's config: {e}")))?;
    crate::tasks::sft::adapter::load_peft_adapter(dir, &config, &Device::Cpu)
        .map(|adapter| adapter.bytes())
        .map_err(|e| {
            InferError::invalid(
                param,
                format!("The adapter does not fit the base model: {e}"),
            )
        })
}
