//! `temper jobs watch` polls on through a server that is briefly unreachable or answering
//! 503 (a restart, a proxy), as jobs themselves survive restarts: a stand-in server on
//! 127.0.0.1:0 answers 503 three times, then replays a real finished job and its events.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::cli::temper_at;
use crate::common::{job_body, sentiment_jsonl, TestServer};

const REFUSED: usize = 3;

#[tokio::test]
async fn watch_rides_out_a_server_answering_503_and_ends_with_the_model() {
    let server = TestServer::spawn().await;
    let file = server.upload_ok("train.jsonl", sentiment_jsonl(16)).await;
    let (job, model) = server
        .fine_tune_to_success(job_body(&file, json!({"n_epochs": 1, "batch_size": 8})))
        .await;
    let id = job["id"].as_str().expect("id").to_string();
    let (_, events) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
        .await;

    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let job_path = format!("/v1/fine_tuning/jobs/{id}");
    let stand_in = Router::new().fallback(move |uri: Uri| {
        let (job, events, job_path) = (job.clone(), events.clone(), job_path.clone());
        let count = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if count < REFUSED {
                let error = json!({"error": {"message": "restarting", "type": "server_error",
                                              "param": null, "code": null}});
                return (StatusCode::SERVICE_UNAVAILABLE, Json(error)).into_response();
            }
            let answer: Value = if uri.path() == job_path {
                job
            } else if uri.path() == format!("{job_path}/events") {
                events
            } else {
                return StatusCode::NOT_FOUND.into_response();
            };
            Json(answer).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base_url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, stand_in).await });

    let watched = temper_at(&base_url, None, &["jobs", "watch", &id], "").await;
    assert_eq!(watched.code, 0, "{}\n{}", watched.stdout, watched.stderr);
    let lines: Vec<&str> = watched.stdout.lines().collect();
    assert_eq!(
        lines.last().copied(),
        Some(model.as_str()),
        "{}",
        watched.stdout
    );
    let retrying = lines.iter().filter(|l| l.ends_with("; retrying")).count();
    assert_eq!(
        retrying, 1,
        "said once, not per failed poll:\n{}",
        watched.stdout
    );
    assert!(
        lines.contains(&"the server answers again"),
        "{}",
        watched.stdout
    );
    // Three refused polls, then the job and its events.
    assert!(served.load(Ordering::SeqCst) >= REFUSED + 2);
}
