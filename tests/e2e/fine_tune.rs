//! Classification fine-tuning end to end: upload → job → events → checkpoints → models →
//! classify → download → delete.

use std::io::Read;

use serde_json::{json, Value};

use crate::common::{assert_envelope, sentiment_csv, sentiment_jsonl, TestServer, BASE_MODEL};

fn messages(events: &Value) -> Vec<String> {
    events["data"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// File names inside a tar archive.
fn tar_entries(bytes: &[u8]) -> Vec<(String, u64)> {
    let mut archive = tar::Archive::new(bytes);
    let mut names = Vec::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().to_string();
        let mut sink = Vec::new();
        let size = entry.read_to_end(&mut sink).expect("read") as u64;
        names.push((name, size));
    }
    names
}

#[tokio::test]
async fn fine_tune_classifier_end_to_end() {
    let server = TestServer::spawn().await;
    let train = server.upload_ok("train.jsonl", sentiment_jsonl(24)).await;
    let valid = server.upload_ok("valid.csv", sentiment_csv(10)).await;
    let job = server
        .create_job(json!({
            "model": BASE_MODEL, "training_file": train, "validation_file": valid, "suffix": "e2e",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 8}}},
        }))
        .await;
    assert_eq!(job["status"], "validating_files");
    assert_eq!(job["hyperparameters"]["batch_size"], 8);
    assert_eq!(job["hyperparameters"]["learning_rate_multiplier"], "auto");
    let id = job["id"].as_str().expect("id").to_string();

    let done = server.wait_for_status(&id, "succeeded").await;
    let model = done["fine_tuned_model"]
        .as_str()
        .expect("fine-tuned model")
        .to_string();
    assert!(
        model.starts_with(&format!("ft:{BASE_MODEL}:temper:e2e:")),
        "{model}"
    );
    assert_eq!(done["error"], Value::Null);
    assert_eq!(done["hyperparameters"]["n_epochs"], 3);
    assert!(
        done["hyperparameters"]["learning_rate_multiplier"].is_number(),
        "{done}"
    );
    assert!(
        done["trained_tokens"].as_i64().is_some_and(|t| t > 0),
        "{done}"
    );
    assert!(done["finished_at"].is_i64());
    assert_eq!(done["estimated_finish"], Value::Null);
    let result_files = done["result_files"].as_array().expect("result files");
    assert!(!result_files.is_empty());
    let (_, results) = server
        .get(&format!(
            "/v1/files/{}",
            result_files[0].as_str().expect("id")
        ))
        .await;
    assert_eq!(results["purpose"], "fine-tune-results");

    let (_, events) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
        .await;
    let texts = messages(&events);
    assert_eq!(
        texts.first().map(String::as_str),
        Some("The job has successfully completed"),
        "{texts:?}"
    );
    assert_eq!(
        texts.last(),
        Some(&format!("Created fine-tuning job: {id}"))
    );
    for expected in [
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
    ] {
        assert!(
            texts.iter().any(|t| t == expected),
            "missing {expected:?} in {texts:?}"
        );
    }
    assert!(
        texts
            .iter()
            .any(|t| t == &format!("New fine-tuned model created: {model}")),
        "{texts:?}"
    );
    let metrics = events["data"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["type"] == "metrics")
        .expect("a metrics event");
    assert!(metrics["data"]["step"].is_u64(), "{metrics}");
    assert!(
        metrics["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Step ")),
        "{metrics}"
    );
    let times: Vec<i64> = events["data"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["created_at"].as_i64())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );

    // The SDK pages with `after = data[-1].id`; pages must join into the full list.
    let all_ids: Vec<Value> = events["data"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    let mut paged: Vec<Value> = Vec::new();
    let mut after = String::new();
    loop {
        let query = if after.is_empty() {
            String::new()
        } else {
            format!("&after={after}")
        };
        let (_, page) = server
            .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=3{query}"))
            .await;
        let data = page["data"].as_array().expect("page");
        paged.extend(data.iter().map(|e| e["id"].clone()));
        if page["has_more"] != true {
            break;
        }
        after = data
            .last()
            .and_then(|e| e["id"].as_str())
            .expect("last id")
            .to_string();
    }
    assert_eq!(paged, all_ids);

    let (_, checkpoints) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await;
    let steps: Vec<i64> = checkpoints["data"]
        .as_array()
        .expect("ckpts")
        .iter()
        .filter_map(|c| c["step_number"].as_i64())
        .collect();
    assert_eq!(steps, [9, 6, 3], "{checkpoints}");
    let checkpoint = checkpoints["data"][1]["fine_tuned_model_checkpoint"]
        .as_str()
        .expect("name")
        .to_string();
    assert!(checkpoint.ends_with(":ckpt-step-6"), "{checkpoint}");
    assert_eq!(
        checkpoints["data"][0]["object"],
        "fine_tuning.job.checkpoint"
    );

    let (_, models) = server.get("/v1/models").await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    for expected in [model.as_str(), checkpoint.as_str(), BASE_MODEL] {
        assert!(ids.contains(&expected), "{expected} missing from {ids:?}");
    }
    let (status, retrieved) = server.get(&format!("/v1/models/{model}")).await;
    assert_eq!(status, 200);
    assert_eq!(retrieved["id"], model.as_str());

    for name in [&model, &checkpoint] {
        let (status, reply) = server
            .post(
                "/v1/classifications",
                json!({"model": name, "input": ["good great happy film", "bad awful sad film"]}),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["object"], "list");
        let data = reply["data"].as_array().expect("data");
        assert_eq!(data.len(), 2);
        for (index, item) in data.iter().enumerate() {
            assert_eq!(item["index"], index);
            let label = item["label"].as_str().expect("label");
            assert!(label == "positive" || label == "negative", "{item}");
            let scores = item["scores"].as_object().expect("scores");
            assert_eq!(scores.len(), 2);
            let total: f64 = scores.values().filter_map(Value::as_f64).sum();
            assert!((total - 1.0).abs() < 1e-4, "{item}");
            assert!(
                (item["score"].as_f64().expect("score") - scores[label].as_f64().expect("p")).abs()
                    < 1e-6
            );
        }
    }

    let reply = server
        .client
        .get(server.url(&format!("/v1/fine_tuning/jobs/{id}/download?format=merged")))
        .send()
        .await
        .expect("download");
    assert_eq!(reply.status().as_u16(), 200);
    let archive = reply.bytes().await.expect("tar bytes");
    let entries = tar_entries(&archive);
    for wanted in ["config.json", "model.safetensors"] {
        assert!(
            entries
                .iter()
                .any(|(name, size)| name.ends_with(&format!("/{wanted}")) && *size > 0),
            "{wanted} missing from {entries:?}"
        );
    }
    let (status, body) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/download?step=3"))
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = server
        .get(&format!(
            "/v1/fine_tuning/jobs/{id}/download?format=adapter"
        ))
        .await;
    assert_eq!(status, 400, "a full fine-tune has no adapter: {body}");
    assert_envelope(&body, Some("format"));

    let (status, body) = server
        .post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 400);
    let error = assert_envelope(&body, Some("id"));
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("succeeded")),
        "{error}"
    );

    let (status, deleted) = server.delete(&format!("/v1/models/{model}")).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(
        deleted,
        json!({"id": model, "object": "model", "deleted": true})
    );
    let (status, body) = server.get(&format!("/v1/models/{model}")).await;
    assert_eq!(status, 404);
    assert_eq!(
        assert_envelope(&body, Some("model"))["code"],
        "model_not_found"
    );
    let (status, body) = server
        .post(
            "/v1/classifications",
            json!({"model": model, "input": "good"}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        assert_envelope(&body, Some("model"))["code"],
        "model_not_found"
    );

    let (status, _) = server.delete(&format!("/v1/files/{train}")).await;
    assert_eq!(status, 200, "a finished job no longer holds its files");
}

