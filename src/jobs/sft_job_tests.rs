//! The real runner on a tiny random decoder: chat and prompt/completion jobs, metric names,
//! model rows, and the task/model mismatch.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::results::base64_decode;
use super::test_support::*;
use super::{FineTuneRunner, Processed, Worker};
use crate::blobs::Blobs;
use crate::train::SFT_RESULTS_CSV_HEADER;
use crate::zoo::decoder::DecoderArch;

const DECODER: &str = "test-org/tiny-llama";

fn chat_lines(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            let answer = if i % 2 == 0 { "yes" } else { "no" };
            json!({"messages": [
                {"role": "user", "content": format!("is {i} even?")},
                {"role": "assistant", "content": answer},
            ]})
            .to_string()
                + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

fn completion_lines(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            json!({"prompt": format!("{i} + 1 ="), "completion": format!(" {}", i + 1)}).to_string()
                + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

async fn run_job(h: &Harness, model: &str, train: &[u8], hyper: Value) -> (String, Processed) {
    upload(&h.ctx, "file-train", train).await;
    let method = json!({"type": "supervised", "supervised": {"hyperparameters": hyper}});
    let id = create_job(&h.ctx, model, "file-train", method).await;
    let worker = Worker::new(
        h.ctx.clone(),
        Arc::new(FineTuneRunner),
        "cpu",
        CancellationToken::new(),
    );
    let processed = worker.process_next().await.unwrap();
    (id, processed)
}

fn write_decoder(h: &Harness) {
    let dir = h.dir.path().join("models").join(DECODER);
    crate::zoo::testing::write_tiny_decoder(&dir, DecoderArch::Llama, 3).unwrap();
}

#[tokio::test]
async fn a_chat_job_trains_with_lm_metric_names_and_causal_model_rows() {
    let h = harness().await;
    write_decoder(&h);
    let hyper = json!({"n_epochs": 1, "batch_size": 4, "lora_rank": 4});
    let (id, processed) = run_job(&h, DECODER, &chat_lines(12), hyper).await;
    assert_eq!(processed, Processed::Succeeded(id.clone()));

    let row = job(&h.ctx, &id).await;
    assert_eq!(row.task.as_deref(), Some("chat"));
    // "auto" resolved with the decoder defaults.
    assert_eq!(resolved_knobs(&row), (4, 1.0, 1));
    assert_eq!(metric_steps(&h.ctx, &id).await, vec![1, 2, 3]);
    let metrics: Vec<Value> = events(&h.ctx, &id)
        .await
        .into_iter()
        .filter(|e| e.kind == "metrics")
        .filter_map(|e| e.data)
        .collect();
    for data in &metrics {
        let accuracy = data["train_mean_token_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{data}");
        assert!(data.get("train_accuracy").is_none(), "{data}");
    }

    let model = row.fine_tuned_model.clone().unwrap();
    let final_model = h.ctx.store.get_model(&model).await.unwrap().unwrap();
    assert_eq!(final_model.kind, "causal_lm");
    assert_eq!(row.result_files.len(), 2);
    let csv = h
        .ctx
        .blobs
        .read(&Blobs::file_rel(&row.result_files[0]))
        .await
        .unwrap();
    let csv =
        String::from_utf8(base64_decode(std::str::from_utf8(&csv).unwrap()).unwrap()).unwrap();
    assert!(csv.starts_with(SFT_RESULTS_CSV_HEADER), "{csv}");
    assert_eq!(csv.lines().count(), 4, "header + 3 steps: {csv}");
    let report = h
        .ctx
        .store
        .get_file(&row.result_files[1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.filename, "training_report.json");
}

#[tokio::test]
async fn prompt_completion_jobs_train_and_data_must_fit_the_model() {
    let h = harness().await;
    write_decoder(&h);
    crate::zoo::testing::write_tiny_bert(&h.dir.path().join("models/test-org/tiny-bert"), 7)
        .unwrap();
    let hyper = json!({"n_epochs": 1, "batch_size": 5, "lora_rank": 0});
    let (id, processed) = run_job(&h, DECODER, &completion_lines(10), hyper).await;
    assert_eq!(processed, Processed::Succeeded(id.clone()));
    assert_eq!(job(&h.ctx, &id).await.task.as_deref(), Some("completion"));
    assert_eq!(metric_steps(&h.ctx, &id).await, vec![1, 2]);

    // Chat data on an encoder fails naming the model.
    let (id, processed) = run_job(&h, "test-org/tiny-bert", &chat_lines(12), json!({})).await;
    assert_eq!(processed, Processed::Failed(id.clone()));
    let row = job(&h.ctx, &id).await;
    let error = row.error.unwrap();
    assert_eq!(error["code"], "invalid_model", "{error}");
    assert_eq!(error["param"], "model");
    assert!(
        error["message"].as_str().unwrap().contains("encoder"),
        "{error}"
    );
}

#[tokio::test]
async fn a_gguf_base_model_is_converted_once_and_trained_with_qlora() {
    let h = harness().await;
    let models = h.dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let gguf = models.join("tiny-chat.gguf");
    crate::zoo::gguf::tests::write_tiny_gguf(&gguf, crate::zoo::gguf::tests::LLAMA);
    let hyper = json!({"n_epochs": 1, "batch_size": 4, "lora_rank": 4, "quantize": "q8_0"});
    let (id, processed) = run_job(&h, "tiny-chat", &chat_lines(12), hyper).await;
    assert_eq!(processed, Processed::Succeeded(id.clone()));
    assert_eq!(metric_steps(&h.ctx, &id).await, vec![1, 2, 3]);
    let row = job(&h.ctx, &id).await;
    assert!(row.fine_tuned_model.unwrap().starts_with("ft:tiny-chat:"));

    // The conversion lives in the data dir's cache, complete, and a second job reuses it.
    let converted: Vec<_> = std::fs::read_dir(h.ctx.blobs.root().join("cache/gguf"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(converted.len(), 1, "{converted:?}");
    assert!(converted[0].join("model.safetensors").exists());
    assert!(converted[0].join("tokenizer.json").exists());
    let before = std::fs::metadata(converted[0].join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    let (id, processed) = run_job(&h, "tiny-chat", &chat_lines(12), json!({"n_epochs": 1})).await;
    assert_eq!(processed, Processed::Succeeded(id));
    let after = std::fs::metadata(converted[0].join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        before, after,
        "the converted directory was reused, not rewritten"
    );
}
