//! Numeric tests of the zoo on tiny random checkpoints (CPU, deterministic).
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::Path;

use super::testing::write_tiny_bert;
use super::*;
use crate::domain::hyperparams::LoraSettings;
use crate::zoo::test_tensors::max_abs_diff;

pub(super) fn full_spec(num_labels: usize) -> ClassifierSpec {
    ClassifierSpec {
        num_labels,
        lora: None,
        classifier_dropout: Some(0.0),
    }
}

pub(super) fn lora_spec(num_labels: usize) -> ClassifierSpec {
    ClassifierSpec {
        num_labels,
        // alpha / rank = 4: catches code that forgets (or double-applies) the scale.
        lora: Some(LoraSettings {
            rank: 4,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: vec![],
        }),
        classifier_dropout: Some(0.0),
    }
}

pub(super) fn batch(dir: &Path, texts: &[&str]) -> EncodedBatch {
    let tok = TextTokenizer::from_dir(dir).unwrap();
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t, 64).unwrap()).collect();
    let refs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    collate(&refs, tok.pad_id(), &Device::Cpu).unwrap()
}

/// Max |Δ| over real tokens only: our encoder leaves padding positions at zero (it never
/// computes them), transformers and candle-transformers fill them with unused values.
fn real_token_diff(ours: &Tensor, theirs: &Tensor, attention_mask: &Tensor) -> f32 {
    let mask = attention_mask
        .to_dtype(DType::F32)
        .unwrap()
        .unsqueeze(2)
        .unwrap();
    let masked = |t: &Tensor| t.broadcast_mul(&mask).unwrap();
    assert_eq!(
        max_abs_diff(&masked(ours), ours),
        0.0,
        "padding rows must be zero"
    );
    max_abs_diff(&masked(ours), &masked(theirs))
}

pub(super) const TEXTS: [&str; 2] = ["this movie was really great fun", "bad film"];

#[test]
fn encoder_matches_candle_transformers_bert_on_padded_batch() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 1).unwrap();
    let model =
        SequenceClassifier::from_pretrained(dir.path(), &full_spec(2), &Device::Cpu, 0).unwrap();
    let b = batch(dir.path(), &TEXTS);
    assert_eq!(b.input_ids.dims(), &[2, 8]);
    let ours = model
        .encoder()
        .forward(&b.input_ids, &b.attention_mask, false)
        .unwrap();

    let cfg_text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let cfg: candle_transformers::models::bert::Config = serde_json::from_str(&cfg_text).unwrap();
    let files = [dir.path().join("model.safetensors")];
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu) }.unwrap();
    let reference = candle_transformers::models::bert::BertModel::load(vb, &cfg).unwrap();
    let types = b.input_ids.zeros_like().unwrap();
    let theirs = reference
        .forward(&b.input_ids, &types, Some(&b.attention_mask))
        .unwrap();
    let diff = real_token_diff(&ours, &theirs, &b.attention_mask);
    eprintln!("parity max |Δ| = {diff}");
    assert!(diff < 1e-4, "max |Δ| = {diff}");
}

#[test]
fn full_finetuning_gives_every_trainable_var_a_gradient() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 2).unwrap();
    let model =
        SequenceClassifier::from_pretrained(dir.path(), &full_spec(3), &Device::Cpu, 0).unwrap();
    let vars = model.trainable_vars();
    // 3 embeddings + LN(2) + 2 layers x (6 linears x 2 + 2 LN x 2) + pooler 2 + head 2.
    assert_eq!(vars.len(), 3 + 2 + 2 * 16 + 2 + 2);
    assert!(vars
        .iter()
        .any(|v| v.name == "bert.encoder.layer.0.attention.self.query.weight"));
    assert!(vars.iter().any(|v| v.name == "classifier.weight"));
    let no_decay: Vec<&str> = vars
        .iter()
        .filter(|v| !v.weight_decay)
        .map(|v| v.name.as_str())
        .collect();
    assert!(no_decay
        .iter()
        .all(|n| n.ends_with(".bias") || n.contains("LayerNorm")));
    assert_eq!(no_decay.len(), 2 + 2 * 10 + 2);

    let b = batch(dir.path(), &TEXTS);
    let logits = model.forward(&b, true).unwrap();
    let labels = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
    let grads = loss.backward().unwrap();
    let with_grad = vars
        .iter()
        .filter(|v| {
            v.take_gradient(&grads).unwrap().is_some_and(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            })
        })
        .count();
    assert_eq!(with_grad, vars.len());
}

