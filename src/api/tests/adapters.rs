//! `/v1/adapters`: registering PEFT directories (by path or uploaded tar) over a base
//! decoder, listing them (also in `/v1/models`, with their parent), deleting them, and the
//! 400s for everything that cannot be served.

use std::path::Path;

use super::*;
use crate::zoo::decoder::tests_adapter::tuned_model;
use crate::zoo::decoder::DecoderArch;

/// A tiny decoder `test-org/chat` in the models dir and, under `adapters/`, temper's PEFT
/// export of a LoRA fine-tune of it.
fn write_decoder_and_adapter(models_dir: &Path) {
    let base = models_dir.join("test-org/chat");
    crate::zoo::testing::write_tiny_decoder(&base, DecoderArch::Llama, 5).expect("tiny");
    let tuned = tuned_model(&base, 0);
    tuned
        .export_adapter("test-org/chat", &models_dir.join("adapters/one"))
        .expect("export");
}

fn tar_of(dir: &Path, top: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all(top, dir).expect("tar");
    builder.into_inner().expect("tar")
}

#[tokio::test]
async fn adapters_register_list_serve_as_models_and_delete() {
    let h = harness(&[], 1 << 30).await;
    let models_dir = h.state.settings.models_dir.clone();
    write_decoder_and_adapter(&models_dir);

    let reply = h
        .post(
            "/v1/adapters",
            json!({"id": "acme/support-bot", "base_model": "test-org/chat", "path": "adapters/one"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json());
    let adapter = reply.json();
    assert_eq!(adapter["object"], "adapter");
    assert_eq!(adapter["id"], "acme/support-bot");
    assert_eq!(adapter["base_model"], "test-org/chat");
    let source_bytes = std::fs::metadata(models_dir.join("adapters/one/adapter_model.safetensors"))
        .expect("source")
        .len();
    assert_eq!(adapter["bytes"], source_bytes);

    // An uploaded tar of the same directory, its files under one top directory.
    let tar = tar_of(&models_dir.join("adapters/one"), "my-adapter");
    let file = h.upload("user_data", "adapter.tar", &tar).await.json();
    let reply = h
        .post(
            "/v1/adapters",
            json!({"id": "from-tar", "base_model": "test-org/chat", "file_id": file["id"]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json());

    let listed = h.call(Method::GET, "/v1/adapters", None).await.json();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(ids, ["acme/support-bot", "from-tar"]);
    let models = h.call(Method::GET, "/v1/models", None).await.json();
    let entry = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|m| m["id"] == "acme/support-bot")
        .expect("listed as a model")
        .clone();
    assert_eq!(entry["parent"], "test-org/chat");
    let catalog_row = h
        .state
        .store
        .get_model("acme/support-bot")
        .await
        .expect("row")
        .expect("row");
    assert!(catalog_row.registered_adapter);
    // The adapter was copied: the source can go.
    std::fs::remove_dir_all(models_dir.join("adapters/one")).expect("rm");
    assert!(h
        .state
        .blobs
        .path(&catalog_row.artifact_dir)
        .join("adapter_config.json")
        .exists());

    let again = h
        .post(
            "/v1/adapters",
            json!({"id": "from-tar", "base_model": "test-org/chat", "file_id": file["id"]}),
        )
        .await;
    assert!(
        assert_envelope(&again, StatusCode::BAD_REQUEST, Some("id"))["message"]
            .as_str()
            .expect("message")
            .contains("exists")
    );

    let deleted = h
        .call(Method::DELETE, "/v1/adapters/acme/support-bot", None)
        .await;
    assert_eq!(
        deleted.json(),
        json!({"id": "acme/support-bot", "object": "adapter", "deleted": true})
    );
    assert_eq!(*h.stub.evicted.lock().expect("lock"), ["acme/support-bot"]);
    assert!(!h.state.blobs.path(&catalog_row.artifact_dir).exists());
    let missing = h
        .call(Method::DELETE, "/v1/adapters/acme/support-bot", None)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // Only registered adapters go through this route.
    h.state
        .store
        .insert_model(&model_row("ft:job-model"))
        .await
        .expect("row");
    let not_adapter = h
        .call(Method::DELETE, "/v1/adapters/ft:job-model", None)
        .await;
    assert_eq!(not_adapter.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn adapters_that_cannot_be_served_are_refused_with_the_reason() {
    let h = harness(&[], 1 << 30).await;
    let models_dir = h.state.settings.models_dir.clone();
    write_decoder_and_adapter(&models_dir);
    let register = |body: Value| h.post("/v1/adapters", body);
    let refused = |reply: Reply, param: &str, expected: &str| {
        let error = assert_envelope(&reply, StatusCode::BAD_REQUEST, Some(param));
        let message = error["message"].as_str().expect("message").to_string();
        assert!(message.contains(expected), "{message}");
    };
    let body = |path: &str| json!({"id": "x", "base_model": "test-org/chat", "path": path});

    let absolute = models_dir.join("adapters/one").display().to_string();
    refused(
        register(body(&absolute)).await,
        "path",
        "relative to the models dir",
    );
    refused(
        register(body("adapters/../adapters/one")).await,
        "path",
        "without `..`",
    );
    refused(
        register(body("adapters/none")).await,
        "path",
        "has no `adapter_config.json`",
    );
    refused(
        register(json!({"id": "x", "base_model": "nobody/nothing", "path": "adapters/one"})).await,
        "base_model",
        "not a base decoder",
    );
    // An encoder is no base for a decoder adapter.
    refused(
        register(json!({"id": "x", "base_model": "test-org/tiny", "path": "adapters/one"})).await,
        "path",
        "`task_type` must be SEQ_CLS",
    );
    refused(
        register(json!({"id": "x", "base_model": "test-org/chat"})).await,
        "path",
        "exactly one of",
    );
    refused(
        register(json!({"id": "bad id", "base_model": "test-org/chat", "path": "adapters/one"}))
            .await,
        "id",
        "whitespace",
    );
    refused(
        register(
            json!({"id": "test-org/chat", "base_model": "test-org/chat", "path": "adapters/one"}),
        )
        .await,
        "id",
        "base model",
    );

    // Shapes of another model: the base's hidden size does not match lora_A.
    let wrong = models_dir.join("adapters/wrong");
    std::fs::create_dir_all(&wrong).expect("mkdir");
    std::fs::copy(
        models_dir.join("adapters/one/adapter_config.json"),
        wrong.join("adapter_config.json"),
    )
    .expect("cp");
    let name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let tensors = std::collections::HashMap::from([(
        name.to_string(),
        candle_core::Tensor::zeros((4, 7), candle_core::DType::F32, &candle_core::Device::Cpu)
            .expect("t"),
    )]);
    candle_core::safetensors::save(&tensors, wrong.join("adapter_model.safetensors"))
        .expect("save");
    refused(
        register(body("adapters/wrong")).await,
        "path",
        "cannot be served over this base model",
    );

    // A DoRA adapter: the option is named, not ignored.
    let dora = models_dir.join("adapters/dora");
    std::fs::create_dir_all(&dora).expect("mkdir");
    let mut config: Value = serde_json::from_slice(
        &std::fs::read(models_dir.join("adapters/one/adapter_config.json")).expect("read"),
    )
    .expect("json");
    config["use_dora"] = Value::Bool(true);
    std::fs::write(dora.join("adapter_config.json"), config.to_string()).expect("write");
    std::fs::copy(
        models_dir.join("adapters/one/adapter_model.safetensors"),
        dora.join("adapter_model.safetensors"),
    )
    .expect("cp");
    refused(register(body("adapters/dora")).await, "path", "DoRA");

    let not_tar = h
        .upload("user_data", "adapter.tar", b"definitely not a tar")
        .await
        .json();
    refused(
        register(json!({"id": "x", "base_model": "test-org/chat", "file_id": not_tar["id"]})).await,
        "file_id",
        "is not a tar of a PEFT adapter directory",
    );
    // A tar without the PEFT files.
    let other = tempfile::tempdir().expect("tmp");
    std::fs::write(other.path().join("notes.txt"), b"hello").expect("write");
    let unrelated = h
        .upload("user_data", "other.tar", &tar_of(other.path(), "x"))
        .await
        .json();
    refused(
        register(json!({"id": "x", "base_model": "test-org/chat", "file_id": unrelated["id"]}))
            .await,
        "file_id",
        "holds no `adapter_config.json`",
    );
    refused(
        register(json!({"id": "x", "base_model": "test-org/chat", "file_id": "file-nope"})).await,
        "file_id",
        "No such file",
    );
    // Nothing was recorded or left behind by the refusals.
    assert_eq!(
        h.call(Method::GET, "/v1/adapters", None).await.json()["data"],
        json!([])
    );
    let stored = h.state.blobs.path("adapters");
    let left = std::fs::read_dir(&stored).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "staged adapters were removed");
}
