#![allow(clippy::unwrap_used)]

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::*;
use crate::domain::hyperparams::LoraSettings;
use crate::zoo::test_tensors::max_abs_diff;
use crate::zoo::testing::{write_tiny_bert, write_tiny_distilbert};
use crate::zoo::{collate, TextTokenizer};

fn spec(num_labels: usize, lora: bool) -> TokenClassifierSpec {
    TokenClassifierSpec {
        num_labels,
        // alpha / rank = 4: catches a forgotten (or doubled) LoRA scale.
        lora: lora.then(|| LoraSettings {
            rank: 4,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: vec![],
        }),
        classifier_dropout: Some(0.0),
    }
}

const TEXTS: [&str; 2] = ["this movie was really great fun", "bad film"];

fn batch(dir: &Path, texts: &[&str]) -> EncodedBatch {
    let tok = TextTokenizer::from_dir(dir).unwrap();
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t, 64).unwrap()).collect();
    let refs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    collate(&refs, tok.pad_id(), &Device::Cpu).unwrap()
}

/// Labels for [`TEXTS`]' batch (`[2, 8]`): a few positions of each row, the rest unlabelled.
fn labels_for_texts() -> Vec<Option<u32>> {
    let mut labels = vec![None; 16];
    for (position, label) in [(1, 0), (2, 2), (6, 1), (9, 1), (10, 2)] {
        labels[position] = Some(label);
    }
    labels
}

fn gradient_count(model: &TokenClassifier, dir: &Path) -> (usize, usize) {
    let vars = model.trainable_vars();
    let logits = model.forward(&batch(dir, &TEXTS), true).unwrap();
    let loss = token_cross_entropy(&logits, &labels_for_texts()).unwrap();
    let grads = loss.loss.backward().unwrap();
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
    (with_grad, vars.len())
}

/// Gives every LoRA B a deterministic non-zero value, as if trained (a fresh B is zero, so A
/// would get no gradient).
fn perturb_lora_b(model: &TokenClassifier) {
    for nv in model.trainable_vars() {
        if nv.name.contains("lora_B") {
            let n = nv.var.elem_count();
            let values: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.02).collect();
            nv.var
                .set(&Tensor::from_vec(values, nv.var.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
}

#[test]
fn full_finetuning_gives_every_trainable_tensor_a_gradient() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 2).unwrap();
    let model =
        TokenClassifier::from_pretrained(dir.path(), &spec(3, false), &Device::Cpu, 0).unwrap();
    let names: Vec<String> = model.trainable_vars().into_iter().map(|v| v.name).collect();
    // 3 embeddings + LN 2 + 2 layers × (6 linears × 2 + 2 LN × 2) + classifier 2; no pooler
    // (transformers' token-classification model has none).
    assert_eq!(names.len(), 3 + 2 + 2 * 16 + 2, "{names:?}");
    assert!(names.iter().any(|n| n == "classifier.weight"));
    assert!(!names.iter().any(|n| n.contains("pooler")));
    assert_eq!(gradient_count(&model, dir.path()), (39, 39));
}

#[test]
fn lora_trains_adapters_and_the_head_and_merges_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 3).unwrap();
    let mut model =
        TokenClassifier::from_pretrained(dir.path(), &spec(3, true), &Device::Cpu, 0).unwrap();
    let names: Vec<String> = model.trainable_vars().into_iter().map(|v| v.name).collect();
    assert_eq!(names.len(), 2 * 2 * 2 + 2, "{names:?}");
    assert!(names.contains(&"base_model.model.classifier.weight".to_string()));
    assert!(names.contains(
        &"base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight".to_string()
    ));
    perturb_lora_b(&model);
    assert_eq!(gradient_count(&model, dir.path()), (10, 10));

    let b = batch(dir.path(), &TEXTS);
    let before = model.forward(&b, false).unwrap();
    model.merge_lora().unwrap();
    let diff = max_abs_diff(&before, &model.forward(&b, false).unwrap());
    assert!(diff < 1e-5, "merged vs unmerged max |Δ| = {diff}");
    assert_eq!(model.trainable_vars().len(), 2);
}

#[test]
fn distilbert_head_gets_gradients_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_distilbert(dir.path(), 4).unwrap();
    let model =
        TokenClassifier::from_pretrained(dir.path(), &spec(3, false), &Device::Cpu, 0).unwrap();
    // 2 embeddings + LN 2 + 2 × 16 + classifier 2.
    assert_eq!(gradient_count(&model, dir.path()), (38, 38));
}

#[test]
fn loss_is_the_mean_over_labelled_positions_only() {
    let ln3 = 3f32.ln();
    // One sentence of 3 positions, 2 labels. Position 0 is unlabelled: its logits are huge
    // and wrong, and must not count.
    let logits = |first: [f32; 2]| {
        Tensor::from_vec(
            vec![first[0], first[1], 0.0, ln3, 0.0, 0.0],
            (1, 3, 2),
            &Device::Cpu,
        )
        .unwrap()
    };
    let labels = [None, Some(1), Some(0)];
    // p(label 1 | [0, ln 3]) = 3/4, p(label 0 | [0, 0]) = 1/2.
    let expected = ((4f64 / 3.0).ln() + 2f64.ln()) / 2.0;
    for first in [[0.0, 0.0], [100.0, -100.0]] {
        let out = token_cross_entropy(&logits(first), &labels).unwrap();
        let loss = out.loss.to_scalar::<f32>().unwrap() as f64;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
        assert_eq!(out.positions, [1, 2]);
        assert_eq!(
            (out.gold.as_slice(), out.predicted.as_slice()),
            (&[1, 0][..], &[1, 0][..])
        );
        assert_eq!(out.correct(), 2);
    }
    assert!(token_cross_entropy(&logits([0.0, 0.0]), &[None; 3]).is_err());
    assert!(token_cross_entropy(&logits([0.0, 0.0]), &[None; 2]).is_err());
}

