//! Tiny random decoders on disk (re-exported by `zoo::testing`): hidden 64, 2 layers,
//! 4 heads, 2 key/value heads, HF tensor names, a byte-level BPE tokenizer built in code,
//! a ChatML chat template like SmolLM2's, and generation_config.json.
//!
//! The Llama variant is written the transformers 4.x way (untied `lm_head`, `torch_dtype`,
//! top-level `rope_theta`); the Qwen2 variant the 5.x way (tied embeddings, `dtype`,
//! `rope_parameters`, eos list in generation_config), so both parser paths are exercised.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

use super::config::DecoderArch;

pub const TINY_DECODER_HIDDEN: usize = 64;
pub const TINY_DECODER_LAYERS: usize = 2;
pub const TINY_DECODER_HEADS: usize = 4;
pub const TINY_DECODER_KV_HEADS: usize = 2;
pub const TINY_DECODER_INTERMEDIATE: usize = 128;
pub const TINY_DECODER_MAX_POSITION: usize = 1024;

/// Special tokens, ids 0..=2 as in SmolLM2.
pub const TINY_SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// SmolLM2-135M-Instruct's template with a shorter default system prompt.
pub const TINY_CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A few merges of common English pairs (byte-level symbols: `Ġ` is the space).
const MERGES: [(&str, &str); 20] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("o", "n"),
    ("Ġ", "s"),
    ("r", "e"),
    ("a", "n"),
    ("Ġ", "i"),
    ("Ġ", "o"),
    ("e", "s"),
    ("Ġ", "w"),
    ("i", "s"),
    ("Ġi", "s"),
    ("o", "u"),
    ("Ġ", "y"),
    ("Ġy", "ou"),
    ("l", "l"),
];

/// GPT-2's byte → printable char map (`bytes_to_unicode`).
pub fn byte_level_chars() -> Vec<char> {
    let printable = |b: u32| {
        (u32::from('!')..=u32::from('~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut shifted = 0u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                shifted += 1;
                char::from_u32(255 + shifted).unwrap_or('?')
            }
        })
        .collect()
}

/// The vocabulary in id order: specials, the 256 byte symbols, then one token per merge.
pub fn tiny_decoder_vocab() -> Vec<String> {
    let mut vocab: Vec<String> = TINY_SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    vocab.extend(byte_level_chars().into_iter().map(String::from));
    vocab.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    vocab
}

