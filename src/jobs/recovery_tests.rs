//! The real runner under faults: a full disk while writing a checkpoint, a base model that
//! cannot be read (no server path in the error), and a cancel while files are validated.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::fine_tune_tests::{examples, job_with, jsonl, worker, write_model, MODEL};
use super::test_support::*;
use super::{unix_now, FineTuneRunner, Processed};
use crate::domain::job::JobStatus;
use crate::store::{ControlAction, EventRow};
use crate::train::checkpoint::faults;

/// Linux's ENOSPC.
const ENOSPC: i32 = 28;

#[tokio::test]
async fn a_full_disk_while_checkpointing_pauses_the_job_with_a_plain_event() {
    let h = harness().await;
    write_model(&h);
    // 20 examples, batch 4: 5 steps per epoch, a checkpoint every 2 steps.
    let hyper = json!({"n_epochs": 2, "batch_size": 4, "save_steps": 2});
    let id = job_with(&h, &jsonl(&examples(20)), None, hyper).await;
    let work_dir = h.ctx.blobs.job_dir(&id);
    faults::fail_writes_in(&work_dir, ENOSPC);
    let w = worker(&h, FineTuneRunner);
    assert_eq!(
        w.process_next().await.unwrap(),
        Processed::Paused(id.clone())
    );
    let row = job(&h.ctx, &id).await;
    assert_eq!(
        (row.status, row.lease_owner, row.error, row.attempts),
        (JobStatus::Paused, None, None, 0)
    );
    let last = events(&h.ctx, &id).await.pop().unwrap();
    assert_eq!(last.level, "error");
    assert_eq!(
        last.message,
        "No space left on device while writing checkpoint step-2. The job is paused at its \
         last checkpoint: free space on the server, then resume it."
    );
    // Nothing half-written is listed.
    let listed = h.ctx.store.list_checkpoints(&id, None, 10).await.unwrap();
    assert!(listed.data.is_empty());

    // Space is back: the user resumes and the job finishes.
    faults::clear(&work_dir);
    let event = EventRow::info(&id, "Fine-tuning job resumed", unix_now());
    h.ctx
        .store
        .request_control(&id, ControlAction::Resume, &event, unix_now())
        .await
        .unwrap();
    assert_eq!(
        w.process_next().await.unwrap(),
        Processed::Succeeded(id.clone())
    );
}

#[tokio::test]
async fn a_job_error_names_the_model_not_the_servers_paths() {
    let h = harness().await;
    write_model(&h);
    let weights = h
        .dir
        .path()
        .join("models")
        .join(MODEL)
        .join("model.safetensors");
    std::fs::write(&weights, b"not safetensors").unwrap();
    let id = job_with(&h, &jsonl(&examples(12)), None, json!({"n_epochs": 1})).await;
    let w = worker(&h, FineTuneRunner);
    assert_eq!(
        w.process_next().await.unwrap(),
        Processed::Failed(id.clone())
    );
    let error = job(&h.ctx, &id).await.error.unwrap();
    let message = error["message"].as_str().unwrap();
    let root = h.dir.path().to_string_lossy().into_owned();
    for text in [
        message.to_string(),
        events(&h.ctx, &id).await.pop().unwrap().message,
    ] {
        assert!(!text.contains(&root), "server path in `{text}`");
        assert!(!text.contains("/tmp"), "server path in `{text}`");
    }
    assert!(message.contains("model.safetensors"), "{message}");
}

#[tokio::test]
async fn a_cancel_while_files_are_validated_is_the_last_event() {
    let h = harness().await;
    write_model(&h);
    // Large enough that validation is still running when the cancel lands on most runs;
    // what is asserted holds wherever it lands.
    let id = job_with(&h, &jsonl(&examples(40_000)), None, json!({"n_epochs": 1})).await;
    let beat_now = Arc::new(tokio::sync::Notify::new());
    let w = worker(&h, FineTuneRunner).beat_on(beat_now.clone());
    let run = tokio::spawn(async move { w.process_next().await.unwrap() });
    wait_until("validation to start", || async {
        messages(&h.ctx, &id)
            .await
            .iter()
            .any(|m| m.starts_with("Validating training file"))
    })
    .await;
    let event = EventRow::info(&id, "Fine-tuning job cancelled", unix_now());
    h.ctx
        .store
        .request_control(&id, ControlAction::Cancel, &event, unix_now())
        .await
        .unwrap();
    beat_now.notify_waiters();
    let processed = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the cancel stopped the run")
        .unwrap();
    assert_eq!(processed, Processed::Cancelled(id.clone()));
    let messages = messages(&h.ctx, &id).await;
    assert_eq!(
        messages.last().map(String::as_str),
        Some("Fine-tuning job cancelled"),
        "{messages:#?}"
    );
    let cancelled = messages
        .iter()
        .filter(|m| m.as_str() == "Fine-tuning job cancelled")
        .count();
    assert_eq!(cancelled, 1);
    assert_eq!(job(&h.ctx, &id).await.status, JobStatus::Cancelled);
    assert!(h
        .ctx
        .store
        .list_checkpoints(&id, None, 10)
        .await
        .unwrap()
        .data
        .is_empty());
}
