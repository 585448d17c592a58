//! How the registry learns what a model name means, without knowing about the store:
//! `app.rs` implements [`ModelCatalog`] over `store::models` + `blobs`, tests use a map.

use std::path::PathBuf;

use futures::future::BoxFuture;

/// Which engine a model needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A sequence classifier checkpoint (`train::load_classifier_checkpoint`).
    Classifier,
    /// A causal language model (SFT checkpoint or base model dir) served for generation.
    Causal,
}

/// A model the catalog says can be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServableModel {
    pub name: String,
    /// Absolute checkpoint directory.
    pub dir: PathBuf,
    pub kind: ModelKind,
}

/// Resolves model names. `Ok(None)` means "no such model" (→ `InferError::ModelNotFound`);
/// `Err` is a lookup failure (database down…) and becomes `InferError::Engine`.
pub trait ModelCatalog: Send + Sync + 'static {
    fn resolve(&self, model: &str) -> BoxFuture<'_, Result<Option<ServableModel>, String>>;
}
