//! LoRA classifiers served through the handle over one shared base encoder: the base is
//! loaded once and counted once, each adapter in the adapters' budget, and every answer
//! equals the checkpoint's served alone (merged); full fine-tunes stay their own models.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::catalog::AdapterBase;
use super::test_support::MapCatalog;
use super::{InferError, InferOptions, InferenceHandle, ServableModel, ServedKind};
use crate::tasks::sequence_classification::shared::tests::{
    assert_same, served_alone, train_classifier,
};
use crate::tasks::sequence_classification::shared::ClassifierAdapter;
use crate::zoo::shared_encoder::SharedEncoderBase;

fn classifier(name: &str, dir: &Path, base: Option<&Path>) -> ServableModel {
    ServableModel {
        name: name.into(),
        dir: dir.to_path_buf(),
        kind: ServedKind::Classifier,
        adapter_of: base.map(|base| AdapterBase {
            name: "org/bert".into(),
            dir: base.to_path_buf(),
            slot: 0,
        }),
        serve_dtype: None,
        gguf: None,
    }
}

/// A handle over a catalog of the shared base encoder `base` (`org/bert`) and `models`.
fn handle_over(base: &Path, models: Vec<ServableModel>) -> InferenceHandle {
    let mut all = vec![ServableModel {
        name: "org/bert".into(),
        dir: base.to_path_buf(),
        kind: ServedKind::SharedEncoder,
        adapter_of: None,
        serve_dtype: None,
        gguf: None,
    }];
    all.extend(models);
    InferenceHandle::with_options(
        MapCatalog::with_models(all),
        InferOptions::cpu(1 << 30),
        CancellationToken::new(),
    )
}

#[tokio::test]
async fn lora_classifiers_share_one_base_encoder_and_answer_as_their_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("org/bert");
    crate::zoo::testing::write_tiny_bert(&base, 2).unwrap();
    let first = train_classifier(&base, &tmp.path().join("first"), 4, 5e-3);
    let second = train_classifier(&base, &tmp.path().join("second"), 4, 2e-2);
    let full = train_classifier(&base, &tmp.path().join("full"), 0, 1e-3);
    let handle = handle_over(
        &base,
        vec![
            classifier("ft:first", &first, Some(&base)),
            classifier("ft:second", &second, Some(&base)),
            classifier("ft:full", &full, None),
        ],
    );
    let texts = ["good movie", "i hated it", "dull music"];
    let inputs = || texts.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    // Concurrent requests for two adapters: they may share the base's rounds.
    let (a, b) = tokio::join!(
        handle.classify("ft:first", inputs()),
        handle.classify("ft:second", inputs())
    );
    for (got, dir) in [(a.unwrap(), &first), (b.unwrap(), &second)] {
        for (got, want) in got.iter().zip(served_alone(dir, &texts)) {
            assert_same(got, &want);
        }
    }

    // One base in the models' budget, two adapters in theirs.
    let base_bytes = SharedEncoderBase::load(&base, &candle_core::Device::Cpu)
        .unwrap()
        .parameter_bytes();
    assert_eq!(handle.cached_bytes(), base_bytes);
    let adapter_bytes = |dir: &Path| {
        ClassifierAdapter::load(dir, &candle_core::Device::Cpu)
            .unwrap()
            .bytes()
    };
    assert_eq!(
        handle.cached_adapter_bytes(),
        adapter_bytes(&first) + adapter_bytes(&second)
    );
    assert!(handle.is_loaded("org/bert") && handle.is_loaded("ft:first"));

    // A full fine-tune is its own model beside the base.
    let got = handle.classify("ft:full", inputs()).await.unwrap();
    for (got, want) in got.iter().zip(served_alone(&full, &texts)) {
        assert_same(got, &want);
    }
    assert!(handle.cached_bytes() > 2 * base_bytes);

    // The base alone has no head to classify with.
    match handle.classify("org/bert", inputs()).await {
        Err(InferError::InvalidRequest { param, message }) => {
            assert_eq!(param, "model");
            assert!(message.contains("base encoder"), "{message}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    // Nor is an adapter of an encoder a language model.
    let params = super::GenerationParams::default();
    match handle.complete("ft:first", "hi".into(), params).await {
        Err(InferError::InvalidRequest { param, .. }) => assert_eq!(param, "model"),
        Err(other) => panic!("expected a 400, got {other:?}"),
        Ok(_) => panic!("expected a 400, got a stream"),
    }
}

#[tokio::test]
async fn a_peft_export_served_over_the_base_answers_as_its_checkpoint_with_its_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("org/bert");
    crate::zoo::testing::write_tiny_bert(&base, 3).unwrap();
    let checkpoint = train_classifier(&base, &tmp.path().join("job"), 4, 2e-2);
    let peft = tmp.path().join("peft");
    crate::tasks::export_checkpoint(
        &checkpoint,
        &crate::artifacts::BaseModels::default(),
        crate::artifacts::ExportFormat::Adapter,
        "org/bert",
        &peft,
    )
    .unwrap();
    let named = tmp.path().join("named");
    std::fs::create_dir_all(&named).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(peft.join(file), named.join(file)).unwrap();
    }
    std::fs::write(named.join("labels.json"), r#"["neg", "pos"]"#).unwrap();
    let handle = handle_over(
        &base,
        vec![
            classifier("acme/unnamed", &peft, Some(&base)),
            classifier("acme/named", &named, Some(&base)),
        ],
    );
    let texts = ["good movie", "i hated it", "dull music"];
    let inputs = || texts.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let alone = served_alone(&checkpoint, &texts);
    let named = handle.classify("acme/named", inputs()).await.unwrap();
    for (got, want) in named.iter().zip(&alone) {
        assert_same(got, want);
    }
    // Without label names: transformers' defaults, the same probabilities.
    let unnamed = handle.classify("acme/unnamed", inputs()).await.unwrap();
    for (got, want) in unnamed.iter().zip(&alone) {
        let names: Vec<&str> = got.scores.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(names, ["LABEL_0", "LABEL_1"]);
        for ((_, p), (_, q)) in got.scores.iter().zip(&want.scores) {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
    }
}
