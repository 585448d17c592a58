//! Chat fine-tuning of a decoder end to end: upload chat JSONL → LoRA job → metrics events →
//! checkpoints → chat completions (plain, streamed, checkpoint, base model) → completions →
//! downloads (merged + PEFT adapter) → bad input.

use std::io::Read;

use serde_json::{json, Value};

use crate::common::{assert_envelope, TestServer, DECODER_MODEL};

/// `n` short conversations; the assistant answers with a colour.
pub fn chat_jsonl(n: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..n {
        let answer = if i % 2 == 0 { "blue" } else { "red" };
        let line = json!({"messages": [
            {"role": "system", "content": "Answer with a colour."},
            {"role": "user", "content": format!("item {i}?")},
            {"role": "assistant", "content": answer},
        ]});
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

fn tar_names(bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(bytes);
    let mut names = Vec::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().to_string();
        let mut sink = Vec::new();
        entry.read_to_end(&mut sink).expect("read");
        names.push(name);
    }
    names
}

/// The `data:` payloads of an SSE body, in order.
fn sse_payloads(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn chat_fine_tuning_end_to_end() {
    let server = TestServer::spawn().await;
    let train = server.upload_ok("train.jsonl", chat_jsonl(12)).await;
    let valid = server.upload_ok("valid.jsonl", chat_jsonl(10)).await;
    let job = server
        .create_job(json!({
            "model": DECODER_MODEL, "training_file": train, "validation_file": valid,
            "suffix": "chat",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 2, "batch_size": 4, "lora_rank": 4, "lora_alpha": 8}}},
        }))
        .await;
    let id = job["id"].as_str().expect("id").to_string();
    let done = server.wait_for_status(&id, "succeeded").await;
    let model = done["fine_tuned_model"]
        .as_str()
        .expect("model")
        .to_string();
    assert!(
        model.starts_with(&format!("ft:{DECODER_MODEL}:temper:chat:")),
        "{model}"
    );
    // 12 examples / batch 4 = 3 steps per epoch.
    assert_eq!(done["hyperparameters"]["n_epochs"], 2);
    assert!(done["trained_tokens"].as_i64().unwrap_or(0) > 0, "{done}");
    assert_eq!(done["result_files"].as_array().map(Vec::len), Some(2));

    let (_, events) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
        .await;
    let events = events["data"].as_array().expect("events").clone();
    let metrics: Vec<&Value> = events.iter().filter(|e| e["type"] == "metrics").collect();
    let last_step = metrics
        .iter()
        .filter_map(|e| e["data"]["step"].as_u64())
        .max();
    assert_eq!(last_step, Some(6), "2 epochs of 3 steps");
    let step = metrics
        .iter()
        .find(|e| e["data"]["step"] == 3)
        .expect("step 3");
    let accuracy = step["data"]["train_mean_token_accuracy"]
        .as_f64()
        .expect("token accuracy");
    assert!((0.0..=1.0).contains(&accuracy), "{step}");
    assert!(step["data"]["train_loss"].as_f64().expect("loss") > 0.0);

    let (_, checkpoints) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await;
    let checkpoints = checkpoints["data"].as_array().expect("checkpoints").clone();
    assert!(!checkpoints.is_empty());
    let checkpoint_model = checkpoints[0]["fine_tuned_model_checkpoint"]
        .as_str()
        .expect("checkpoint model")
        .to_string();
    assert!(
        checkpoints[0]["metrics"]["full_valid_loss"].is_number(),
        "{}",
        checkpoints[0]
    );

    let request = json!({"model": model, "messages": [{"role": "user", "content": "item 3?"}],
                         "max_tokens": 6, "temperature": 0});
    let (status, reply) = server.post("/v1/chat/completions", request.clone()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["model"], model.as_str());
    let content = reply["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    let usage = &reply["usage"];
    let completion_tokens = usage["completion_tokens"].as_u64().expect("usage");
    assert!(completion_tokens <= 6, "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().expect("prompt") + completion_tokens)
    );

    // Streamed, greedy: the same text, chunk by chunk, then the usage chunk and [DONE].
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let body = server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .expect("stream")
        .text()
        .await
        .expect("body");
    let payloads = sse_payloads(&body);
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{body}"
    );
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).expect("chunk json"))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, content);
    let usage_chunk = chunks.last().expect("usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], completion_tokens);

    for other in [checkpoint_model.as_str(), DECODER_MODEL] {
        let (status, reply) = server
            .post(
                "/v1/chat/completions",
                json!({"model": other, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
            )
            .await;
        assert_eq!(status, 200, "{other}: {reply}");
        assert_eq!(reply["model"], other);
    }
    let (status, reply) = server
        .post(
            "/v1/completions",
            json!({"model": model, "prompt": "item 1?", "max_tokens": 4, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["object"], "text_completion");

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
        if format == "merged" {
            for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
                assert!(names.iter().any(|n| n.ends_with(file)), "{file}: {names:?}");
            }
        }
    }
}

#[tokio::test]
async fn chat_data_mismatches_fail_clearly() {
    let server = TestServer::spawn().await;
    let chat = server.upload_ok("chat.jsonl", chat_jsonl(12)).await;
    // Chat data on an encoder: the job fails naming the model.
    let job = server
        .create_job(json!({"model": "test-org/tiny-bert", "training_file": chat}))
        .await;
    let id = job["id"].as_str().expect("id").to_string();
    let failed = server.wait_for_status(&id, "failed").await;
    assert_eq!(failed["error"]["code"], "invalid_model", "{failed}");
    assert_eq!(failed["error"]["param"], "model");

    // Fewer than 10 chat examples.
    let few = server.upload_ok("few.jsonl", chat_jsonl(4)).await;
    let job = server
        .create_job(json!({"model": DECODER_MODEL, "training_file": few}))
        .await;
    let id = job["id"].as_str().expect("id").to_string();
    let failed = server.wait_for_status(&id, "failed").await;
    assert_eq!(failed["error"]["code"], "invalid_n_examples", "{failed}");

    // Generation requests that make no sense are 400s naming the param.
    for (body, param) in [
        (json!({"model": DECODER_MODEL}), "messages"),
        (
            json!({"model": DECODER_MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 3}),
            "temperature",
        ),
        (
            json!({"model": DECODER_MODEL, "messages": [{"role": "user", "content": "x"}], "n": 100}),
            "n",
        ),
    ] {
        let (status, reply) = server.post("/v1/chat/completions", body).await;
        assert_eq!(status, 400, "{reply}");
        assert_envelope(&reply, Some(param));
    }
    let (status, reply) = server
        .post(
            "/v1/chat/completions",
            json!({"model": "nope/none", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(status, 404, "{reply}");
    assert_eq!(reply["error"]["code"], "model_not_found");
}
