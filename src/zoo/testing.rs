//! Tiny random models on disk, for unit and integration tests (no network, no shipped
//! files). The layout mirrors the real MiniLM-L6 checkpoint: tensor names without the
//! `bert.` prefix, a pooler, and a tokenizer.json with Fixed(128) padding and truncation
//! baked in.

use anyhow::Context;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

pub use super::decoder::tiny::{
    tiny_decoder_vocab, write_tiny_decoder, TINY_CHAT_TEMPLATE, TINY_SPECIAL_TOKENS,
};

pub const TINY_HIDDEN: usize = 32;
pub const TINY_LAYERS: usize = 2;
pub const TINY_INTERMEDIATE: usize = 64;
pub const TINY_MAX_POSITION: usize = 128;

/// How a tiny checkpoint is written, to exercise the loader's variants.
#[derive(Debug, Clone, Copy, Default)]
pub struct TinyBertStyle {
    /// Names as `bert.embeddings…` (transformers' `BertModel` saved from a task model).
    pub bert_prefix: bool,
    /// A transformers 5.x config: `dtype` instead of `torch_dtype`, defaults omitted.
    pub transformers_v5: bool,
    /// Old `gamma`/`beta` LayerNorm names.
    pub legacy_layer_norm: bool,
    /// No pooler tensors (the head then creates a new one).
    pub without_pooler: bool,
    /// The hidden and attention dropout probabilities of the config (0 by default: most
    /// tests compare numbers that dropout would blur).
    pub dropout: f64,
}

const WORDS: &str = "\
    the a an is was this that it not very and or but i you we they he she of to in on \
    for with at by good bad great terrible awful excellent movie film book food love \
    loved hate hated like liked boring fun funny sad happy best worst ever really so too \
    much more most all no yes be are were have has had do did would could should will \
    can what which who when where why how my your our their one two time day people \
    thing nice poor amazing horrible wonderful dull story acting plot music service \
    place price recommend again never always ";

/// The vocabulary, one token a line, in id order ([PAD] = 0).
pub fn tiny_vocab() -> Vec<String> {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for c in 'a'..='z' {
        vocab.push(c.to_string());
    }
    for c in 'a'..='z' {
        vocab.push(format!("##{c}"));
    }
    for c in '0'..='9' {
        vocab.push(c.to_string());
        vocab.push(format!("##{c}"));
    }
    for p in ".,!?;:'\"()-/".chars() {
        vocab.push(p.to_string());
    }
    for w in WORDS.split_whitespace() {
        if !vocab.iter().any(|v| v == w) {
            vocab.push(w.to_string());
        }
    }
    vocab
}

/// Writes config.json, model.safetensors, vocab.txt, tokenizer.json and
/// tokenizer_config.json of a tiny random BERT (hidden 32, 2 layers, 4 heads, dropout 0).
pub fn write_tiny_bert(dir: &Path, seed: u64) -> anyhow::Result<()> {
    write_tiny_bert_with(dir, seed, TinyBertStyle::default())
}

pub fn write_tiny_bert_with(dir: &Path, seed: u64, style: TinyBertStyle) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let vocab = tiny_vocab();
    write_tokenizer(dir, &vocab)?;
    let mut config = serde_json::json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab.len(),
        "hidden_size": TINY_HIDDEN,
        "num_hidden_layers": TINY_LAYERS,
        "num_attention_heads": 4,
        "intermediate_size": TINY_INTERMEDIATE,
        "max_position_embeddings": TINY_MAX_POSITION,
        "hidden_dropout_prob": style.dropout,
        "attention_probs_dropout_prob": style.dropout,
        "pad_token_id": 0,
    });
    if style.transformers_v5 {
        // 5.x writes `dtype` and leaves out fields equal to their defaults.
        config["dtype"] = "float32".into();
        config["transformers_version"] = "5.0.0".into();
    } else {
        config["torch_dtype"] = "float32".into();
        config["transformers_version"] = "4.44.0".into();
        config["hidden_act"] = "gelu".into();
        config["type_vocab_size"] = 2.into();
        config["layer_norm_eps"] = 1e-12.into();
        config["initializer_range"] = 0.02.into();
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let tensors = random_bert_tensors(vocab.len(), seed, style)?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    Ok(())
}

fn write_tokenizer(dir: &Path, vocab: &[String]) -> anyhow::Result<()> {
    let vocab_path = dir.join("vocab.txt");
    std::fs::write(&vocab_path, vocab.join("\n") + "\n")?;
    let vocab_str = vocab_path.to_str().context("non-utf8 temp path")?;
    let model = WordPiece::from_file(vocab_str)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| anyhow::anyhow!("wordpiece: {e}"))?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .map_err(|e| anyhow::anyhow!("normalizer: {e}"))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    let template = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(|e| anyhow::anyhow!("template: {e}"))?
        .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
        .map_err(|e| anyhow::anyhow!("template: {e}"))?
        .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
        .build()?;
    tokenizer.with_post_processor(Some(template));
    // Baked in exactly like sentence-transformers' MiniLM tokenizer.json.
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(128),
        pad_id: 0,
        pad_token: "[PAD]".into(),
        ..PaddingParams::default()
    }));
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: 128,
            ..TruncationParams::default()
        }))
        .map_err(|e| anyhow::anyhow!("truncation: {e}"))?;
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("save tokenizer: {e}"))?;
    let tokenizer_config = serde_json::json!({
        "do_lower_case": true,
        "model_max_length": 128,
        "tokenizer_class": "BertTokenizer",
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
        "sep_token": "[SEP]", "mask_token": "[MASK]",
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tokenizer_config)?,
    )?;
    Ok(())
}

