//! Handler tests for `GET /v1/fine_tuning/jobs/{id}/download?format=tensorboard` and the
//! format and step checks of the download route.

use std::io::Read;

use axum::http::{header, Method, StatusCode};
use serde_json::{json, Value};

use super::{assert_envelope, harness, labelled_jsonl, Harness, Reply};
use crate::artifacts::tensorboard::{event_file, event_file_name, MetricsEvent};
use crate::store::EventRow;

/// A job created through the API: its id and `created_at`.
async fn created_job(h: &Harness) -> (String, i64) {
    let train = h
        .upload("fine-tune", "t.jsonl", &labelled_jsonl(12))
        .await
        .json()["id"]
        .clone();
    let job = h
        .call(
            Method::POST,
            "/v1/fine_tuning/jobs",
            Some(json!({"model": "test-org/tiny", "training_file": train})),
        )
        .await
        .json();
    (
        job["id"].as_str().expect("id").to_string(),
        job["created_at"].as_i64().expect("created_at"),
    )
}

/// The entries of a tar: path and content.
fn tar_entries(reply: &Reply) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(reply.body.as_slice());
    archive
        .entries()
        .expect("tar")
        .map(|entry| {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).expect("read");
            (path, content)
        })
        .collect()
}

async fn tensorboard(h: &Harness, id: &str) -> Reply {
    let uri = format!("/v1/fine_tuning/jobs/{id}/download?format=tensorboard");
    let reply = h.call(Method::GET, &uri, None).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply
}

#[tokio::test]
async fn a_job_without_metrics_downloads_a_file_with_only_the_version_record() {
    let h = harness(&[], 1 << 20).await;
    let (id, created_at) = created_job(&h).await;
    let reply = tensorboard(&h, &id).await;
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/x-tar");
    assert_eq!(
        reply.headers[header::CONTENT_DISPOSITION],
        format!("attachment; filename=\"{id}-tensorboard.tar\"").as_str()
    );
    assert_eq!(
        tar_entries(&reply),
        vec![(
            format!("{id}/{}", event_file_name(created_at)),
            event_file(created_at, &[])
        )]
    );
}

#[tokio::test]
async fn the_file_holds_the_jobs_metrics_events_in_write_order() {
    let h = harness(&[], 1 << 20).await;
    let (id, created_at) = created_job(&h).await;
    let data: [(i64, Value); 2] = [
        (
            created_at + 5,
            json!({"step": 1, "train_loss": 0.75, "valid_loss": null}),
        ),
        (
            created_at + 7,
            json!({"step": 2, "train_loss": 0.5, "valid_loss": 0.625}),
        ),
    ];
    for (at, data) in &data {
        let event = EventRow::metrics(&id, "Step", data.clone(), *at);
        h.state.store.insert_event(&event).await.expect("event");
        // Text events between them are not metrics.
        let note = EventRow::info(&id, "Checkpoint saved", *at);
        h.state.store.insert_event(&note).await.expect("event");
    }
    let reply = tensorboard(&h, &id).await;
    let expected: Vec<MetricsEvent<'_>> = data
        .iter()
        .map(|(created_at, data)| MetricsEvent {
            created_at: *created_at,
            data,
        })
        .collect();
    let entries = tar_entries(&reply);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1, event_file(created_at, &expected));
    // Not the empty file: both steps are in it.
    assert!(entries[0].1.len() > event_file(created_at, &[]).len());
}

#[tokio::test]
async fn bad_formats_steps_and_jobs_get_clear_errors() {
    let h = harness(&[], 1 << 20).await;
    let (id, _) = created_job(&h).await;
    let unknown = h
        .call(
            Method::GET,
            &format!("/v1/fine_tuning/jobs/{id}/download?format=tfevents"),
            None,
        )
        .await;
    let error = assert_envelope(&unknown, StatusCode::BAD_REQUEST, Some("format"));
    assert_eq!(
        error["message"],
        "`format` must be `merged`, `adapter` or `tensorboard`, got `tfevents`."
    );
    let with_step = h
        .call(
            Method::GET,
            &format!("/v1/fine_tuning/jobs/{id}/download?format=tensorboard&step=3"),
            None,
        )
        .await;
    let error = assert_envelope(&with_step, StatusCode::BAD_REQUEST, Some("step"));
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("takes no `step`")),
        "{error}"
    );
    let missing = h
        .call(
            Method::GET,
            "/v1/fine_tuning/jobs/ftjob-none/download?format=tensorboard",
            None,
        )
        .await;
    assert_envelope(&missing, StatusCode::NOT_FOUND, Some("id"));
}
