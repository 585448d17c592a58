//! How the registry learns what a model name means, without knowing about the store:
//! `app.rs` implements [`ModelCatalog`] over `store::models` + `blobs`, tests use a map.

use std::path::PathBuf;

use futures::future::BoxFuture;

use crate::domain::task::ServedKind;

/// A model the catalog says can be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServableModel {
    pub name: String,
    /// Absolute checkpoint directory.
    pub dir: PathBuf,
    /// Which engine the model needs (from the task it was trained for).
    pub kind: ServedKind,
}

/// Resolves model names. `Ok(None)` means "no such model" (→ `InferError::ModelNotFound`);
/// `Err` is a lookup failure (database down…) and becomes `InferError::Engine`.
pub trait ModelCatalog: Send + Sync + 'static {
    fn resolve(&self, model: &str) -> BoxFuture<'_, Result<Option<ServableModel>, String>>;
}
