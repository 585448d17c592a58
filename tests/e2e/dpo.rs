//! Preference tuning (DPO) end to end: upload preference rows → `dpo` job on the tiny
//! decoder → reward metrics in events and checkpoints → the result served by
//! `/v1/chat/completions` → merged and PEFT downloads; then SFT followed by DPO from the
//! `ft:` model, and the mismatches that fail clearly.

use std::io::Read;

use serde_json::{json, Value};

use crate::chat::chat_jsonl;
use crate::common::{assert_envelope, TestServer, DECODER_MODEL};

/// `n` preference rows over varied prompts: "blue" is always preferred over "red", which
/// a tiny decoder learns within a few steps.
pub fn preference_jsonl(n: usize, offset: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in offset..offset + n {
        let line = json!({
            "input": {"messages": [
                {"role": "system", "content": "Answer with a colour."},
                {"role": "user", "content": format!("item {i}?")},
            ]},
            "preferred_output": [{"role": "assistant", "content": "blue"}],
            "non_preferred_output": [{"role": "assistant", "content": "red"}],
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

fn metrics_events(events: &Value) -> Vec<Value> {
    let mut metrics: Vec<Value> = events["data"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "metrics")
        .cloned()
        .collect();
    metrics.sort_by_key(|e| e["data"]["step"].as_u64());
    metrics
}

fn tar_names(bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(bytes);
    let mut names = Vec::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("entry");
        let mut sink = Vec::new();
        entry.read_to_end(&mut sink).expect("read");
        names.push(entry.path().expect("path").to_string_lossy().to_string());
    }
    names
}

async fn greedy_reply(server: &TestServer, model: &str) -> (String, Vec<f64>) {
    let (status, reply) = server
        .post(
            "/v1/chat/completions",
            json!({"model": model, "messages": [
                {"role": "system", "content": "Answer with a colour."},
                {"role": "user", "content": "item 99?"}],
                "max_tokens": 4, "temperature": 0, "logprobs": true}),
        )
        .await;
    assert_eq!(status, 200, "{model}: {reply}");
    assert_eq!(reply["object"], "chat.completion");
    let choice = &reply["choices"][0];
    let text = choice["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    let logprobs = choice["logprobs"]["content"]
        .as_array()
        .expect("logprobs")
        .iter()
        .map(|t| t["logprob"].as_f64().expect("logprob"))
        .collect();
    (text, logprobs)
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[tokio::test]
async fn dpo_job_raises_reward_accuracy_and_serves_a_chat_model() {
    let server = TestServer::spawn().await;
    let train = server
        .upload_ok("prefs.jsonl", preference_jsonl(16, 0))
        .await;
    let valid = server
        .upload_ok("prefs-valid.jsonl", preference_jsonl(8, 100))
        .await;
    let body = json!({
        "model": DECODER_MODEL, "training_file": train, "validation_file": valid,
        "suffix": "pref",
        "method": {"type": "dpo", "dpo": {"hyperparameters": {
            "n_epochs": 3, "batch_size": 4, "beta": 0.5,
            "lora_rank": 4, "lora_alpha": 8, "learning_rate": 0.002}}},
    });
    let (status, estimate) = server.post("/v1/fine_tuning/estimates", body.clone()).await;
    assert_eq!(status, 200, "{estimate}");
    assert_eq!(estimate["task"], "dpo", "{estimate}");
    // 16 pairs in batches of 4, 3 epochs; the validation file's 8 pairs.
    assert_eq!(estimate["training_examples"], 16);
    assert_eq!(estimate["validation_examples"], 8);
    assert_eq!(estimate["total_steps"], 12);
    assert_eq!(estimate["method"]["dpo"]["hyperparameters"]["beta"], 0.5);
    let job = server.create_job(body).await;
    assert_eq!(job["method"]["type"], "dpo", "{job}");
    let id = job["id"].as_str().expect("id").to_string();
    let done = server.wait_for_status(&id, "succeeded").await;
    assert_eq!(done["trained_tokens"], estimate["trained_tokens"], "{done}");
    assert_eq!(
        done["method"]["dpo"]["hyperparameters"]["beta"], 0.5,
        "{done}"
    );
    assert_eq!(done["method"]["dpo"]["hyperparameters"]["n_epochs"], 3);
    let model = done["fine_tuned_model"]
        .as_str()
        .expect("model")
        .to_string();
    assert!(
        model.starts_with(&format!("ft:{DECODER_MODEL}:temper:pref:")),
        "{model}"
    );

    let (_, events) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=200"))
        .await;
    let metrics = metrics_events(&events);
    // 16 pairs / batch 4 = 4 steps per epoch, 3 epochs.
    assert_eq!(metrics.len(), 12, "{metrics:?}");
    let first = &metrics[0]["data"];
    // Step 1 runs the policy before any update: it is the reference, so the loss is
    // ln 2 and no pair is won yet.
    let first_loss = first["train_loss"].as_f64().expect("train_loss");
    assert!(
        (first_loss - std::f64::consts::LN_2).abs() < 1e-5,
        "{first}"
    );
    assert_eq!(first["train_reward_accuracy"], 0.0, "{first}");
    assert_eq!(first["train_rewards_chosen"], 0.0, "{first}");
    let last = &metrics[metrics.len() - 1]["data"];
    for name in [
        "train_rewards_rejected",
        "train_reward_margin",
        "valid_rewards_chosen",
        "valid_rewards_rejected",
    ] {
        assert!(last[name].is_number(), "{name}: {last}");
    }
    assert_eq!(last["train_reward_accuracy"], 1.0, "{last}");
    assert_eq!(last["valid_reward_accuracy"], 1.0, "{last}");
    assert!(last["valid_reward_margin"].as_f64().expect("margin") > 0.0);
    assert!(last["valid_loss"].as_f64().expect("loss") < std::f64::consts::LN_2);

    let (_, checkpoints) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await;
    let checkpoints = checkpoints["data"].as_array().expect("checkpoints").clone();
    assert!(!checkpoints.is_empty());
    // DPO validates on the whole set: OpenAI's `full_valid_loss` is that loss.
    let metrics = &checkpoints[0]["metrics"];
    assert!(metrics["valid_reward_accuracy"].is_number(), "{metrics}");
    assert_eq!(
        metrics["full_valid_loss"], metrics["valid_loss"],
        "{metrics}"
    );

    // Served like an SFT result.
    greedy_reply(&server, &model).await;

    for (format, wanted) in [
        ("merged", "model.safetensors"),
        ("adapter", "adapter_model.safetensors"),
    ] {
        let reply = server
            .client
            .get(server.url(&format!(
                "/v1/fine_tuning/jobs/{id}/download?format={format}"
            )))
            .send()
            .await
            .expect("download");
        assert_eq!(reply.status().as_u16(), 200, "{format}");
        let names = tar_names(&reply.bytes().await.expect("tar"));
        assert!(names.iter().any(|n| n.ends_with(wanted)), "{names:?}");
    }
}

#[tokio::test]
async fn dpo_starts_from_a_fine_tuned_model() {
    let server = TestServer::spawn().await;
    let chat = server.upload_ok("chat.jsonl", chat_jsonl(12)).await;
    let sft = server
        .create_job(json!({
            "model": DECODER_MODEL, "training_file": chat, "suffix": "sft",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 3, "batch_size": 4, "lora_rank": 4, "lora_alpha": 8,
                "learning_rate": 0.003}}},
        }))
        .await;
    let sft_id = sft["id"].as_str().expect("id").to_string();
    let sft_done = server.wait_for_status(&sft_id, "succeeded").await;
    let sft_model = sft_done["fine_tuned_model"]
        .as_str()
        .expect("model")
        .to_string();
    let base_reply = greedy_reply(&server, DECODER_MODEL).await;
    let sft_reply = greedy_reply(&server, &sft_model).await;
    assert!(
        base_reply.1.len() != sft_reply.1.len() || max_diff(&base_reply.1, &sft_reply.1) > 1e-2,
        "SFT changed the model: {base_reply:?} vs {sft_reply:?}"
    );

    // DPO from the SFT model with a learning rate too small to move it: the result answers
    // as the SFT model does, with the same log-probs, so it started from the SFT weights.
    let prefs = server
        .upload_ok("prefs.jsonl", preference_jsonl(12, 0))
        .await;
    // Its estimate reads the fine-tuned model's base (same tokenizer and shapes).
    let (dpo_done, _) = server
        .fine_tune_as_estimated(json!({
            "model": sft_model, "training_file": prefs, "suffix": "dpo",
            "method": {"type": "dpo", "dpo": {"hyperparameters": {
                "n_epochs": 1, "batch_size": 4, "lora_rank": 4, "learning_rate": 1e-12}}},
        }))
        .await;
    assert_eq!(dpo_done["model"], sft_model.as_str());
    let dpo_model = dpo_done["fine_tuned_model"]
        .as_str()
        .expect("model")
        .to_string();
    assert!(
        dpo_model.starts_with(&format!("ft:{DECODER_MODEL}:temper:dpo:")),
        "named after the original base: {dpo_model}"
    );
    let dpo_reply = greedy_reply(&server, &dpo_model).await;
    assert_eq!(dpo_reply.0, sft_reply.0);
    assert!(
        max_diff(&dpo_reply.1, &sft_reply.1) < 1e-3,
        "{dpo_reply:?} vs {sft_reply:?}"
    );
}

#[tokio::test]
async fn dpo_mismatches_fail_clearly() {
    let server = TestServer::spawn().await;
    let prefs = server
        .upload_ok("prefs.jsonl", preference_jsonl(12, 0))
        .await;
    let chat = server.upload_ok("chat.jsonl", chat_jsonl(12)).await;

    // Chat data with the dpo method: OpenAI's wording and code.
    let job = server
        .create_job(json!({"model": DECODER_MODEL, "training_file": chat,
                           "method": {"type": "dpo"}}))
        .await;
    let id = job["id"].as_str().expect("id").to_string();
    let failed = server.wait_for_status(&id, "failed").await;
    assert_eq!(failed["error"]["code"], "invalid_training_file", "{failed}");

    // Preference data on an encoder.
    let job = server
        .create_job(
            json!({"model": "test-org/tiny-bert", "training_file": prefs,
                           "method": {"type": "dpo"}}),
        )
        .await;
    let id = job["id"].as_str().expect("id").to_string();
    let failed = server.wait_for_status(&id, "failed").await;
    assert_eq!(failed["error"]["code"], "invalid_model", "{failed}");

    // An unknown fine-tuned model is refused at creation.
    let (status, reply) = server
        .post(
            "/v1/fine_tuning/jobs",
            json!({"model": "ft:test-org/tiny-llama:temper::nope1234", "training_file": prefs,
                   "method": {"type": "dpo"}}),
        )
        .await;
    assert_eq!(status, 404, "{reply}");
    assert_envelope(&reply, Some("model"));
}