/// Gives every LoRA B a deterministic non-zero value, as if trained.
pub(super) fn perturb_lora_b(model: &SequenceClassifier) {
    for nv in model.trainable_vars() {
        if nv.name.contains("lora_B") {
            let n = nv.var.elem_count();
            let values: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.02).collect();
            let t = Tensor::from_vec(values, nv.var.dims(), &Device::Cpu).unwrap();
            nv.var.set(&t).unwrap();
        }
    }
}

#[test]
fn lora_fresh_adapter_is_identity_and_merge_matches_unmerged() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 3).unwrap();
    let full =
        SequenceClassifier::from_pretrained(dir.path(), &full_spec(2), &Device::Cpu, 0).unwrap();
    let mut lora =
        SequenceClassifier::from_pretrained(dir.path(), &lora_spec(2), &Device::Cpu, 0).unwrap();
    let b = batch(dir.path(), &TEXTS);
    let hidden = |m: &SequenceClassifier| {
        m.encoder()
            .forward(&b.input_ids, &b.attention_mask, false)
            .unwrap()
    };
    assert_eq!(max_abs_diff(&hidden(&full), &hidden(&lora)), 0.0);

    let names: Vec<String> = lora.trainable_vars().into_iter().map(|v| v.name).collect();
    assert_eq!(names.len(), 2 * 2 * 2 + 2, "{names:?}");
    assert!(names.iter().all(|n| n.contains(".lora_A.weight")
        || n.contains(".lora_B.weight")
        || n.starts_with("base_model.model.classifier.")));
    assert!(names.contains(
        &"base_model.model.bert.encoder.layer.1.attention.self.value.lora_A.weight".to_string()
    ));

    perturb_lora_b(&lora);
    let before_hidden = hidden(&lora);
    assert!(max_abs_diff(&before_hidden, &hidden(&full)) > 1e-3);
    let before = lora.forward(&b, false).unwrap();
    lora.merge_lora().unwrap();
    let after = lora.forward(&b, false).unwrap();
    let diff = max_abs_diff(&before, &after);
    eprintln!("merged vs unmerged max |Δ| = {diff}");
    assert!(diff < 1e-5, "merged vs unmerged max |Δ| = {diff}");
    assert_eq!(lora.trainable_vars().len(), 2);
}

#[test]
fn lora_trainable_tensors_round_trip_gives_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 4).unwrap();
    let trained =
        SequenceClassifier::from_pretrained(dir.path(), &lora_spec(3), &Device::Cpu, 7).unwrap();
    perturb_lora_b(&trained);
    let restored =
        SequenceClassifier::from_pretrained(dir.path(), &lora_spec(3), &Device::Cpu, 99).unwrap();
    let b = batch(dir.path(), &TEXTS);
    let differs = max_abs_diff(
        &trained.forward(&b, false).unwrap(),
        &restored.forward(&b, false).unwrap(),
    );
    assert!(differs > 1e-4);
    restored
        .load_trainable(&trained.trainable_tensors().unwrap())
        .unwrap();
    let diff = max_abs_diff(
        &trained.forward(&b, false).unwrap(),
        &restored.forward(&b, false).unwrap(),
    );
    assert_eq!(diff, 0.0);
    let mut incomplete = trained.trainable_tensors().unwrap();
    incomplete.remove("base_model.model.classifier.weight");
    assert!(restored.load_trainable(&incomplete).is_err());
}

#[test]
fn batch_of_two_equals_two_batches_of_one() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 5).unwrap();
    let model =
        SequenceClassifier::from_pretrained(dir.path(), &full_spec(2), &Device::Cpu, 0).unwrap();
    let both = model.forward(&batch(dir.path(), &TEXTS), false).unwrap();
    for (i, text) in TEXTS.iter().enumerate() {
        let single = model.forward(&batch(dir.path(), &[text]), false).unwrap();
        let row = both.narrow(0, i, 1).unwrap();
        let diff = max_abs_diff(&row, &single);
        assert!(diff < 1e-5, "row {i}: max |Δ| = {diff}");
    }
}

