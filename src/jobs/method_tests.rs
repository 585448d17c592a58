//! The job's method against its data, through the real runner: `dpo` trains only on
//! preference pairs and `supervised` never on them, failing as OpenAI fails such jobs.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::test_support::*;
use super::{FineTuneRunner, Processed, Worker};
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

fn preference_lines(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            let (right, wrong) = if i % 2 == 0 {
                ("yes", "no")
            } else {
                ("no", "yes")
            };
            json!({
                "input": {"messages": [{"role": "user", "content": format!("is {i} even?")}]},
                "preferred_output": [{"role": "assistant", "content": right}],
                "non_preferred_output": [{"role": "assistant", "content": wrong}],
            })
            .to_string()
                + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

/// Runs one job on the tiny decoder (a real model, so a job that is not refused trains).
async fn run_job(train: &[u8], method: Value) -> Value {
    let h = harness().await;
    let dir = h.dir.path().join("models").join(DECODER);
    crate::zoo::testing::write_tiny_decoder(&dir, DecoderArch::Llama, 3).unwrap();
    upload(&h.ctx, "file-train", train).await;
    let id = create_job(&h.ctx, DECODER, "file-train", method).await;
    let worker = Worker::new(
        h.ctx.clone(),
        Arc::new(FineTuneRunner),
        "cpu",
        CancellationToken::new(),
    );
    let processed = worker.process_next().await.unwrap();
    assert_eq!(processed, Processed::Failed(id.clone()));
    let row = job(&h.ctx, &id).await;
    assert_eq!(row.resolved, None, "nothing was resolved for a refused job");
    row.error.unwrap()
}

/// One short LoRA epoch: what a job that is not refused trains with.
fn small() -> Value {
    json!({"n_epochs": 1, "batch_size": 4, "lora_rank": 4})
}

#[tokio::test]
async fn a_dpo_job_on_chat_data_fails_instead_of_training_as_sft() {
    let method = json!({"type": "dpo", "dpo": {"hyperparameters": small()}});
    let error = run_job(&chat_lines(12), method).await;
    assert_eq!(
        error,
        json!({
            "code": "invalid_training_file",
            "param": "training_file",
            "message": "The job failed due to an invalid training file. Input file file-train is in the fine-tune-chat format, but the specified fine-tuning job is not using 'supervised' as the training method (provided method=dpo).",
        })
    );
}

#[tokio::test]
async fn a_supervised_job_on_preference_data_fails_naming_dpo() {
    let method = json!({"type": "supervised", "supervised": {"hyperparameters": small()}});
    let error = run_job(&preference_lines(12), method).await;
    assert_eq!(
        error,
        json!({
            "code": "invalid_training_file",
            "param": "training_file",
            "message": "The job failed due to an invalid training file. Input file file-train is in the fine-tune-preference format, but the specified fine-tuning job is not using 'dpo' as the training method (provided method=supervised).",
        })
    );
}

#[tokio::test]
async fn a_dpo_job_on_preference_data_is_checked_then_refused_until_dpo_is_wired() {
    let method = json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}});
    let error = run_job(&preference_lines(12), method.clone()).await;
    assert_eq!(error["code"], "unsupported_method", "{error}");
    assert_eq!(error["param"], "method");

    // A bad pair is reported first, with its example number.
    let mut broken = preference_lines(11);
    broken.extend_from_slice(
        br#"{"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": [{"role": "user", "content": "x"}], "non_preferred_output": [{"role": "assistant", "content": "y"}]}"#,
    );
    let error = run_job(&broken, method).await;
    assert_eq!(error["code"], "invalid_training_file", "{error}");
    assert_eq!(
        error["message"],
        "The job failed due to an invalid training file. Invalid file format. Example 12, preferred_output message 1: role must be 'assistant', got 'user'."
    );
}
