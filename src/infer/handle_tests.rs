//! `InferenceHandle` on a real tiny BERT checkpoint (CPU): probabilities, batching
//! parity with the unmerged checkpoint model, concurrency, validation, export.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use tokio_util::sync::CancellationToken;

use super::test_support::MapCatalog;
use super::{ClassPrediction, InferError, InferenceHandle};
use crate::artifacts::checkpoint::{CheckpointMeta, CheckpointTask};
use crate::artifacts::ExportFormat;
use crate::domain::hyperparams::LoraSettings;
use crate::train::checkpoint::{write_checkpoint, CheckpointContents, TrainState};
use crate::zoo::{collate, ClassifierSpec, SequenceClassifier};

const MAX_SEQ_LEN: usize = 16;
const CACHE_BYTES: usize = 1 << 30;

fn labels() -> Vec<String> {
    ["negative", "neutral", "positive"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Writes a tiny BERT and a step-1 checkpoint of a classifier on it; with `lora`, the
/// adapters get random non-zero B so merging actually changes the weights.
fn write_fixture(root: &Path, lora: bool) -> PathBuf {
    let base = root.join("base");
    crate::zoo::testing::write_tiny_bert(&base, 7).expect("tiny bert");
    let spec = ClassifierSpec {
        num_labels: 3,
        lora: lora.then(|| LoraSettings {
            rank: 4,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: Vec::new(),
        }),
        classifier_dropout: Some(0.0),
    };
    let model = SequenceClassifier::from_pretrained(&base, &spec, &Device::Cpu, 11).expect("model");
    let mut trainable = model.trainable_tensors().expect("tensors");
    for (name, tensor) in trainable.iter_mut() {
        if name.contains("lora_B") {
            *tensor = Tensor::randn(0f32, 0.2, tensor.dims(), &Device::Cpu).expect("randn");
        }
    }
    let work = root.join(if lora { "job-lora" } else { "job-full" });
    let meta = CheckpointMeta {
        task: CheckpointTask::SequenceClassification {
            labels: labels(),
            spec,
        },
        base_model: crate::artifacts::BaseLocation::Directory { path: base },
        max_seq_len: MAX_SEQ_LEN,
        seed: 11,
    };
    let state = TrainState {
        step: 1,
        ..TrainState::default()
    };
    let contents = CheckpointContents {
        trainable: &trainable,
        optimizer: &HashMap::new(),
        state: &state,
        meta: &meta,
    };
    write_checkpoint(&work, &contents).expect("checkpoint")
}

struct Fixture {
    _dir: tempfile::TempDir,
    lora_ckpt: PathBuf,
    full_ckpt: PathBuf,
    catalog: Arc<MapCatalog>,
    handle: InferenceHandle,
    shutdown: CancellationToken,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let lora_ckpt = write_fixture(dir.path(), true);
    let full_ckpt = write_fixture(dir.path(), false);
    let catalog = MapCatalog::with(&[("ft:tiny:lora", lora_ckpt.clone())]);
    let shutdown = CancellationToken::new();
    let handle = InferenceHandle::new(catalog.clone(), CACHE_BYTES, shutdown.clone());
    Fixture {
        _dir: dir,
        lora_ckpt,
        full_ckpt,
        catalog,
        handle,
        shutdown,
    }
}

fn sample_texts() -> Vec<String> {
    let long = "the movie was very good and the acting was great ".repeat(20);
    [
        "i loved this movie",
        "terrible food",
        long.as_str(),
        "what a boring plot, never again",
        "ok",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn max_score_diff(a: &ClassPrediction, b: &ClassPrediction) -> f32 {
    a.scores
        .iter()
        .zip(&b.scores)
        .map(|((_, x), (_, y))| (x - y).abs())
        .fold(0.0, f32::max)
}

#[tokio::test]
async fn scores_are_probabilities_and_the_label_is_their_argmax() {
    let fx = fixture();
    let predictions = fx
        .handle
        .classify("ft:tiny:lora", sample_texts())
        .await
        .expect("classify");
    assert_eq!(predictions.len(), 5);
    for p in &predictions {
        let names: Vec<&str> = p.scores.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(names, ["negative", "neutral", "positive"]);
        let total: f32 = p.scores.iter().map(|(_, s)| s).sum();
        assert!((total - 1.0).abs() < 1e-5, "sum {total}");
        let (best, best_score) = p
            .scores
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("scores");
        assert_eq!(&p.label, best);
        assert_eq!(p.score, *best_score);
    }
    assert!(fx.handle.is_loaded("ft:tiny:lora"));
    assert!(fx.handle.cached_bytes() > 0);
}

#[tokio::test]
async fn batched_results_equal_one_at_a_time_and_the_unmerged_model() {
    let fx = fixture();
    let texts = sample_texts();
    let batched = fx
        .handle
        .classify("ft:tiny:lora", texts.clone())
        .await
        .expect("batched");
    // Reference: the checkpoint as training left it (LoRA not merged), one text at a time.
    let (model, tokenizer, _, max_len) =
        crate::tasks::sequence_classification::load_classifier_checkpoint(
            &crate::artifacts::BaseModels::default()
                .open(&fx.lora_ckpt)
                .expect("open checkpoint"),
            &Device::Cpu,
        )
        .expect("load");
    for (text, from_batch) in texts.iter().zip(&batched) {
        let single = fx
            .handle
            .classify("ft:tiny:lora", vec![text.clone()])
            .await
            .expect("single");
        assert!(max_score_diff(&single[0], from_batch) < 1e-5);
        assert_eq!(single[0].label, from_batch.label);
        let ids = tokenizer.encode(text, max_len).expect("encode");
        assert!(ids.len() <= MAX_SEQ_LEN);
        let batch = collate(&[&ids], tokenizer.pad_id(), &Device::Cpu).expect("collate");
        let logits: Vec<f32> = model
            .forward(&batch, false)
            .and_then(|l| Ok(l.squeeze(0)?.to_vec1::<f32>()?))
            .expect("forward");
        let reference = super::engine::prediction(&labels(), &logits).expect("prediction");
        assert!(max_score_diff(&reference, from_batch) < 1e-5);
    }
}

#[tokio::test]
async fn sixteen_concurrent_requests_are_all_answered_from_one_load() {
    let fx = fixture();
    let texts = sample_texts();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..16 {
        let handle = fx.handle.clone();
        let text = texts[i % texts.len()].clone();
        requests.spawn(async move { (i, handle.classify("ft:tiny:lora", vec![text]).await) });
    }
    let reference = fx
        .handle
        .classify("ft:tiny:lora", texts.clone())
        .await
        .expect("reference");
    let mut answered = 0;
    while let Some(joined) = requests.join_next().await {
        let (i, result) = joined.expect("task");
        let predictions = result.expect("answered");
        assert!(max_score_diff(&predictions[0], &reference[i % texts.len()]) < 1e-5);
        answered += 1;
    }
    assert_eq!(answered, 16);
    // Single flight: every request for the cold model waited on one catalog lookup in
    // each registry (the adapters' one finds it is no adapter, the models' one loads it).
    assert_eq!(fx.catalog.resolves(), 2);
}

#[tokio::test]
async fn requests_are_validated_before_any_load() {
    let fx = fixture();
    let empty = fx.handle.classify("ft:tiny:lora", Vec::new()).await;
    assert!(matches!(empty, Err(InferError::InvalidRequest { ref param, .. }) if param == "input"));
    let blank = fx
        .handle
        .classify("ft:tiny:lora", vec!["fine".into(), String::new()])
        .await;
    let Err(InferError::InvalidRequest { param, message }) = blank else {
        panic!("empty string must be rejected");
    };
    assert_eq!(
        (param.as_str(), message.as_str()),
        ("input", "`input[1]` is an empty string")
    );
    assert_eq!(fx.catalog.resolves(), 0);
    let unknown = fx.handle.classify("ft:nope", vec!["hi".into()]).await;
    assert_eq!(unknown, Err(InferError::ModelNotFound("ft:nope".into())));
}

#[tokio::test]
async fn evict_and_shutdown_release_the_engine() {
    let fx = fixture();
    fx.handle
        .classify("ft:tiny:lora", vec!["good".into()])
        .await
        .expect("warm");
    fx.handle.evict("ft:tiny:lora");
    assert!(!fx.handle.is_loaded("ft:tiny:lora"));
    assert_eq!(fx.handle.cached_bytes(), 0);
    fx.handle
        .classify("ft:tiny:lora", vec!["good".into()])
        .await
        .expect("reloaded");
    // Two lookups per cold load (the adapters' registry, then the models').
    assert_eq!(fx.catalog.resolves(), 4);
    fx.shutdown.cancel();
    // The watcher task closes the registry once it runs; yield until it has.
    while fx.handle.is_loaded("ft:tiny:lora") {
        tokio::task::yield_now().await;
    }
    let after = fx
        .handle
        .classify("ft:tiny:lora", vec!["good".into()])
        .await;
    assert_eq!(after, Err(InferError::engine("inference is shutting down")));
}

#[tokio::test]
async fn export_writes_merged_and_adapter_directories() {
    let fx = fixture();
    let out = fx._dir.path().join("export");
    let merged = out.join("merged");
    fx.handle
        .export(
            fx.lora_ckpt.clone(),
            ExportFormat::Merged,
            "tiny".into(),
            merged.clone(),
        )
        .await
        .expect("merged export");
    assert!(merged.join("config.json").is_file());
    assert!(merged.join("model.safetensors").is_file());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.join("config.json")).expect("read"))
            .expect("json");
    assert_eq!(config["num_labels"], 3);
    assert_eq!(config["id2label"]["2"], "positive");
    let adapter = out.join("adapter");
    fx.handle
        .export(
            fx.lora_ckpt.clone(),
            ExportFormat::Adapter,
            "tiny".into(),
            adapter.clone(),
        )
        .await
        .expect("adapter export");
    assert!(adapter.join("adapter_config.json").is_file());
    assert!(adapter.join("adapter_model.safetensors").is_file());
    let refused = fx
        .handle
        .export(
            fx.full_ckpt.clone(),
            ExportFormat::Adapter,
            "tiny".into(),
            out.join("no"),
        )
        .await;
    assert!(
        matches!(refused, Err(InferError::InvalidRequest { ref param, .. }) if param == "format")
    );
}