#[test]
fn batch_of_two_equals_two_batches_of_one() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 5).unwrap();
    let model =
        TokenClassifier::from_pretrained(dir.path(), &spec(3, false), &Device::Cpu, 0).unwrap();
    let both_batch = batch(dir.path(), &TEXTS);
    assert_eq!(both_batch.input_ids.dims(), &[2, 8]);
    let both = model.forward(&both_batch, false).unwrap();
    let labels = labels_for_texts();
    let joint = token_cross_entropy(&both, &labels).unwrap();
    let mut loss_sum = 0.0;
    for (i, text) in TEXTS.iter().enumerate() {
        let single_batch = batch(dir.path(), &[text]);
        let len = single_batch.input_ids.dim(1).unwrap();
        let single = model.forward(&single_batch, false).unwrap();
        let row = both.narrow(0, i, 1).unwrap().narrow(1, 0, len).unwrap();
        let diff = max_abs_diff(&row, &single);
        assert!(diff < 1e-5, "row {i}: max |Δ| = {diff}");
        let row_labels = &labels[i * 8..i * 8 + len];
        let part = token_cross_entropy(&single, row_labels).unwrap();
        loss_sum += part.loss.to_scalar::<f32>().unwrap() * part.positions.len() as f32;
    }
    let joint_loss = joint.loss.to_scalar::<f32>().unwrap();
    let mean = loss_sum / joint.positions.len() as f32;
    assert!((joint_loss - mean).abs() < 1e-5, "{joint_loss} vs {mean}");
}

#[test]
fn merged_export_is_a_bert_token_classifier_with_our_logits() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 6).unwrap();
    let model =
        TokenClassifier::from_pretrained(dir.path(), &spec(3, true), &Device::Cpu, 0).unwrap();
    perturb_lora_b(&model);
    let out = tempfile::tempdir().unwrap();
    let labels: Vec<String> = ["O", "B-LOC", "I-LOC"].map(String::from).to_vec();
    model
        .export_merged(dir.path(), &labels, out.path())
        .unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "BertForTokenClassification");
    assert_eq!(config["id2label"]["1"], "B-LOC");
    assert_eq!(config["label2id"]["I-LOC"], 2);
    assert_eq!(config["num_labels"], 3);
    for file in ["tokenizer.json", "tokenizer_config.json", "vocab.txt"] {
        assert!(out.path().join(file).exists(), "{file}");
    }
    let files = [out.path().join("model.safetensors")];
    let tensors = candle_core::safetensors::load(&files[0], &Device::Cpu).unwrap();
    assert_eq!(tensors.len(), 3 + 2 + 2 * 16 + 2);
    assert_eq!(tensors["classifier.weight"].dims(), &[3, 32]);

    // candle-transformers' BERT on the export, plus the linear head, gives our logits.
    let cfg: candle_transformers::models::bert::Config = serde_json::from_value(config).unwrap();
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu) }.unwrap();
    let reference = candle_transformers::models::bert::BertModel::load(vb, &cfg).unwrap();
    let b = batch(dir.path(), &TEXTS);
    let hidden = reference
        .forward(
            &b.input_ids,
            &b.input_ids.zeros_like().unwrap(),
            Some(&b.attention_mask),
        )
        .unwrap();
    let theirs = hidden
        .broadcast_matmul(&tensors["classifier.weight"].t().unwrap())
        .unwrap()
        .broadcast_add(&tensors["classifier.bias"])
        .unwrap();
    let ours = model.forward(&b, false).unwrap();
    let mask = b
        .attention_mask
        .to_dtype(DType::F32)
        .unwrap()
        .unsqueeze(2)
        .unwrap();
    let diff = max_abs_diff(
        &ours.broadcast_mul(&mask).unwrap(),
        &theirs.broadcast_mul(&mask).unwrap(),
    );
    assert!(diff < 1e-4, "export vs ours max |Δ| = {diff}");

    let adapter = tempfile::tempdir().unwrap();
    model.export_adapter("tiny", adapter.path()).unwrap();
    let adapter_config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(adapter_config["task_type"], "TOKEN_CLS");
    assert_eq!(
        adapter_config["modules_to_save"],
        serde_json::json!(["classifier"])
    );
    let weights = candle_core::safetensors::load(
        adapter.path().join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(weights.len(), 10);
    assert!(weights.contains_key("base_model.model.classifier.bias"));
}

#[test]
fn thirty_steps_memorise_two_tagged_sentences() {
    use candle_nn::Optimizer;
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 7).unwrap();
    let model =
        TokenClassifier::from_pretrained(dir.path(), &spec(3, false), &Device::Cpu, 0).unwrap();
    let b = batch(dir.path(), &TEXTS);
    let labels = labels_for_texts();
    let vars = model.trainable_vars().into_iter().map(|v| v.var).collect();
    let params = candle_nn::ParamsAdamW {
        lr: 1e-2,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = candle_nn::AdamW::new(vars, params).unwrap();
    let mut losses = Vec::new();
    for _ in 0..30 {
        let out = token_cross_entropy(&model.forward(&b, true).unwrap(), &labels).unwrap();
        losses.push(out.loss.to_scalar::<f32>().unwrap());
        opt.backward_step(&out.loss).unwrap();
    }
    let (first, last) = (losses[0], losses[29]);
    eprintln!("token classifier loss {first} -> {last}");
    // Measured 1.107 -> 0.00086 (lr 1e-2, dropout 0 so the run is deterministic).
    assert!(first > 0.8 && last < 0.1, "loss {first} -> {last}");
}
