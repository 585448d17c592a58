//! Fakes shared by the infer tests: a map-backed catalog that counts lookups.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{ModelCatalog, ServableModel, ServedKind};

/// Name `catalog-down` answers a lookup error; other unknown names are `None`.
#[derive(Default)]
pub struct MapCatalog {
    models: HashMap<String, ServableModel>,
    pub resolves: AtomicUsize,
}

impl MapCatalog {
    pub fn with(names: &[(&str, PathBuf)]) -> Arc<Self> {
        Self::with_kind(names, ServedKind::Classifier)
    }

    pub fn with_kind(names: &[(&str, PathBuf)], kind: ServedKind) -> Arc<Self> {
        let models = names
            .iter()
            .map(|(name, dir)| {
                let model = ServableModel {
                    name: name.to_string(),
                    dir: dir.clone(),
                    kind,
                    adapter_of: None,
                    serve_dtype: None,
                    gguf: None,
                };
                (name.to_string(), model)
            })
            .collect();
        Arc::new(Self {
            models,
            resolves: AtomicUsize::new(0),
        })
    }

    /// A catalog of exactly these entries (adapters among them).
    pub fn with_models(models: Vec<ServableModel>) -> Arc<Self> {
        let models = models.into_iter().map(|m| (m.name.clone(), m)).collect();
        Arc::new(Self {
            models,
            resolves: AtomicUsize::new(0),
        })
    }

    pub fn resolves(&self) -> usize {
        self.resolves.load(Ordering::SeqCst)
    }
}

impl ModelCatalog for MapCatalog {
    fn resolve(&self, model: &str) -> BoxFuture<'_, Result<Option<ServableModel>, String>> {
        self.resolves.fetch_add(1, Ordering::SeqCst);
        let answer = if model == "catalog-down" {
            Err("database is locked".to_string())
        } else {
            Ok(self.models.get(model).cloned())
        };
        Box::pin(async move { answer })
    }
}