const TRAIN_SET: [(&str, u32); 8] = [
    ("great movie", 1),
    ("i loved this film", 1),
    ("really fun and happy", 1),
    ("excellent story", 1),
    ("terrible movie", 0),
    ("i hated this film", 0),
    ("boring and dull", 0),
    ("awful acting", 0),
];

/// Trains 30 AdamW steps on the 8 examples; returns (first loss, last loss).
fn train_30_steps(model: &SequenceClassifier, dir: &Path, lr: f64) -> (f32, f32) {
    use candle_nn::Optimizer;
    let texts: Vec<&str> = TRAIN_SET.iter().map(|e| e.0).collect();
    let b = batch(dir, &texts);
    let labels: Vec<u32> = TRAIN_SET.iter().map(|e| e.1).collect();
    let labels = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
    let vars = model.trainable_vars().into_iter().map(|v| v.var).collect();
    let params = candle_nn::ParamsAdamW {
        lr,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = candle_nn::AdamW::new(vars, params).unwrap();
    let mut losses = Vec::new();
    for _ in 0..30 {
        let logits = model.forward(&b, true).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.backward_step(&loss).unwrap();
    }
    (losses[0], losses[29])
}

#[test]
fn full_finetuning_memorises_eight_examples() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 8).unwrap();
    let model =
        SequenceClassifier::from_pretrained(dir.path(), &full_spec(2), &Device::Cpu, 0).unwrap();
    let (first, last) = train_30_steps(&model, dir.path(), 1e-3);
    eprintln!("full FT loss {first} -> {last}");
    // Measured 0.692 -> 0.131 (lr 1e-3, dropout 0 so the run is deterministic).
    assert!(first > 0.5 && last < 0.25, "loss {first} -> {last}");
}

#[test]
fn lora_training_learns_and_leaves_base_weights_bitwise_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 9).unwrap();
    let model =
        SequenceClassifier::from_pretrained(dir.path(), &lora_spec(2), &Device::Cpu, 0).unwrap();
    let frozen = |m: &SequenceClassifier| -> HashMap<String, Vec<f32>> {
        let mut all = HashMap::new();
        m.encoder().merged_tensors(&mut all).unwrap();
        all.into_iter()
            .filter(|(k, _)| !k.contains("query") && !k.contains("value"))
            .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect()
    };
    let before = frozen(&model);
    let (first, last) = train_30_steps(&model, dir.path(), 1e-2);
    eprintln!("LoRA loss {first} -> {last}");
    // Measured 0.693 -> 0.0015 (lr 1e-2).
    assert!(first > 0.5 && last < 0.05, "loss {first} -> {last}");
    assert_eq!(before, frozen(&model));
    assert_eq!(before.len(), 3 + 2 + 2 * 12);
}

#[test]
fn export_merged_loads_in_candle_transformers_and_adapter_has_peft_layout() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 10).unwrap();
    let model =
        SequenceClassifier::from_pretrained(dir.path(), &lora_spec(2), &Device::Cpu, 0).unwrap();
    perturb_lora_b(&model);
    let out = tempfile::tempdir().unwrap();
    let labels = vec!["negative".to_string(), "positive".to_string()];
    model
        .export_merged(dir.path(), &labels, out.path())
        .unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["1"], "positive");
    assert_eq!(config["label2id"]["negative"], 0);
    for f in ["tokenizer.json", "tokenizer_config.json", "vocab.txt"] {
        assert!(out.path().join(f).exists(), "{f}");
    }
    let files = [out.path().join("model.safetensors")];
    let tensors = candle_core::safetensors::load(&files[0], &Device::Cpu).unwrap();
    assert!(tensors.contains_key("classifier.weight"));
    assert!(tensors.contains_key("bert.pooler.dense.bias"));
    assert_eq!(tensors.len(), 3 + 2 + 2 * 16 + 2 + 2);

    let cfg: candle_transformers::models::bert::Config = serde_json::from_value(config).unwrap();
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu) }.unwrap();
    let served = candle_transformers::models::bert::BertModel::load(vb, &cfg).unwrap();
    let b = batch(dir.path(), &TEXTS);
    let types = b.input_ids.zeros_like().unwrap();
    let theirs = served
        .forward(&b.input_ids, &types, Some(&b.attention_mask))
        .unwrap();
    let ours = model
        .encoder()
        .forward(&b.input_ids, &b.attention_mask, false)
        .unwrap();
    let diff = real_token_diff(&ours, &theirs, &b.attention_mask);
    eprintln!("merged export vs LoRA model max |Δ| = {diff}");
    assert!(diff < 1e-4, "merged export vs LoRA model max |Δ| = {diff}");

    let adapter = tempfile::tempdir().unwrap();
    model
        .export_adapter("sentence-transformers/all-MiniLM-L6-v2", adapter.path())
        .unwrap();
    let acfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(acfg["r"], 4);
    assert_eq!(acfg["lora_alpha"], 16.0);
    assert_eq!(acfg["task_type"], "SEQ_CLS");
    assert_eq!(
        acfg["target_modules"],
        serde_json::json!(["query", "value"])
    );
    let weights = candle_core::safetensors::load(
        adapter.path().join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(weights.len(), 10);
    let a = &weights["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"];
    assert_eq!(a.dims(), &[4, 32]);
    let full =
        SequenceClassifier::from_pretrained(dir.path(), &full_spec(2), &Device::Cpu, 0).unwrap();
    assert!(full.export_adapter("x", adapter.path()).is_err());
}

