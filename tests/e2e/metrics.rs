//! Observability end to end: `/metrics` scraped and parsed after known traffic (uploads,
//! requests, a tiny job, a chat completion), and `--log-format json` on the real binary:
//! every line JSON, request ids on a request's lines, the job id on a job's.

use std::time::Duration;

use serde_json::{json, Value};

use crate::binary::BinaryServer;
use crate::common::{
    job_body, sentiment_jsonl, TestServer, BASE_MODEL, DECODER_MODEL, JOB_TIMEOUT,
};
use crate::scrape::{histogram, parse, value, Series};

/// `/metrics`, parsed as Prometheus text (asserting a 200 and the format's content type).
async fn scrape(server: &TestServer) -> Vec<Series> {
    let reply = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(reply.status().as_u16(), 200);
    let content_type = reply.headers()["content-type"].to_str().expect("ascii");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    parse(&reply.text().await.expect("body"))
}

#[tokio::test]
async fn metrics_count_what_the_server_did() {
    let server = TestServer::spawn().await;
    let content = sentiment_jsonl(16);
    let train = server.upload_ok("train.jsonl", content.clone()).await;
    for _ in 0..2 {
        assert_eq!(server.get("/v1/files").await.0, 200);
    }
    assert_eq!(server.get("/v1/fine_tuning/jobs/ftjob-nope").await.0, 404);
    assert_eq!(server.get("/no/such/path").await.0, 404);
    let hyper = json!({"n_epochs": 1, "batch_size": 8});
    let (job, _) = server.fine_tune_to_success(job_body(&train, hyper)).await;
    let job_id = job["id"].as_str().expect("id");
    let (status, chat) = server
        .post(
            "/v1/chat/completions",
            json!({"model": DECODER_MODEL, "messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": 4, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{chat}");
    let completion_tokens = chat["usage"]["completion_tokens"].as_f64().expect("usage");

    let parsed = scrape(&server).await;
    let requests = |method, route, status| {
        value(
            &parsed,
            "temper_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("POST", "/v1/files", "200"), Some(1.0));
    assert_eq!(requests("GET", "/v1/files", "200"), Some(2.0));
    assert_eq!(requests("POST", "/v1/fine_tuning/jobs", "200"), Some(1.0));
    // The test's polls of the job are 200s; only the unknown id answered 404.
    assert_eq!(
        requests("GET", "/v1/fine_tuning/jobs/{id}", "404"),
        Some(1.0)
    );
    assert_eq!(requests("GET", "unmatched", "404"), Some(1.0));
    assert_eq!(requests("POST", "/v1/chat/completions", "200"), Some(1.0));
    let upload_latency = histogram(
        &parsed,
        "temper_http_request_duration_seconds",
        &[("method", "POST"), ("route", "/v1/files")],
    );
    assert_eq!(upload_latency.count, Some(1));
    assert_eq!(
        value(&parsed, "temper_upload_bytes_total", &[]),
        Some(content.len() as f64)
    );

    let jobs = |status| value(&parsed, "temper_fine_tuning_jobs", &[("status", status)]);
    assert_eq!(jobs("succeeded"), Some(1.0));
    assert_eq!(jobs("running"), Some(0.0));
    assert_eq!(jobs("queued"), Some(0.0));
    assert_eq!(
        value(&parsed, "temper_fine_tuning_queue_depth", &[]),
        Some(0.0)
    );
    let busy = [("worker", "0"), ("device", "cpu")];
    assert_eq!(value(&parsed, "temper_worker_busy", &busy), Some(0.0));
    // The job ended: its speed series went with it.
    let of_job = [("job_id", job_id)];
    assert_eq!(
        value(&parsed, "temper_training_step_seconds", &of_job),
        None
    );
    assert_eq!(
        value(&parsed, "temper_training_tokens_per_second", &of_job),
        None
    );

    assert_eq!(
        value(&parsed, "temper_generation_tokens_total", &[]),
        Some(completion_tokens)
    );
    // One sequence, its prompt read in one step: one step per sampled token.
    let batches = histogram(&parsed, "temper_generation_batch_sequences", &[]);
    assert_eq!(batches.count, Some(completion_tokens as u64));
    assert_eq!(batches.sum.map(|s| s.as_f64()), Some(completion_tokens));
    let first_token = histogram(
        &parsed,
        "temper_generation_time_to_first_token_seconds",
        &[],
    );
    assert_eq!(first_token.count, Some(1));
    let model = [("model", DECODER_MODEL)];
    assert!(value(&parsed, "temper_generation_tokens_per_second", &model).is_some());
    assert_eq!(
        value(&parsed, "temper_loaded_models", &[("kind", "model")]),
        Some(1.0)
    );
    let bytes = value(
        &parsed,
        "temper_loaded_model_bytes",
        &[("model", DECODER_MODEL), ("kind", "model")],
    );
    assert!(bytes.is_some_and(|b| b > 0.0), "{bytes:?}");
}

/// `field` of the outermost span of `line` that has it.
fn span_field<'a>(line: &'a Value, field: &str) -> Option<&'a str> {
    line["spans"]
        .as_array()?
        .iter()
        .find_map(|span| span[field].as_str())
}

#[tokio::test]
async fn json_logs_carry_request_and_job_ids() {
    let server = BinaryServer::spawn_with_models(
        |models| {
            temper::zoo::testing::write_tiny_bert(&models.join(BASE_MODEL), 7).expect("fixture")
        },
        &["--log-format", "json"],
    )
    .await;
    let upload = server.upload_fine_tune(sentiment_jsonl(16)).await;
    assert_eq!(upload.status().as_u16(), 200);
    let upload_request = upload.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let file: Value = upload.json().await.expect("file");
    let body = job_body(
        file["id"].as_str().expect("id"),
        json!({"n_epochs": 1, "batch_size": 8}),
    );
    let job = server.post_json("/v1/fine_tuning/jobs", Some(&body)).await;
    let job_id = job["id"].as_str().expect("id").to_string();
    let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
    loop {
        let job = server
            .get_json(&format!("/v1/fine_tuning/jobs/{job_id}"))
            .await;
        if job["status"] == "succeeded" {
            break;
        }
        assert!(job["status"] != "failed", "{job}");
        assert!(tokio::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The settled line comes after the row is written: wait for it.
    let mut log = server.log();
    for _ in 0..100 {
        if log.contains("job settled") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = server.log();
    }

    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let message = |line: &Value| {
        line["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let of_upload = lines
        .iter()
        .filter(|line| span_field(line, "request_id") == Some(upload_request.as_str()))
        .count();
    assert!(of_upload >= 1, "{log}");
    // Every line inside a request's span names the request.
    for line in &lines {
        let in_request = line["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(|s| s["name"] == "http"));
        if in_request {
            assert!(
                span_field(line, "request_id").is_some_and(|id| id.starts_with("req_")),
                "{line}"
            );
        }
    }
    // The job's lines, from the worker, its tasks and the training thread, name the job.
    let of_job: Vec<&Value> = lines
        .iter()
        .filter(|line| span_field(line, "job_id") == Some(job_id.as_str()))
        .collect();
    let job_messages: Vec<String> = of_job.iter().map(|line| message(line)).collect();
    for expected in ["claimed job", "training step", "job settled"] {
        assert!(
            job_messages.iter().any(|m| m == expected),
            "{expected}: {log}"
        );
    }
    let steps = lines.iter().filter(|line| message(line) == "training step");
    for step in steps {
        assert_eq!(span_field(step, "job_id"), Some(job_id.as_str()), "{step}");
        let thread = step["threadName"].as_str().unwrap_or_default();
        assert!(thread.starts_with("temper-"), "{step}");
    }
}