#[tokio::test]
async fn lora_job_downloads_a_peft_adapter() {
    let server = TestServer::spawn().await;
    let train = server.upload_ok("train.jsonl", sentiment_jsonl(12)).await;
    let job = server
        .create_job(json!({
            "model": BASE_MODEL, "training_file": train,
            "method": {"type": "supervised", "supervised": {"hyperparameters":
                {"n_epochs": 1, "batch_size": 4, "lora_rank": 4, "lora_alpha": 8}}},
        }))
        .await;
    let id = job["id"].as_str().expect("id");
    let done = server.wait_for_status(id, "succeeded").await;
    assert_eq!(
        done["method"]["supervised"]["hyperparameters"]["lora_rank"], 4,
        "{done}"
    );
    // Served as an adapter over the shared base encoder, which has no head of its own.
    let model = done["fine_tuned_model"].as_str().expect("model");
    let (status, reply) = server
        .post(
            "/v1/classifications",
            json!({"model": model, "input": ["good great happy film", "bad awful sad film"]}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    for item in reply["data"].as_array().expect("data") {
        let total: f64 = item["scores"]
            .as_object()
            .expect("scores")
            .values()
            .filter_map(Value::as_f64)
            .sum();
        assert!((total - 1.0).abs() < 1e-4, "{item}");
    }
    let (status, body) = server
        .post(
            "/v1/classifications",
            json!({"model": BASE_MODEL, "input": "good"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let error = assert_envelope(&body, Some("model"));
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("base encoder")),
        "{error}"
    );
    let reply = server
        .client
        .get(server.url(&format!(
            "/v1/fine_tuning/jobs/{id}/download?format=adapter"
        )))
        .send()
        .await
        .expect("download");
    assert_eq!(reply.status().as_u16(), 200);
    let entries = tar_entries(&reply.bytes().await.expect("tar"));
    for wanted in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(
            entries
                .iter()
                .any(|(name, size)| name.ends_with(&format!("/{wanted}")) && *size > 0),
            "{wanted} missing from {entries:?}"
        );
    }
}