/// Writes one random tensor: name, shape, centre, half-width.
type PutFn<'a> = dyn FnMut(String, &[usize], f32, f32) -> anyhow::Result<()> + 'a;

fn random_bert_tensors(
    vocab_size: usize,
    seed: u64,
    style: TinyBertStyle,
) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let h = TINY_HIDDEN;
    let prefix = if style.bert_prefix { "bert." } else { "" };
    let (ln_w, ln_b) = if style.legacy_layer_norm {
        ("gamma", "beta")
    } else {
        ("weight", "bias")
    };
    let mut out = HashMap::new();
    let mut put = |name: String, shape: &[usize], base: f32, spread: f32| -> anyhow::Result<()> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| base + rng.random_range(-spread..spread))
            .collect();
        out.insert(
            format!("{prefix}{name}"),
            Tensor::from_vec(data, shape, &Device::Cpu)?,
        );
        Ok(())
    };
    put(
        "embeddings.word_embeddings.weight".into(),
        &[vocab_size, h],
        0.0,
        0.5,
    )?;
    put(
        "embeddings.position_embeddings.weight".into(),
        &[TINY_MAX_POSITION, h],
        0.0,
        0.5,
    )?;
    put(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, h],
        0.0,
        0.5,
    )?;
    let layer_norm = |put: &mut PutFn, module: &str| -> anyhow::Result<()> {
        put(format!("{module}.{ln_w}"), &[h], 1.0, 0.1)?;
        put(format!("{module}.{ln_b}"), &[h], 0.0, 0.1)
    };
    layer_norm(&mut put, "embeddings.LayerNorm")?;
    let linear =
        |put: &mut PutFn, module: String, in_dim: usize, out_dim: usize| -> anyhow::Result<()> {
            let bound = 1.0 / (in_dim as f32).sqrt();
            put(format!("{module}.weight"), &[out_dim, in_dim], 0.0, bound)?;
            put(format!("{module}.bias"), &[out_dim], 0.0, bound)
        };
    for i in 0..TINY_LAYERS {
        let p = |m: &str| format!("encoder.layer.{i}.{m}");
        for m in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
        ] {
            linear(&mut put, p(m), h, h)?;
        }
        linear(&mut put, p("attention.output.dense"), h, h)?;
        layer_norm(&mut put, &p("attention.output.LayerNorm"))?;
        linear(&mut put, p("intermediate.dense"), h, TINY_INTERMEDIATE)?;
        linear(&mut put, p("output.dense"), TINY_INTERMEDIATE, h)?;
        layer_norm(&mut put, &p("output.LayerNorm"))?;
    }
    if !style.without_pooler {
        linear(&mut put, "pooler.dense".into(), h, h)?;
    }
    // The real MiniLM checkpoint carries this I64 buffer; the loader must ignore it.
    let positions: Vec<i64> = (0..TINY_MAX_POSITION as i64).collect();
    out.insert(
        format!("{prefix}embeddings.position_ids"),
        Tensor::from_vec(positions, (1, TINY_MAX_POSITION), &Device::Cpu)?,
    );
    Ok(out)
}

/// BERT module names and their DistilBERT counterparts, longest match first.
const DISTILBERT_RENAMES: [(&str, &str); 9] = [
    ("encoder.layer", "transformer.layer"),
    ("attention.self.query", "attention.q_lin"),
    ("attention.self.key", "attention.k_lin"),
    ("attention.self.value", "attention.v_lin"),
    ("attention.output.dense", "attention.out_lin"),
    ("attention.output.LayerNorm", "sa_layer_norm"),
    ("intermediate.dense", "ffn.lin1"),
    ("output.dense", "ffn.lin2"),
    ("output.LayerNorm", "output_layer_norm"),
];

/// A tiny random DistilBERT (dim 32, 2 layers, 4 heads, hidden_dim 64, dropout 0) with
/// `distilbert.`-prefixed names, sharing the BERT tokenizer.
pub fn write_tiny_distilbert(dir: &Path, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let vocab = tiny_vocab();
    write_tokenizer(dir, &vocab)?;
    let config = serde_json::json!({
        "architectures": ["DistilBertModel"],
        "model_type": "distilbert",
        "vocab_size": vocab.len(),
        "dim": TINY_HIDDEN,
        "n_layers": TINY_LAYERS,
        "n_heads": 4,
        "hidden_dim": TINY_INTERMEDIATE,
        "max_position_embeddings": TINY_MAX_POSITION,
        "activation": "gelu",
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "seq_classif_dropout": 0.0,
        "pad_token_id": 0,
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let style = TinyBertStyle {
        without_pooler: true,
        ..TinyBertStyle::default()
    };
    let mut renamed = HashMap::new();
    for (name, tensor) in random_bert_tensors(vocab.len(), seed, style)? {
        if name.contains("token_type") || name.contains("position_ids") {
            continue;
        }
        let mut new_name = name;
        for (from, to) in DISTILBERT_RENAMES {
            new_name = new_name.replacen(from, to, 1);
        }
        renamed.insert(format!("distilbert.{new_name}"), tensor);
    }
    candle_core::safetensors::save(&renamed, dir.join("model.safetensors"))?;
    Ok(())
}
