//! `/metrics` through the router: requests counted by route template, uploads, jobs by
//! status, busy workers and loaded models, read back with a Prometheus parser; and the
//! JSON log lines of a request, each carrying its request id.

use axum::http::{header, Method, Request, StatusCode};
use serde_json::json;

use super::{harness, labelled_jsonl, Harness};
use crate::telemetry::metrics::scrape::{histogram, parse, value, Series};
use crate::telemetry::metrics::{PROMETHEUS_TEXT, UNMATCHED_ROUTE};
use crate::telemetry::testing::{span_field, CapturedLogs};
use crate::telemetry::REQUEST_ID_FIELD;

/// `/metrics`, parsed (asserting a 200 in the Prometheus text format).
async fn scrape(h: &Harness) -> Vec<Series> {
    let reply = h.call(Method::GET, "/metrics", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], PROMETHEUS_TEXT);
    parse(&String::from_utf8(reply.body).expect("utf8"))
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_uploads_jobs_and_workers() {
    // Keys are configured: `/metrics` needs none, like `/health`.
    let h = harness(&["sk-good"], 1 << 20).await;
    let scrape_without_key = h.call(Method::GET, "/metrics", None).await;
    assert_eq!(scrape_without_key.status, StatusCode::OK);

    let keyed = |method: Method, uri: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, "Bearer sk-good")
    };
    let content = labelled_jsonl(12);
    let mut uploaded = 0;
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let upload = h
            .upload_with_key("fine-tune", "t.jsonl", &content, "sk-good")
            .await;
        assert_eq!(upload.status, StatusCode::OK);
        uploaded += content.len();
        let body = json!({"model": "test-org/tiny", "training_file": upload.json()["id"]});
        let request = keyed(Method::POST, "/v1/fine_tuning/jobs")
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string().into())
            .expect("request");
        let job = h.send(request).await;
        assert_eq!(job.status, StatusCode::OK);
        jobs.push(job.json()["id"].as_str().expect("id").to_string());
    }
    let cancel = format!("/v1/fine_tuning/jobs/{}/cancel", jobs[0]);
    let cancelled = h
        .send(
            keyed(Method::POST, &cancel)
                .body(().into())
                .expect("request"),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK);
    for _ in 0..2 {
        let listed = h
            .send(
                keyed(Method::GET, "/v1/files")
                    .body(().into())
                    .expect("request"),
            )
            .await;
        assert_eq!(listed.status, StatusCode::OK);
    }
    let missing = keyed(Method::GET, "/v1/fine_tuning/jobs/ftjob-nope");
    let missing = h.send(missing.body(().into()).expect("request")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let unknown = h
        .send(
            keyed(Method::GET, "/no/such/path")
                .body(().into())
                .expect("request"),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let unauthorized = h.call(Method::GET, "/v1/files", None).await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    let cpu = h.state.workers.worker("cpu");
    let _busy = cpu.busy();
    h.state.workers.worker("cuda:0");

    let parsed = scrape(&h).await;
    let requests = |method, route, status| {
        value(
            &parsed,
            "temper_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("GET", "/v1/files", "200"), Some(2.0));
    assert_eq!(requests("GET", "/v1/files", "401"), Some(1.0));
    assert_eq!(requests("POST", "/v1/files", "200"), Some(3.0));
    assert_eq!(requests("POST", "/v1/fine_tuning/jobs", "200"), Some(3.0));
    assert_eq!(
        requests("POST", "/v1/fine_tuning/jobs/{id}/cancel", "200"),
        Some(1.0)
    );
    assert_eq!(
        requests("GET", "/v1/fine_tuning/jobs/{id}", "404"),
        Some(1.0)
    );
    assert_eq!(requests("GET", UNMATCHED_ROUTE, "404"), Some(1.0));
    // The earlier scrape, counted once it was answered.
    assert_eq!(requests("GET", "/metrics", "200"), Some(1.0));
    // Raw paths never become label values.
    let routes: Vec<&str> = parsed.iter().filter_map(|s| s.route()).collect();
    assert!(
        !routes
            .iter()
            .any(|r| r.contains("ftjob-") || r.contains("no/such")),
        "{routes:?}"
    );
    let upload_latency = histogram(
        &parsed,
        "temper_http_request_duration_seconds",
        &[("method", "POST"), ("route", "/v1/files")],
    );
    assert_eq!(upload_latency.count, Some(3));
    assert_eq!(
        value(&parsed, "temper_upload_bytes_total", &[]),
        Some(uploaded as f64)
    );
    let jobs_in = |status| value(&parsed, "temper_fine_tuning_jobs", &[("status", status)]);
    assert_eq!(jobs_in("validating_files"), Some(2.0));
    assert_eq!(jobs_in("cancelled"), Some(1.0));
    assert_eq!(jobs_in("running"), Some(0.0));
    assert_eq!(
        value(&parsed, "temper_fine_tuning_queue_depth", &[]),
        Some(2.0)
    );
    let busy = |worker, device| {
        value(
            &parsed,
            "temper_worker_busy",
            &[("worker", worker), ("device", device)],
        )
    };
    assert_eq!(
        (busy("0", "cpu"), busy("1", "cuda:0")),
        (Some(1.0), Some(0.0))
    );
    assert_eq!(
        value(
            &parsed,
            "temper_loaded_model_bytes",
            &[
                ("model", "ft:test-org/tiny:temper::abcd1234"),
                ("kind", "model")
            ]
        ),
        Some(4096.0)
    );
    assert_eq!(
        value(&parsed, "temper_loaded_models", &[("kind", "model")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn openmetrics_is_negotiated() {
    let h = harness(&[], 1 << 20).await;
    let request = Request::get("/metrics")
        .header(
            header::ACCEPT,
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .body(().into())
        .expect("request");
    let reply = h.send(request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        crate::telemetry::metrics::OPENMETRICS_TEXT
    );
    assert!(String::from_utf8_lossy(&reply.body).ends_with("# EOF\n"));
}

#[tokio::test]
async fn every_json_log_line_of_a_request_carries_its_request_id() {
    let h = harness(&[], 1 << 20).await;
    let logs = CapturedLogs::default();
    // The test's runtime is single-threaded: the handler and the tasks it spawns all log
    // through this thread's subscriber.
    let _default = logs.install_json("debug,tower_http=debug");
    let upload = h.upload("fine-tune", "t.jsonl", &labelled_jsonl(12)).await;
    assert_eq!(upload.status, StatusCode::OK);
    let upload_id = upload.request_id.expect("x-request-id");
    let missing = h.call(Method::GET, "/v1/files/file-nope", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let missing_id = missing.request_id.expect("x-request-id");

    let lines = logs.json_lines();
    let of = |id: &str| {
        lines
            .iter()
            .filter(|line| span_field(line, REQUEST_ID_FIELD) == Some(id))
            .count()
    };
    // tower-http's start and finish lines at least, plus what the handlers log.
    assert!(of(&upload_id) >= 2, "{lines:#?}");
    assert!(of(&missing_id) >= 2, "{lines:#?}");
    assert_eq!(of(&upload_id) + of(&missing_id), lines.len(), "{lines:#?}");
    let finished = lines
        .iter()
        .filter(|line| line["fields"]["message"] == "finished processing request")
        .count();
    assert_eq!(finished, 2, "{lines:#?}");
}
