//! What the decoder probes share (`sft_speed`, `memory_estimate`): the sarcasm chat split
//! and SmolLM2-135M-Instruct materialized from its GGUF, both from `scripts/fetch-assets.sh
//! --llm`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use temper::domain::dataset::{parse_chat, ChatExample};

/// The first `limit` training chats of the sarcasm split.
pub fn sarcasm_chats(assets: &Path, limit: usize) -> anyhow::Result<Vec<ChatExample>> {
    let jsonl = std::fs::read(assets.join("data/sarcasm/chat_train.jsonl"))
        .context("run scripts/fetch-assets.sh --llm first")?;
    let mut train = parse_chat(&jsonl)?;
    train.truncate(limit);
    Ok(train)
}

/// SmolLM2-135M-Instruct as an f32 Hugging Face directory, `dir/model`.
pub fn materialized_smollm2(assets: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let model_dir = dir.join("model");
    temper::zoo::materialize_gguf(
        &assets.join("models/HuggingFaceTB/SmolLM2-135M-Instruct.gguf"),
        &model_dir,
    )?;
    Ok(model_dir)
}
