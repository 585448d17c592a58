//! Tiny random models on disk, for unit and integration tests.

use std::path::Path;

/// Writes config.json, model.safetensors and tokenizer.json of a tiny random BERT.
pub fn write_tiny_bert(_dir: &Path, _seed: u64) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