#[test]
fn distilbert_trains_every_tensor_and_lora_targets_q_and_v() {
    let dir = tempfile::tempdir().unwrap();
    super::testing::write_tiny_distilbert(dir.path(), 11).unwrap();
    let model =
        SequenceClassifier::from_pretrained(dir.path(), &full_spec(2), &Device::Cpu, 0).unwrap();
    let vars = model.trainable_vars();
    // 2 embeddings + LN(2) + 2 layers x 16 + pre_classifier 2 + classifier 2.
    assert_eq!(vars.len(), 2 + 2 + 2 * 16 + 2 + 2);
    assert!(vars
        .iter()
        .any(|v| v.name == "distilbert.transformer.layer.1.ffn.lin2.weight"));
    assert!(vars.iter().any(|v| v.name == "pre_classifier.weight"));
    let b = batch(dir.path(), &TEXTS);
    let logits = model.forward(&b, true).unwrap();
    let loss =
        candle_nn::loss::cross_entropy(&logits, &Tensor::new(&[1u32, 0], &Device::Cpu).unwrap())
            .unwrap();
    let grads = loss.backward().unwrap();
    let with_grad = vars
        .iter()
        .filter(|v| {
            v.take_gradient(&grads).unwrap().is_some_and(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            })
        })
        .count();
    assert_eq!(with_grad, vars.len());
    for (i, text) in TEXTS.iter().enumerate() {
        let single = model.forward(&batch(dir.path(), &[text]), false).unwrap();
        let both = model.forward(&b, false).unwrap();
        assert!(max_abs_diff(&both.narrow(0, i, 1).unwrap(), &single) < 1e-5);
    }

    let lora =
        SequenceClassifier::from_pretrained(dir.path(), &lora_spec(2), &Device::Cpu, 0).unwrap();
    let names: Vec<String> = lora.trainable_vars().into_iter().map(|v| v.name).collect();
    assert_eq!(names.len(), 2 * 2 * 2 + 4, "{names:?}");
    assert!(names.contains(
        &"base_model.model.distilbert.transformer.layer.0.attention.v_lin.lora_B.weight"
            .to_string()
    ));
    assert!(names.contains(&"base_model.model.pre_classifier.weight".to_string()));
}

#[test]
fn a_model_frozen_for_inference_records_no_graph_and_gives_the_same_logits() {
    for spec in [full_spec(3), lora_spec(3)] {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), 6).unwrap();
        let mut model =
            SequenceClassifier::from_pretrained(dir.path(), &spec, &Device::Cpu, 7).unwrap();
        perturb_lora_b(&model);
        let b = batch(dir.path(), &TEXTS);
        let trainable = model.forward(&b, false).unwrap();
        // Ops on vars are recorded: each served request would keep its whole graph alive.
        assert!(trainable.track_op());
        model.freeze_for_inference().unwrap();
        let frozen = model.forward(&b, false).unwrap();
        assert!(!frozen.track_op());
        assert!(model.trainable_vars().is_empty());
        let diff = max_abs_diff(&trainable, &frozen);
        assert!(diff < 1e-5, "max |Δ| = {diff}");
    }
}
