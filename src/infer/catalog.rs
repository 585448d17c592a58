//! How the registry learns what a model name means, without knowing about the store:
//! `app.rs` implements [`ModelCatalog`] over `store::models` + `blobs`, tests use a map.

use std::path::PathBuf;

use futures::future::BoxFuture;

use crate::config::ServeDtype;
use crate::domain::task::ServedKind;

/// A model the catalog says can be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServableModel {
    pub name: String,
    /// Absolute checkpoint directory.
    pub dir: PathBuf,
    /// Which engine the model needs (from the task it was trained for).
    pub kind: ServedKind,
    /// `Some` when the model is a LoRA adapter served over a shared base (unmerged): `dir`
    /// then holds the adapter, the base is loaded once for all its adapters.
    pub adapter_of: Option<AdapterBase>,
    /// The weight format a language model is served in when its name asks for one
    /// (`<base id>@q8_0`); `None`: the server's `--serve-dtype`.
    pub serve_dtype: Option<ServeDtype>,
    /// The GGUF file a base decoder was made from (its blocks are what `gguf` serves).
    pub gguf: Option<PathBuf>,
}

/// The base model an adapter is served over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterBase {
    /// The base's name in this catalog (the engine every adapter of it shares).
    pub name: String,
    /// The base's directory (its `config.json` checks the adapter's shapes).
    pub dir: PathBuf,
    /// The serving device (registry budget index) the base is loaded on; set by the
    /// adapter registry's catalog once the base is loaded.
    pub slot: usize,
}

/// Resolves model names. `Ok(None)` means "no such model" (→ `InferError::ModelNotFound`);
/// `Err` is a lookup failure (database down…) and becomes `InferError::Engine`.
pub trait ModelCatalog: Send + Sync + 'static {
    fn resolve(&self, model: &str) -> BoxFuture<'_, Result<Option<ServableModel>, String>>;
}
