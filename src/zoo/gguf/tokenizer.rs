//! `tokenizer.json` and `tokenizer_config.json` from a GGUF's `tokenizer.ggml.*` metadata.
//!
//! Only byte-level BPE (`tokenizer.ggml.model` = "gpt2": GPT-2, SmolLM, Qwen2, Llama 3)
//! is supported; the tokens are already in GPT-2's byte-to-unicode alphabet. The
//! pre-tokenizer follows `tokenizer.ggml.pre`, the name llama.cpp gives each model's
//! pre-tokenizer, so the rebuilt tokenizer splits text as the original tokenizer.json did.

use std::collections::HashMap;

use serde_json::{json, Map, Value as Json};

use super::metadata::Metadata;
use crate::zoo::ZooError;

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Qwen2's pre-tokenizer regex (its tokenizer.json `Split` pattern).
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's (`llama-bpe`): like Qwen2's but digits in groups of up to three.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The files a tokenizer needs: `tokenizer.json` (validated by loading it) and
/// `tokenizer_config.json`.
pub struct TokenizerFiles {
    pub tokenizer_json: String,
    pub tokenizer_config: Json,
    pub vocab_size: usize,
}

pub fn tokenizer_files(meta: &Metadata<'_>) -> Result<TokenizerFiles, ZooError> {
    match meta.string("tokenizer.ggml.model") {
        Some("gpt2") => {}
        Some(other) => {
            return Err(ZooError::Unsupported(format!(
                "GGUF tokenizer model `{other}` (only byte-level BPE `gpt2`)"
            )))
        }
        None => return Err(ZooError::Config("GGUF has no tokenizer.ggml.model".into())),
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let types = meta.ints("tokenizer.ggml.token_type")?;
    let add_bos = meta.bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
    let bos = special_content(meta, &tokens, "bos")?;

    let mut vocab = Map::new();
    for (id, token) in tokens.iter().enumerate() {
        // Keep the first id of a duplicated string, as a dict built in order would not.
        vocab.entry(token.to_string()).or_insert(json!(id));
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| ZooError::Config(format!("GGUF merge `{m}` has no space")))
        })
        .collect::<Result<_, _>>()?;
    let mut added_tokens = Vec::new();
    let mut added_decoder = Map::new();
    for (id, kind) in types.iter().flatten().enumerate() {
        if *kind != TOKEN_TYPE_CONTROL && *kind != TOKEN_TYPE_USER_DEFINED {
            continue;
        }
        let content = tokens.get(id).ok_or_else(|| {
            ZooError::Config("tokenizer.ggml.token_type is longer than the token list".into())
        })?;
        let special = *kind == TOKEN_TYPE_CONTROL;
        let entry = json!({
            "content": content, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": !special, "special": special,
        });
        added_decoder.insert(id.to_string(), entry.clone());
        let mut with_id = entry;
        with_id["id"] = json!(id);
        added_tokens.push(with_id);
    }
    let post_processor = match (&bos, add_bos) {
        (Some((bos_id, bos_text)), true) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos_text, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos_text, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos_text, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_text.as_str(): {"id": bos_text, "ids": [bos_id], "tokens": [bos_text]}},
        }),
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        }
    };
    let pre = meta.string("tokenizer.ggml.pre").unwrap_or("default");
    let (normalizer, pre_tokenizer) = pre_tokenizer(pre);
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    });
    let tokenizer_json = serde_json::to_string_pretty(&tokenizer)?;
    tokenizer_json
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| ZooError::Tokenizer(format!("tokenizer rebuilt from GGUF: {e}")))?;
    let tokenizer_config = tokenizer_config(meta, &tokens, add_bos, added_decoder)?;
    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config,
        vocab_size: tokens.len(),
    })
}

/// (normalizer, pre_tokenizer) for a llama.cpp pre-tokenizer name.
fn pre_tokenizer(pre: &str) -> (Json, Json) {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    match pre {
        // SmolLM / SmolLM2: every digit its own pre-token, then GPT-2's split.
        "smollm" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        ),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_PATTERN), byte_level(false)]}),
        ),
        "llama-bpe" | "llama3" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_PATTERN), byte_level(false)]}),
        ),
        _ => (Json::Null, byte_level(true)),
    }
}

/// `(id, text)` of `tokenizer.ggml.<which>_token_id`, when present and in range.
fn special_content(
    meta: &Metadata<'_>,
    tokens: &[&str],
    which: &str,
) -> Result<Option<(u32, String)>, ZooError> {
    let Some(id) = meta.token_id(which)? else {
        return Ok(None);
    };
    let text = tokens.get(id as usize).ok_or_else(|| {
        ZooError::Config(format!("{which} token id {id} is outside the vocabulary"))
    })?;
    Ok(Some((id, text.to_string())))
}

fn tokenizer_config(
    meta: &Metadata<'_>,
    tokens: &[&str],
    add_bos: bool,
    added_decoder: Map<String, Json>,
) -> Result<Json, ZooError> {
    let mut c = Map::new();
    c.insert("add_bos_token".into(), json!(add_bos));
    c.insert(
        "add_eos_token".into(),
        json!(meta.bool("tokenizer.ggml.add_eos_token").unwrap_or(false)),
    );
    c.insert("added_tokens_decoder".into(), Json::Object(added_decoder));
    let names: HashMap<&str, &str> = [
        ("bos", "bos_token"),
        ("eos", "eos_token"),
        ("padding", "pad_token"),
        ("unknown", "unk_token"),
    ]
    .into_iter()
    .collect();
    for (which, key) in names {
        if let Some((_, text)) = special_content(meta, tokens, which)? {
            c.insert(key.into(), json!(text));
        }
    }
    if let Some(template) = meta.string("tokenizer.chat_template") {
        c.insert("chat_template".into(), json!(template));
    }
    c.insert("clean_up_tokenization_spaces".into(), json!(false));
    let context = meta.usize(&format!("{}.context_length", meta.arch.key()))?;
    if let Some(n) = context {
        c.insert("model_max_length".into(), json!(n));
    }
    c.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    Ok(Json::Object(c))
}
