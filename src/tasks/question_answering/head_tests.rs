use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use super::*;
use crate::tasks::question_answering::windows::{QaTokenizer, WindowSettings};

const CONTEXTS: [&str; 2] = [
    "the movie was good and the food was great",
    "the music was nice",
];

fn setup() -> (tempfile::TempDir, Vec<QaWindow>) {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::zoo::testing::write_tiny_bert(dir.path(), 3).expect("tiny bert");
    let tokenizer = Tokenizer::from_file(dir.path().join("tokenizer.json")).expect("tokenizer");
    let qa = QaTokenizer::new(&tokenizer, WindowSettings::default()).expect("qa tokenizer");
    let windows = CONTEXTS
        .iter()
        .map(|c| qa.windows("what was it?", c).expect("windows").remove(0))
        .collect();
    (dir, windows)
}

fn model(dir: &Path, lora: bool) -> QuestionAnsweringModel {
    let spec = QaModelSpec {
        lora: lora.then(|| LoraSettings {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: Vec::new(),
        }),
    };
    QuestionAnsweringModel::from_pretrained(dir, &spec, &Device::Cpu, 0).expect("model")
}

fn batch(windows: &[&QaWindow]) -> QaBatch {
    collate_windows(windows, 0, &Device::Cpu).expect("batch")
}

const LABELS: [SpanLabel; 2] = [
    SpanLabel { start: 10, end: 12 },
    SpanLabel { start: 0, end: 0 },
];

fn vars_with_gradient(model: &QuestionAnsweringModel, loss: &Tensor) -> usize {
    let grads = loss.backward().expect("backward");
    model
        .trainable_vars()
        .iter()
        .filter(|v| {
            v.take_gradient(&grads).expect("gradient").is_some_and(|g| {
                let sum = g.abs().and_then(|a| a.sum_all()).expect("sum");
                sum.to_scalar::<f32>().expect("scalar") > 0.0
            })
        })
        .count()
}

#[test]
fn full_finetuning_gives_every_tensor_a_gradient() {
    let (dir, windows) = setup();
    let model = model(dir.path(), false);
    let vars = model.trainable_vars();
    // 3 embeddings + LN 2 + 2 layers × (6 linears × 2 + 2 LN × 2) + qa_outputs 2; no pooler.
    assert_eq!(vars.len(), 3 + 2 + 2 * 16 + 2);
    assert!(vars.iter().any(|v| v.name == "qa_outputs.weight"));
    assert!(!vars.iter().any(|v| v.name.contains("pooler")));
    let b = batch(&[&windows[0], &windows[1]]);
    let logits = model.forward(&b, true).expect("forward");
    let loss = QuestionAnsweringModel::loss(&logits, &b, &LABELS).expect("loss");
    assert_eq!(vars_with_gradient(&model, &loss), vars.len());
}

#[test]
fn lora_trains_adapters_on_query_and_value_and_the_whole_head() {
    let (dir, windows) = setup();
    let model = model(dir.path(), true);
    let mut names: Vec<String> = model.trainable_vars().into_iter().map(|v| v.name).collect();
    names.sort();
    assert_eq!(names.len(), 2 * 2 * 2 + 2);
    assert_eq!(names[8], "base_model.model.qa_outputs.bias");
    assert_eq!(
        names[0],
        "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
    );
    // B starts at zero, so A's gradient is zero until B moves: give B values first.
    for nv in model.trainable_vars() {
        if nv.name.contains("lora_B") {
            let values = Tensor::full(0.05f32, nv.var.dims(), &Device::Cpu).expect("b");
            nv.var.set(&values).expect("set");
        }
    }
    let b = batch(&[&windows[0], &windows[1]]);
    let logits = model.forward(&b, true).expect("forward");
    let loss = QuestionAnsweringModel::loss(&logits, &b, &LABELS).expect("loss");
    assert_eq!(vars_with_gradient(&model, &loss), names.len());
}

/// log-softmax cross-entropy over a window's real tokens, in f64.
fn cross_entropy(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln() - logits[target] as f64
}

