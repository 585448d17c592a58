//! Job control over HTTP: cancel while running, pause then resume to success, graceful
//! shutdown mid-job, and a restart that finds an orphaned (crashed) job.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::common::{
    assert_envelope, job_body, sentiment_jsonl, TestOptions, TestServer, BASE_MODEL,
};
use temper::domain::job::JobStatus;
use temper::domain::job_spec::JobSpec;
use temper::store::{EventRow, JobRow, Store};

fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    i64::try_from(secs).expect("fits")
}

#[tokio::test]
async fn cancel_running_job() {
    let server = TestServer::spawn().await;
    let file = server.upload_ok("long.jsonl", sentiment_jsonl(200)).await;
    let job = server
        .create_job(job_body(&file, json!({"n_epochs": 50, "batch_size": 1})))
        .await;
    let id = job["id"].as_str().expect("id");
    server.wait_for_status(id, "running").await;
    let (status, cancelled) = server
        .post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["finished_at"].is_i64());
    // The worker notices within a step and must not overwrite the cancel.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (_, after) = server.get(&format!("/v1/fine_tuning/jobs/{id}")).await;
    assert_eq!(after["status"], "cancelled", "{after}");
    assert_eq!(after["fine_tuned_model"], serde_json::Value::Null);
    // Exactly one "cancelled" event, and nothing of training after it.
    let (_, events) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=1000"))
        .await;
    let messages: Vec<&str> = events["data"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(messages[0], "Fine-tuning job cancelled", "{messages:#?}");
    let cancelled = messages
        .iter()
        .filter(|m| **m == "Fine-tuning job cancelled")
        .count();
    assert_eq!(cancelled, 1, "{messages:#?}");
    let (status, body) = server
        .post(&format!("/v1/fine_tuning/jobs/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 400);
    assert_envelope(&body, Some("id"));
}

#[tokio::test]
async fn pause_then_resume_to_success() {
    let server = TestServer::spawn().await;
    // 5000 steps: long enough that the pause lands mid-run (heartbeats relay it).
    let file = server.upload_ok("train.jsonl", sentiment_jsonl(100)).await;
    let job = server
        .create_job(job_body(&file, json!({"n_epochs": 50, "batch_size": 1})))
        .await;
    let id = job["id"].as_str().expect("id");
    server.wait_for_status(id, "running").await;
    // A pause before the first step pauses with nothing to checkpoint; this test wants one.
    server.wait_for_first_step(id).await;
    let (status, pausing) = server
        .post(&format!("/v1/fine_tuning/jobs/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, 200, "{pausing}");
    assert_eq!(pausing["status"], "pausing");
    server.wait_for_status(id, "paused").await;
    let (_, checkpoints) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await;
    let paused_at = checkpoints["data"][0]["step_number"]
        .as_i64()
        .expect("a checkpoint written on pause");
    assert!(paused_at > 0 && paused_at < 5000, "{checkpoints}");
    let (status, resumed) = server
        .post(&format!("/v1/fine_tuning/jobs/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["status"], "queued");
    let done = server.wait_for_status(id, "succeeded").await;
    assert!(done["fine_tuned_model"].is_string());
    let (_, checkpoints) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await;
    assert_eq!(checkpoints["data"][0]["step_number"], 5000, "{checkpoints}");
}

#[tokio::test]
async fn shutdown_checkpoints_and_the_next_server_finishes_the_job() {
    let server = TestServer::spawn().await;
    let file = server.upload_ok("train.jsonl", sentiment_jsonl(40)).await;
    let job = server
        .create_job(job_body(&file, json!({"n_epochs": 10, "batch_size": 2})))
        .await;
    let id = job["id"].as_str().expect("id").to_string();
    server.wait_for_status(&id, "running").await;
    let root = server.stop().await;
    let store = Store::open(&root.path().join("data/temper.db"))
        .await
        .expect("store");
    let row = store.get_job(&id).await.expect("query").expect("job");
    assert_eq!(row.status, JobStatus::Queued, "released on shutdown");
    assert_eq!(row.attempts, 0, "a clean hand-back is not a failed attempt");
    store.close().await;
    let server = TestServer::start(root, TestOptions::default()).await;
    let done = server.wait_for_status(&id, "succeeded").await;
    assert!(done["fine_tuned_model"].is_string(), "{done}");
}

#[tokio::test]
async fn restart_requeues_and_finishes_an_orphaned_job() {
    let server = TestServer::spawn().await;
    let file = server.upload_ok("train.jsonl", sentiment_jsonl(16)).await;
    let root = server.stop().await;

    // What a SIGKILL mid-job leaves: a running job whose worker lease has expired.
    let store = Store::open(&root.path().join("data/temper.db"))
        .await
        .expect("store");
    let now = unix_now();
    let id = "ftjob-orphanedorphanedorphaned".to_string();
    let hyper = json!({"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": "auto"});
    let orphan = JobRow {
        spec: JobSpec::parse(
            Some(&json!({"type": "supervised", "supervised": {"hyperparameters": hyper}})),
            None,
        )
        .expect("valid method"),
        status: JobStatus::Running,
        started_at: Some(now - 60),
        lease_owner: Some("worker-that-died".to_string()),
        lease_expires_at: Some(now - 30),
        attempts: 1,
        ..JobRow::new(id.clone(), BASE_MODEL.to_string(), file, 1234, now - 60)
    };
    store
        .create_job(
            &orphan,
            &EventRow::info(&id, format!("Created fine-tuning job: {id}"), now - 60),
        )
        .await
        .expect("insert orphan");
    store.close().await;

    let server = TestServer::start(root, TestOptions::default()).await;
    let done = server.wait_for_status(&id, "succeeded").await;
    assert_eq!(done["seed"], 1234);
    let model = done["fine_tuned_model"].as_str().expect("model");
    let (status, _) = server.get(&format!("/v1/models/{model}")).await;
    assert_eq!(status, 200);
}
