//! GGUF → Hugging Face directory, so a llama.cpp checkpoint loads like any HF decoder.
//!
//! - [`metadata`]: typed GGUF metadata, `config.json` and `generation_config.json`.
//! - [`tensors`]: llama.cpp → transformers names, dequantization, Q/K un-permutation.
//! - [`tokenizer`]: byte-level BPE `tokenizer.json` + `tokenizer_config.json`.

pub mod blocks;
pub mod metadata;
pub mod tensors;
pub mod tokenizer;

#[cfg(test)]
mod decoder_tests;
#[cfg(test)]
mod real_tests;
/// The tiny GGUF writer is shared with the jobs and catalog tests.
#[cfg(test)]
pub(crate) mod tests;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;

use super::ZooError;
use metadata::Metadata;

/// The files every materialized directory has; their presence marks it complete (the
/// directory only ever appears by an atomic rename of a finished temporary one).
const REQUIRED_FILES: [&str; 5] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

/// Converts `<name>.gguf` into a Hugging Face directory that `CausalLm::from_pretrained`
/// loads: config.json (llama/qwen2 from the GGUF metadata), model.safetensors (f32,
/// dequantized, HF names, llama.cpp's Q/K row permutation undone; no `lm_head` when the
/// GGUF has no `output.weight`, i.e. tied embeddings), tokenizer.json, tokenizer_config.json
/// (chat_template, bos/eos/pad tokens) and generation_config.json.
///
/// Atomic: everything is written to `<out_dir>.tmp-<random>` and renamed into place, so a
/// crash never leaves a half-written `out_dir`; an existing complete `out_dir` is reused.
pub fn materialize_gguf(gguf_path: &Path, out_dir: &Path) -> Result<(), ZooError> {
    if out_dir.exists() {
        return check_complete(out_dir);
    }
    let tmp = temporary_sibling(out_dir)?;
    let written = write_hf_dir(gguf_path, &tmp).and_then(|()| {
        std::fs::rename(&tmp, out_dir).or_else(|err| {
            // Another process may have materialized the same file meanwhile.
            if out_dir.exists() {
                Ok(())
            } else {
                Err(ZooError::Io(err))
            }
        })
    });
    if tmp.exists() {
        // Best effort: a leftover temporary directory is only wasted space.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    check_complete(out_dir)
}

fn check_complete(dir: &Path) -> Result<(), ZooError> {
    match REQUIRED_FILES.iter().find(|f| !dir.join(f).exists()) {
        None => Ok(()),
        Some(missing) => Err(ZooError::Config(format!(
            "{} exists but has no {missing}: not a materialized GGUF directory",
            dir.display()
        ))),
    }
}

fn temporary_sibling(out_dir: &Path) -> Result<PathBuf, ZooError> {
    let name = out_dir
        .file_name()
        .ok_or_else(|| ZooError::Config(format!("{} has no file name", out_dir.display())))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp-{}", crate::domain::ids::random_base62(12)));
    Ok(out_dir.with_file_name(tmp_name))
}

fn write_hf_dir(gguf_path: &Path, dir: &Path) -> Result<(), ZooError> {
    let mut reader = BufReader::new(File::open(gguf_path)?);
    let content = Content::read(&mut reader)
        .map_err(|e| ZooError::Config(format!("{}: {e}", gguf_path.display())))?;
    let meta = Metadata::new(&content)?;
    let tokenizer = tokenizer::tokenizer_files(&meta)?;
    let (tensors, tied) = tensors::hf_tensors(&content, &mut reader, &meta)?;

    std::fs::create_dir_all(dir)?;
    let write_json = |name: &str, value: &serde_json::Value| -> Result<(), ZooError> {
        std::fs::write(dir.join(name), serde_json::to_string_pretty(value)?)?;
        Ok(())
    };
    write_json(
        "config.json",
        &meta.config_json(tokenizer.vocab_size, tied)?,
    )?;
    write_json("generation_config.json", &meta.generation_config_json()?)?;
    write_json("tokenizer_config.json", &tokenizer.tokenizer_config)?;
    std::fs::write(dir.join("tokenizer.json"), &tokenizer.tokenizer_json)?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    // Durable before the rename publishes the directory.
    for name in REQUIRED_FILES {
        File::open(dir.join(name))?.sync_all()?;
    }
    File::open(dir)?.sync_all()?;
    Ok(())
}