/// tokenizer.json in the layout transformers writes for SmolLM2 / Qwen2.
pub fn tiny_tokenizer_json() -> Value {
    let vocab = tiny_decoder_vocab();
    let vocab_map: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = TINY_SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let merges: Vec<String> = MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab_map, "merges": merges}
    })
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// Writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
/// special_tokens_map.json and generation_config.json of a tiny random decoder.
pub fn write_tiny_decoder(dir: &Path, arch: DecoderArch, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let vocab_size = tiny_decoder_vocab().len();
    write_json(&dir.join("tokenizer.json"), &tiny_tokenizer_json())?;
    let tied = arch == DecoderArch::Qwen2;
    let mut config = json!({
        "architectures": [arch.architecture()],
        "model_type": arch.model_type(),
        "vocab_size": vocab_size,
        "hidden_size": TINY_DECODER_HIDDEN,
        "intermediate_size": TINY_DECODER_INTERMEDIATE,
        "num_hidden_layers": TINY_DECODER_LAYERS,
        "num_attention_heads": TINY_DECODER_HEADS,
        "num_key_value_heads": TINY_DECODER_KV_HEADS,
        "max_position_embeddings": TINY_DECODER_MAX_POSITION,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    });
    let (bos_token, pad_token) = match arch {
        DecoderArch::Llama => {
            config["torch_dtype"] = "float32".into();
            config["transformers_version"] = "4.44.0".into();
            config["rope_theta"] = 10000.0.into();
            config["attention_bias"] = false.into();
            config["head_dim"] = (TINY_DECODER_HIDDEN / TINY_DECODER_HEADS).into();
            (json!("<|im_start|>"), "<|im_end|>")
        }
        DecoderArch::Qwen2 => {
            config["dtype"] = "float32".into();
            config["transformers_version"] = "5.0.0".into();
            config["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1000000.0});
            config["use_sliding_window"] = false.into();
            config["sliding_window"] = Value::Null;
            config["max_window_layers"] = TINY_DECODER_LAYERS.into();
            (Value::Null, "<|endoftext|>")
        }
    };
    write_json(&dir.join("config.json"), &config)?;
    let tokenizer_config = json!({
        "add_prefix_space": false,
        "bos_token": bos_token,
        "eos_token": "<|im_end|>",
        "pad_token": pad_token,
        "unk_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": false,
        "model_max_length": TINY_DECODER_MAX_POSITION,
        "tokenizer_class": "GPT2Tokenizer",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "chat_template": TINY_CHAT_TEMPLATE,
    });
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config)?;
    let special_tokens_map = json!({
        "bos_token": bos_token, "eos_token": "<|im_end|>", "pad_token": pad_token,
        "unk_token": "<|endoftext|>", "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    });
    write_json(&dir.join("special_tokens_map.json"), &special_tokens_map)?;
    let eos = match arch {
        DecoderArch::Llama => json!(2),
        DecoderArch::Qwen2 => json!([2, 0]),
    };
    let generation_config = json!({"bos_token_id": 1, "eos_token_id": eos, "pad_token_id": 2,
                                   "transformers_version": "4.44.0"});
    write_json(&dir.join("generation_config.json"), &generation_config)?;
    let tensors = random_decoder_tensors(arch, vocab_size, tied, seed)?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    Ok(())
}

fn random_decoder_tensors(
    arch: DecoderArch,
    vocab_size: usize,
    tied: bool,
    seed: u64,
) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = HashMap::new();
    let mut put = |name: String, shape: &[usize], base: f32, spread: f32| -> anyhow::Result<()> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| base + rng.random_range(-spread..spread))
            .collect();
        out.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
        Ok(())
    };
    let h = TINY_DECODER_HIDDEN;
    let d = h / TINY_DECODER_HEADS;
    let kv = TINY_DECODER_KV_HEADS * d;
    let inter = TINY_DECODER_INTERMEDIATE;
    put(
        "model.embed_tokens.weight".into(),
        &[vocab_size, h],
        0.0,
        1.0,
    )?;
    for i in 0..TINY_DECODER_LAYERS {
        let p = |m: &str| format!("model.layers.{i}.{m}");
        put(p("input_layernorm.weight"), &[h], 1.0, 0.2)?;
        put(p("post_attention_layernorm.weight"), &[h], 1.0, 0.2)?;
        let attn = [("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)];
        for (m, out_dim) in attn {
            let bound = 1.0 / (h as f32).sqrt();
            put(
                p(&format!("self_attn.{m}.weight")),
                &[out_dim, h],
                0.0,
                2.0 * bound,
            )?;
            if arch == DecoderArch::Qwen2 && m != "o_proj" {
                put(p(&format!("self_attn.{m}.bias")), &[out_dim], 0.0, 0.5)?;
            }
        }
        for (m, in_dim, out_dim) in [
            ("gate_proj", h, inter),
            ("up_proj", h, inter),
            ("down_proj", inter, h),
        ] {
            let bound = 1.0 / (in_dim as f32).sqrt();
            put(
                p(&format!("mlp.{m}.weight")),
                &[out_dim, in_dim],
                0.0,
                2.0 * bound,
            )?;
        }
    }
    put("model.norm.weight".into(), &[h], 1.0, 0.2)?;
    if !tied {
        put(
            "lm_head.weight".into(),
            &[vocab_size, h],
            0.0,
            2.0 / (h as f32).sqrt(),
        )?;
    }
    Ok(out)
}
