//! `/v1/adapters` over a base encoder: a PEFT sequence-classification adapter (temper's own
//! export of a LoRA classifier here) registered with its label names, listed as a
//! classifier of that base, and the 400s for what cannot be served.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::tasks::sequence_classification::shared::tests::train_classifier;

/// A tiny BERT `test-org/bert` in the models dir and, under `adapters/clf`, temper's PEFT
/// export of a LoRA classifier (labels `neg`, `pos`) of it; the checkpoint's directory.
fn write_encoder_and_adapter(models_dir: &Path, work: &Path) -> PathBuf {
    let base = models_dir.join("test-org/bert");
    crate::zoo::testing::write_tiny_bert(&base, 4).expect("tiny bert");
    let checkpoint = train_classifier(&base, work, 4, 5e-3);
    crate::tasks::export_checkpoint(
        &checkpoint,
        &crate::artifacts::BaseModels::default(),
        crate::artifacts::ExportFormat::Adapter,
        "test-org/bert",
        &models_dir.join("adapters/clf"),
    )
    .expect("export");
    checkpoint
}

/// `adapters/<name>` in the models dir: the exported adapter's config with `tensors`.
fn write_variant(models_dir: &Path, name: &str, tensors: &HashMap<String, candle_core::Tensor>) {
    let dir = models_dir.join("adapters").join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let config = "adapter_config.json";
    std::fs::copy(
        models_dir.join("adapters/clf").join(config),
        dir.join(config),
    )
    .expect("cp");
    candle_core::safetensors::save(tensors, dir.join("adapter_model.safetensors")).expect("save");
}

#[tokio::test]
async fn a_classification_adapter_registers_over_its_base_encoder_with_its_labels() {
    let h = harness(&[], 1 << 30).await;
    let models_dir = h.state.settings.models_dir.clone();
    let work = tempfile::tempdir().expect("tmp");
    write_encoder_and_adapter(&models_dir, work.path());
    let body = |id: &str, labels: Value| json!({"id": id, "base_model": "test-org/bert", "path": "adapters/clf", "labels": labels});
    let reply = h
        .post(
            "/v1/adapters",
            body("acme/sentiment", json!(["neg", "pos"])),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json());
    assert_eq!(reply.json()["base_model"], "test-org/bert");
    let row = h
        .state
        .store
        .get_model("acme/sentiment")
        .await
        .expect("row")
        .expect("row");
    assert!(row.registered_adapter);
    assert_eq!(row.kind, "classifier");
    let stored = h.state.blobs.path(&row.artifact_dir);
    let labels: Vec<String> =
        serde_json::from_slice(&std::fs::read(stored.join("labels.json")).expect("labels"))
            .expect("json");
    assert_eq!(labels, ["neg", "pos"]);

    let refused = |reply: Reply, param: &str, expected: &str| {
        let error = assert_envelope(&reply, StatusCode::BAD_REQUEST, Some(param));
        let message = error["message"].as_str().expect("message").to_string();
        assert!(message.contains(expected), "{message}");
    };
    refused(
        h.post("/v1/adapters", body("three", json!(["a", "b", "c"])))
            .await,
        "path",
        "3 labels for a classifier of 2",
    );
    // Without its head the adapter is no classifier.
    let exported = candle_core::safetensors::load(
        models_dir.join("adapters/clf/adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("load");
    let mut headless = exported.clone();
    headless.retain(|name, _| !name.contains("classifier"));
    write_variant(&models_dir, "headless", &headless);
    refused(
        h.post(
            "/v1/adapters",
            json!({"id": "headless", "base_model": "test-org/bert", "path": "adapters/headless"}),
        )
        .await,
        "path",
        "has no `base_model.model.classifier.weight`",
    );
    // A LoRA factor on a module the encoder does not have.
    let mut odd = exported.clone();
    // A `lora_A` factor (of the adapter's rank): a map's first value could be a `lora_B`,
    // whose first dimension is a module's width, and the rank check would answer first.
    let any_factor = headless
        .iter()
        .find(|(name, _)| name.ends_with(".lora_A.weight"))
        .map(|(_, factor)| factor.clone())
        .expect("a lora_A factor");
    odd.insert(
        "base_model.model.bert.encoder.layer.9.attention.self.query.lora_A.weight".into(),
        any_factor,
    );
    write_variant(&models_dir, "odd", &odd);
    refused(
        h.post(
            "/v1/adapters",
            json!({"id": "odd", "base_model": "test-org/bert", "path": "adapters/odd"}),
        )
        .await,
        "path",
        "layer.9",
    );
    // Labels are a classifier's: not for a decoder base.
    crate::zoo::testing::write_tiny_decoder(
        &models_dir.join("test-org/chat"),
        crate::zoo::decoder::DecoderArch::Llama,
        1,
    )
    .expect("decoder");
    refused(
        h.post(
            "/v1/adapters",
            json!({"id": "x", "base_model": "test-org/chat", "path": "adapters/clf", "labels": ["a"]}),
        )
        .await,
        "labels",
        "decoder",
    );
    let listed = h.call(Method::GET, "/v1/adapters", None).await.json();
    assert_eq!(listed["data"].as_array().expect("data").len(), 1);
}
