//! The dashboard: the page and its assets (content types, no key needed) and the data
//! routes (the series, checkpoints and report of a job seeded in the store; 401 without a
//! key).

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};

use super::{assert_envelope, harness, Harness, Reply};
use crate::blobs::Blobs;
use crate::domain::job::JobStatus;
use crate::store::{CheckpointRow, EventRow, FileRow, JobRow};

fn content_type(reply: &Reply) -> &str {
    reply
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_their_content_types() {
    let h = harness(&[], 1 << 20).await;
    let page = h.call(Method::GET, "/", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(content_type(&page), "text/html; charset=utf-8");
    let html = String::from_utf8(page.body.clone()).expect("utf-8");
    for asset in [
        "/dashboard/app.js",
        "/dashboard/app.css",
        "/dashboard/uPlot.iife.min.js",
        "/dashboard/uPlot.min.css",
    ] {
        assert!(html.contains(asset), "the page loads {asset}");
    }
    let policy = page
        .headers
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(policy.contains("script-src 'self';"), "{policy}");

    let expected = [
        (
            "app.js",
            "text/javascript; charset=utf-8",
            "from './job.js'",
        ),
        (
            "common.js",
            "text/javascript; charset=utf-8",
            "export async function api",
        ),
        (
            "job.js",
            "text/javascript; charset=utf-8",
            "export function jobPage",
        ),
        (
            "pages.js",
            "text/javascript; charset=utf-8",
            "export function filesPage",
        ),
        ("app.css", "text/css; charset=utf-8", ":focus-visible"),
        (
            "uPlot.iife.min.js",
            "text/javascript; charset=utf-8",
            "uPlot (v1.6.32)",
        ),
        ("uPlot.min.css", "text/css; charset=utf-8", ".uplot"),
        ("uPlot.LICENSE", "text/plain; charset=utf-8", "MIT License"),
    ];
    for (name, kind, needle) in expected {
        let reply = h
            .call(Method::GET, &format!("/dashboard/{name}"), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{name}");
        assert_eq!(content_type(&reply), kind, "{name}");
        assert_eq!(
            reply.headers.get(header::X_CONTENT_TYPE_OPTIONS),
            Some(&header::HeaderValue::from_static("nosniff"))
        );
        let text = String::from_utf8(reply.body).expect("utf-8");
        assert!(text.contains(needle), "{name} holds {needle}");
    }
    let missing = h.call(Method::GET, "/dashboard/secrets.txt", None).await;
    let error = assert_envelope(&missing, StatusCode::NOT_FOUND, Some("asset"));
    assert_eq!(error["message"], "No dashboard asset `secrets.txt`.");
}

#[test]
fn the_spec_lists_every_asset_and_no_other() {
    let line = crate::api::OPENAPI_YAML
        .lines()
        .find(|l| l.contains("name: asset, in: path"))
        .expect("the asset parameter");
    let listed = line
        .split("enum: [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("an enum");
    let listed: Vec<&str> = listed.split(',').map(str::trim).collect();
    let served: Vec<&str> = crate::api::dashboard::ASSETS
        .iter()
        .map(|(name, _, _)| *name)
        .collect();
    assert_eq!(listed, served);
}

fn get_with_key(uri: &str, key: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(uri);
    if let Some(key) = key {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    builder.body(Body::empty()).expect("request")
}

#[tokio::test]
async fn the_data_routes_need_the_key_and_the_page_does_not() {
    let h = harness(&["sk-dash"], 1 << 20).await;
    for open in ["/", "/dashboard/app.js"] {
        assert_eq!(
            h.send(get_with_key(open, None)).await.status,
            StatusCode::OK,
            "{open}"
        );
    }
    for guarded in ["/v1/dashboard/jobs", "/v1/dashboard/jobs/ftjob-x"] {
        let reply = h.send(get_with_key(guarded, None)).await;
        assert_eq!(
            assert_envelope(&reply, StatusCode::UNAUTHORIZED, None)["code"],
            "invalid_api_key",
            "{guarded}"
        );
        let wrong = h.send(get_with_key(guarded, Some("sk-other"))).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{guarded}");
    }
    let list = h
        .send(get_with_key("/v1/dashboard/jobs", Some("sk-dash")))
        .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(
        list.json(),
        json!({"object": "list", "data": [], "has_more": false, "limit": 100})
    );
    let unknown = h
        .send(get_with_key("/v1/dashboard/jobs/ftjob-x", Some("sk-dash")))
        .await;
    assert_envelope(&unknown, StatusCode::NOT_FOUND, Some("id"));
}

const REPORT: &str = r#"{"labels": ["negative", "positive"], "confusion_matrix": [[3, 1], [0, 4]],
  "accuracy": 0.875, "split": "validation", "step": 4}"#;

/// A succeeded classification job: 4 metrics events (validation at steps 2 and 4), one
/// checkpoint, a report result file; and a queued job with no metrics yet.
async fn seed(h: &Harness) -> String {
    let store = &h.state.store;
    let report = FileRow {
        id: "file-report".into(),
        bytes: REPORT.len() as i64,
        created_at: 300,
        filename: "classification_report.json".into(),
        purpose: "fine-tune-results".into(),
        status: "processed".into(),
        status_details: None,
        format: None,
        n_examples: None,
    };
    h.state
        .blobs
        .write_atomic(&Blobs::file_rel(&report.id), REPORT.as_bytes())
        .await
        .expect("report blob");
    store.insert_file(&report).await.expect("report row");
    let mut job = JobRow::new(
        "ftjob-done".into(),
        "test-org/tiny".into(),
        "file-train".into(),
        1,
        100,
    );
    job.status = JobStatus::Succeeded;
    job.finished_at = Some(300);
    job.result_files = vec![report.id.clone()];
    store
        .create_job(&job, &EventRow::info(&job.id, "Created", 100))
        .await
        .expect("job");
    let losses = [
        (1, 0.9, None),
        (2, 0.7, Some(0.8)),
        (3, 0.5, None),
        (4, 0.25, Some(0.4)),
    ];
    for (step, train_loss, valid_loss) in losses {
        let mut data = json!({"step": step, "total_steps": 4, "train_loss": train_loss,
            "learning_rate": 0.001});
        if let Some(valid_loss) = valid_loss {
            data["valid_loss"] = json!(valid_loss);
        }
        let event = EventRow::metrics(&job.id, format!("Step {step}/4"), data, 100 + step);
        store.insert_event(&event).await.expect("metrics");
    }
    store
        .insert_checkpoint(&CheckpointRow {
            id: "ftckpt_4".into(),
            job_id: job.id.clone(),
            created_at: 104,
            step_number: 4,
            fine_tuned_model_checkpoint: "ft:test-org/tiny:temper::done:ckpt-step-4".into(),
            metrics: json!({"step": 4, "valid_loss": 0.4}),
            artifact_dir: "jobs/ftjob-done/checkpoints/step-4".into(),
        })
        .await
        .expect("checkpoint");
    let queued = JobRow::new(
        "ftjob-new".into(),
        "test-org/tiny".into(),
        "file-train".into(),
        1,
        200,
    );
    store
        .create_job(&queued, &EventRow::info(&queued.id, "Created", 200))
        .await
        .expect("queued job");
    job.id
}

#[tokio::test]
async fn a_jobs_view_has_every_metric_as_series_its_checkpoints_and_report() {
    let h = harness(&[], 1 << 20).await;
    let id = seed(&h).await;
    let reply = h
        .call(Method::GET, &format!("/v1/dashboard/jobs/{id}"), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let view = reply.json();
    assert_eq!(view["job"]["id"], "ftjob-done");
    assert_eq!(view["job"]["object"], "fine_tuning.job");
    assert_eq!(view["job"]["status"], "succeeded");
    assert_eq!(
        view["actions"],
        json!({"cancel": false, "pause": false, "resume": false})
    );
    assert_eq!(view["progress"], json!({"step": 4, "total_steps": 4}));
    assert_eq!(
        view["metrics"],
        json!({
            "steps": [1, 2, 3, 4],
            "values": {
                "learning_rate": [0.001, 0.001, 0.001, 0.001],
                "train_loss": [0.9, 0.7, 0.5, 0.25],
                "valid_loss": [null, 0.8, null, 0.4],
            }
        })
    );
    let checkpoints = view["checkpoints"].as_array().expect("checkpoints");
    assert_eq!(checkpoints.len(), 1);
    assert_eq!(checkpoints[0]["object"], "fine_tuning.job.checkpoint");
    assert_eq!(checkpoints[0]["step_number"], 4);
    // Newest first: the four metrics events, then the creation event.
    let events: Vec<&str> = view["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(
        events,
        ["Step 4/4", "Step 3/4", "Step 2/4", "Step 1/4", "Created"]
    );
    assert_eq!(view["events_limit"], 50);
    let report = &view["report"];
    assert_eq!(report["file_id"], "file-report");
    assert_eq!(report["filename"], "classification_report.json");
    let expected: Value = serde_json::from_str(REPORT).expect("json");
    assert_eq!(report["content"], expected);

    let queued = h
        .call(Method::GET, "/v1/dashboard/jobs/ftjob-new", None)
        .await
        .json();
    assert_eq!(
        queued["actions"],
        json!({"cancel": true, "pause": true, "resume": false})
    );
    assert_eq!(queued["metrics"], json!({"steps": [], "values": {}}));
    assert_eq!(queued["progress"], Value::Null);
    assert_eq!(queued["report"], Value::Null);
}

#[tokio::test]
async fn the_job_list_carries_each_jobs_progress_newest_first() {
    let h = harness(&[], 1 << 20).await;
    seed(&h).await;
    let list = h.call(Method::GET, "/v1/dashboard/jobs", None).await.json();
    let rows = list["data"].as_array().expect("data");
    let ids: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["job"]["id"].as_str())
        .collect();
    assert_eq!(ids, ["ftjob-new", "ftjob-done"]);
    assert_eq!(rows[0]["progress"], Value::Null);
    assert_eq!(rows[1]["progress"], json!({"step": 4, "total_steps": 4}));
    assert_eq!(rows[1]["job"]["status"], "succeeded");
    assert_eq!(list["has_more"], false);
}
