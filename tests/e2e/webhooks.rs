//! Webhooks from the real binary: a job's end reaches the receiver signed, and a SIGKILL
//! between the job's end and its delivery loses nothing and changes no `webhook-id`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::binary::BinaryServer;
use crate::common::{job_body, sentiment_jsonl, BASE_MODEL, JOB_TIMEOUT};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver saw, and whether it took it.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    accepted: bool,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// A receiver that answers 503 until `accept` is set, then 200.
async fn receiver() -> (String, Log, Arc<AtomicBool>) {
    let log: Log = Arc::default();
    let accept = Arc::new(AtomicBool::new(false));
    let (seen, taking) = (log.clone(), accept.clone());
    let app = Router::new().route(
        "/hooks",
        post(move |headers: HeaderMap, body: Bytes| {
            let (seen, taking) = (seen.clone(), taking.clone());
            async move {
                let accepted = taking.load(Ordering::SeqCst);
                seen.lock().expect("log").push(Received {
                    headers,
                    body,
                    accepted,
                });
                if accepted {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, log, accept)
}

async fn wait_until(log: &Log, what: &str, done: impl Fn(&[Received]) -> bool) {
    let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
    while !done(&log.lock().expect("log")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receiver never saw {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn header(received: &Received, name: &str) -> String {
    received
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .expect("ascii")
        .to_string()
}

async fn cancelled_job(server: &BinaryServer) -> String {
    let file: Value = server
        .upload_fine_tune(sentiment_jsonl(20))
        .await
        .json()
        .await
        .expect("file json");
    let body = job_body(
        file["id"].as_str().expect("file id"),
        json!({"n_epochs": 50}),
    );
    let job = server.post_json("/v1/fine_tuning/jobs", Some(&body)).await;
    let id = job["id"].as_str().expect("job id").to_string();
    let cancel = format!("/v1/fine_tuning/jobs/{id}/cancel");
    let cancelled = server.post_json(&cancel, None).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    id
}

#[tokio::test]
async fn a_job_end_survives_sigkill_before_delivery_and_arrives_signed_under_one_id() {
    let (url, log, accept) = receiver().await;
    let args = ["--webhook-url", &url, "--webhook-secret", SECRET];
    let write_models = |models: &std::path::Path| {
        temper::zoo::testing::write_tiny_bert(&models.join(BASE_MODEL), 7).expect("tiny BERT");
    };
    let server = BinaryServer::spawn_with_models(write_models, &args).await;
    let job_id = cancelled_job(&server).await;
    wait_until(&log, "a first attempt", |seen| !seen.is_empty()).await;

    // Killed after the job's end was stored and before any delivery succeeded.
    let server = server.kill_and_restart(&args).await;
    accept.store(true, Ordering::SeqCst);
    wait_until(&log, "an accepted delivery", |seen| {
        seen.iter().any(|r| r.accepted)
    })
    .await;

    let seen = log.lock().expect("log").clone();
    let event_id = header(&seen[0], "webhook-id");
    assert!(event_id.starts_with("evt_"), "{event_id}");
    let secret: temper::config::WebhookSecret = SECRET.parse().expect("secret");
    for received in &seen {
        assert_eq!(header(received, "webhook-id"), event_id);
        let timestamp: i64 = header(received, "webhook-timestamp").parse().expect("int");
        assert_eq!(
            header(received, "webhook-signature"),
            temper::webhooks::signature(&secret, &event_id, timestamp, &received.body)
        );
        let body: Value = serde_json::from_slice(&received.body).expect("json body");
        assert_eq!(body["id"], event_id.as_str());
        assert_eq!(body["object"], "event");
        assert_eq!(body["type"], "fine_tuning.job.cancelled");
        assert_eq!(body["data"], json!({"id": job_id}));
        assert!(body["created_at"]
            .as_i64()
            .is_some_and(|t| t > 1_700_000_000));
    }
    // Delivered once taken: no attempt after the accepted one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = log.lock().expect("log").len();
    assert_eq!(after, seen.len(), "{}", server.log());
}

#[tokio::test]
async fn endpoints_without_a_secret_stop_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_temper"))
        .current_dir(dir.path())
        .args([
            "serve",
            "--port",
            "0",
            "--webhook-url",
            "http://127.0.0.1:9/x",
        ])
        .env_remove("TEMPER_WEBHOOK_SECRET")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--webhook-url needs --webhook-secret"),
        "{stderr}"
    );
}