#[test]
fn loss_is_the_mean_of_start_and_end_cross_entropy_over_real_tokens_only() {
    let (dir, windows) = setup();
    let model = model(dir.path(), false);
    let b = batch(&[&windows[0], &windows[1]]);
    let logits = model.forward(&b, false).expect("forward");
    let loss = QuestionAnsweringModel::loss(&logits, &b, &LABELS).expect("loss");
    let loss = loss.to_scalar::<f32>().expect("scalar") as f64;
    let start: Vec<Vec<f32>> = logits.start.to_vec2().expect("start");
    let end: Vec<Vec<f32>> = logits.end.to_vec2().expect("end");
    let mut expected = 0.0;
    for (i, label) in LABELS.iter().enumerate() {
        let n = windows[i].len();
        expected += cross_entropy(&start[i][..n], label.start);
        expected += cross_entropy(&end[i][..n], label.end);
    }
    expected /= 4.0;
    assert_eq!(
        windows.iter().map(QaWindow::len).collect::<Vec<_>>(),
        [16, 11]
    );
    assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
    assert!(expected > 1.0, "an untrained head: {expected}");
}

#[test]
fn padding_changes_neither_logits_nor_loss() {
    let (dir, windows) = setup();
    let model = model(dir.path(), false);
    let both = batch(&[&windows[0], &windows[1]]);
    let both_logits = model.forward(&both, false).expect("forward");
    let short = batch(&[&windows[1]]);
    let short_logits = model.forward(&short, false).expect("forward");
    let n = windows[1].len();
    for (padded, alone) in [
        (&both_logits.start, &short_logits.start),
        (&both_logits.end, &short_logits.end),
    ] {
        let padded: Vec<Vec<f32>> = padded.to_vec2().expect("padded");
        let alone: Vec<Vec<f32>> = alone.to_vec2().expect("alone");
        let diff = padded[1][..n]
            .iter()
            .zip(&alone[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "{diff}");
    }
    let scalar = |logits: &SpanLogits, b: &QaBatch, labels: &[SpanLabel]| -> f32 {
        let loss = QuestionAnsweringModel::loss(logits, b, labels).expect("loss");
        loss.to_scalar().expect("scalar")
    };
    let long = batch(&[&windows[0]]);
    let long_logits = model.forward(&long, false).expect("forward");
    let mean = (scalar(&long_logits, &long, &LABELS[..1])
        + scalar(&short_logits, &short, &LABELS[1..]))
        / 2.0;
    let together = scalar(&both_logits, &both, &LABELS);
    assert!((together - mean).abs() < 1e-5, "{together} vs {mean}");
}

#[test]
fn segment_ids_reach_the_encoder() {
    let (dir, windows) = setup();
    let model = model(dir.path(), false);
    let b = batch(&[&windows[0]]);
    let inputs = &b.inputs;
    let with_types = model
        .encoder()
        .forward_with_token_types(
            &inputs.input_ids,
            Some(&b.token_type_ids),
            &inputs.attention_mask,
            false,
        )
        .expect("forward");
    let zeros = b.token_type_ids.zeros_like().expect("zeros");
    let with_zeros = model
        .encoder()
        .forward_with_token_types(
            &inputs.input_ids,
            Some(&zeros),
            &inputs.attention_mask,
            false,
        )
        .expect("forward");
    let plain = model
        .encoder()
        .forward(&inputs.input_ids, &inputs.attention_mask, false)
        .expect("forward");
    let max_diff = |a: &Tensor, b: &Tensor| -> f32 {
        let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all());
        d.and_then(|d| d.to_scalar()).expect("diff")
    };
    assert!(max_diff(&with_zeros, &plain) < 1e-6);
    assert!(max_diff(&with_types, &plain) > 1e-3);
}

#[test]
fn exports_are_named_as_transformers_and_peft_expect() {
    let (dir, _) = setup();
    let model = model(dir.path(), true);
    let out = tempfile::tempdir().expect("tempdir");
    let merged = out.path().join("merged");
    model.export_merged(dir.path(), &merged).expect("export");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(
        config["architectures"],
        serde_json::json!(["BertForQuestionAnswering"])
    );
    assert_eq!(config["id2label"]["1"], "LABEL_1");
    assert!(merged.join("tokenizer.json").exists());
    let tensors = candle_core::safetensors::load(merged.join("model.safetensors"), &Device::Cpu)
        .expect("safetensors");
    assert_eq!(tensors["qa_outputs.weight"].dims(), [2, 32]);
    assert_eq!(tensors["qa_outputs.bias"].dims(), [2]);
    assert!(tensors.contains_key("bert.encoder.layer.1.attention.self.value.weight"));
    assert!(!tensors.keys().any(|k| k.contains("lora")));

    let adapter = out.path().join("adapter");
    model.export_adapter("tiny", &adapter).expect("adapter");
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(adapter.join("adapter_config.json")).expect("adapter config"),
    )
    .expect("json");
    assert_eq!(config["task_type"], "QUESTION_ANS");
    assert_eq!(config["modules_to_save"], serde_json::json!(["qa_outputs"]));
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["query", "value"])
    );
}
