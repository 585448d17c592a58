//! The registry as a scraper reads it: each test renders, parses the text with a Prometheus
//! parser and checks the numbers.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use super::scrape::{bucket, histogram, parse, value, Series};
use super::*;

/// The Prometheus text of `metrics` after `snapshot`, parsed.
fn scrape(metrics: &Metrics, snapshot: &Snapshot) -> Vec<Series> {
    parse(&metrics.render(snapshot, Format::Prometheus).unwrap())
}

fn snapshot() -> Snapshot {
    Snapshot {
        jobs: Some(JobCounts {
            by_status: vec![(JobStatus::Running, 1), (JobStatus::Queued, 3)],
            waiting: 2,
        }),
        workers: vec![
            WorkerState {
                index: 0,
                device: "cpu".into(),
                busy: true,
            },
            WorkerState {
                index: 1,
                device: "cpu".into(),
                busy: false,
            },
        ],
        loaded: vec![
            LoadedModel {
                name: "ft:base:temper::a1".into(),
                kind: "model",
                bytes: 1000,
            },
            LoadedModel {
                name: "ft:base:temper::b2".into(),
                kind: "adapter",
                bytes: 20,
            },
        ],
    }
}

#[test]
fn scrape_time_gauges_follow_the_snapshot() {
    let metrics = Metrics::new();
    let parsed = scrape(&metrics, &snapshot());
    let jobs = |status| value(&parsed, "temper_fine_tuning_jobs", &[("status", status)]);
    assert_eq!(jobs("running"), Some(1.0));
    assert_eq!(jobs("queued"), Some(3.0));
    // Every status is exported, 0 without jobs.
    assert_eq!(jobs("succeeded"), Some(0.0));
    assert_eq!(jobs("validating_files"), Some(0.0));
    let statuses = parsed
        .iter()
        .filter(|s| s.name == "temper_fine_tuning_jobs")
        .count();
    assert_eq!(statuses, JobStatus::ALL.len());
    assert_eq!(
        value(&parsed, "temper_fine_tuning_queue_depth", &[]),
        Some(2.0)
    );
    let busy = |worker| value(&parsed, "temper_worker_busy", &[("worker", worker)]);
    assert_eq!((busy("0"), busy("1")), (Some(1.0), Some(0.0)));
    let loaded = |kind| value(&parsed, "temper_loaded_models", &[("kind", kind)]);
    assert_eq!((loaded("model"), loaded("adapter")), (Some(1.0), Some(1.0)));
    let bytes = |model| value(&parsed, "temper_loaded_model_bytes", &[("model", model)]);
    assert_eq!(bytes("ft:base:temper::a1"), Some(1000.0));
    assert_eq!(bytes("ft:base:temper::b2"), Some(20.0));

    // The next scrape shows only what is loaded now, and no jobs when the store is down.
    let mut later = snapshot();
    later.jobs = None;
    later.loaded.truncate(1);
    let parsed = scrape(&metrics, &later);
    assert_eq!(
        value(&parsed, "temper_fine_tuning_jobs", &[("status", "running")]),
        None
    );
    assert_eq!(value(&parsed, "temper_fine_tuning_queue_depth", &[]), None);
    let bytes = |model| value(&parsed, "temper_loaded_model_bytes", &[("model", model)]);
    assert_eq!(bytes("ft:base:temper::a1"), Some(1000.0));
    assert_eq!(bytes("ft:base:temper::b2"), None);
    assert_eq!(
        value(&parsed, "temper_loaded_models", &[("kind", "adapter")]),
        Some(0.0)
    );
}

#[test]
fn counters_add_up() {
    let metrics = Metrics::new();
    metrics.uploaded(100);
    metrics.uploaded(23);
    metrics.webhook_attempted();
    metrics.webhook_attempted();
    metrics.webhook_attempt_failed();
    let parsed = scrape(&metrics, &Snapshot::default());
    assert_eq!(
        value(&parsed, "temper_upload_bytes_total", &[]),
        Some(123.0)
    );
    assert_eq!(
        value(&parsed, "temper_webhook_deliveries_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        value(&parsed, "temper_webhook_delivery_failures_total", &[]),
        Some(1.0)
    );
}

#[test]
fn requests_are_counted_by_route_template_and_status_with_latency_buckets() {
    let metrics = Metrics::new();
    let http = metrics.http();
    let job = "/v1/fine_tuning/jobs/{id}";
    http.observe("GET", Some(job), 200, Duration::from_millis(3));
    http.observe("GET", Some(job), 200, Duration::from_millis(30));
    http.observe("GET", Some(job), 404, Duration::from_millis(300));
    http.observe("GET", None, 404, Duration::from_millis(1));
    http.observe("BREW", None, 404, Duration::from_millis(1));
    let parsed = scrape(&metrics, &Snapshot::default());
    let requests = |method, route, status| {
        value(
            &parsed,
            "temper_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("GET", job, "200"), Some(2.0));
    assert_eq!(requests("GET", job, "404"), Some(1.0));
    assert_eq!(requests("GET", UNMATCHED_ROUTE, "404"), Some(1.0));
    assert_eq!(requests("other", UNMATCHED_ROUTE, "404"), Some(1.0));
    let latency = histogram(
        &parsed,
        "temper_http_request_duration_seconds",
        &[("method", "GET"), ("route", job)],
    );
    assert_eq!(bucket(&latency, 0.005), 1.0);
    assert_eq!(bucket(&latency, 0.05), 2.0);
    assert_eq!(bucket(&latency, 0.25), 2.0);
    assert_eq!(bucket(&latency, 0.5), 3.0);
    assert_eq!(bucket(&latency, f64::INFINITY), 3.0);
    assert_eq!(latency.count, Some(3));
    let unmatched = histogram(
        &parsed,
        "temper_http_request_duration_seconds",
        &[("method", "GET"), ("route", UNMATCHED_ROUTE)],
    );
    assert_eq!(unmatched.count, Some(1));
}

#[test]
fn training_gauges_measure_between_steps_and_go_with_the_job() {
    let metrics = Metrics::new();
    let start = Instant::now();
    let mut job = metrics.training().job("ftjob-1");
    job.step_at(start, 500);
    let parsed = scrape(&metrics, &Snapshot::default());
    let label = [("job_id", "ftjob-1")];
    // The first report only sets the mark.
    assert_eq!(value(&parsed, "temper_training_step_seconds", &label), None);
    job.step_at(start + Duration::from_millis(2500), 1500);
    let parsed = scrape(&metrics, &Snapshot::default());
    assert_eq!(
        value(&parsed, "temper_training_step_seconds", &label),
        Some(2.5)
    );
    assert_eq!(
        value(&parsed, "temper_training_tokens_per_second", &label),
        Some(400.0)
    );
    drop(job);
    let parsed = scrape(&metrics, &Snapshot::default());
    assert_eq!(value(&parsed, "temper_training_step_seconds", &label), None);
    assert_eq!(
        value(&parsed, "temper_training_tokens_per_second", &label),
        None
    );
}

#[test]
fn generation_records_tokens_batches_and_first_tokens_per_engine() {
    let metrics = Metrics::new();
    let engine = metrics.generation().engine("tiny");
    let label = [("model", "tiny")];
    let parsed = scrape(&metrics, &Snapshot::default());
    assert_eq!(
        value(&parsed, "temper_generation_tokens_per_second", &label),
        Some(0.0)
    );
    engine.step(3, 2, Duration::from_millis(40));
    engine.step(1, 1, Duration::from_millis(10));
    engine.first_token(Duration::from_millis(20));
    let parsed = scrape(&metrics, &Snapshot::default());
    assert_eq!(
        value(&parsed, "temper_generation_tokens_total", &[]),
        Some(3.0)
    );
    assert_eq!(
        value(&parsed, "temper_generation_tokens_per_second", &label),
        Some(100.0)
    );
    let batches = histogram(&parsed, "temper_generation_batch_sequences", &[]);
    assert_eq!(bucket(&batches, 1.0), 1.0);
    assert_eq!(bucket(&batches, 2.0), 1.0);
    assert_eq!(bucket(&batches, 4.0), 2.0);
    assert_eq!(batches.sum.map(|s| s.as_f64()), Some(4.0));
    let first_token = histogram(
        &parsed,
        "temper_generation_time_to_first_token_seconds",
        &[],
    );
    assert_eq!(first_token.count, Some(1));
    assert_eq!(bucket(&first_token, 0.01), 0.0);
    assert_eq!(bucket(&first_token, 0.025), 1.0);
    engine.idle();
    let parsed = scrape(&metrics, &Snapshot::default());
    assert_eq!(
        value(&parsed, "temper_generation_tokens_per_second", &label),
        Some(0.0)
    );
    drop(engine);
    let parsed = scrape(&metrics, &Snapshot::default());
    assert_eq!(
        value(&parsed, "temper_generation_tokens_per_second", &label),
        None
    );
}

#[test]
fn openmetrics_is_served_to_scrapers_that_ask_for_it() {
    assert_eq!(Format::from_accept(None), Format::Prometheus);
    assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
    let prometheus_accept =
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
    assert_eq!(
        Format::from_accept(Some(prometheus_accept)),
        Format::OpenMetrics
    );
    let metrics = Metrics::new();
    metrics.uploaded(5);
    let text = metrics
        .render(&Snapshot::default(), Format::OpenMetrics)
        .unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    // (openmetrics-parser's OpenMetrics side refuses a unit on a histogram, which
    // Prometheus's own parser takes: only the Prometheus text is parsed in these tests.)
    assert!(
        text.contains("\n# TYPE temper_upload_bytes counter\n"),
        "{text}"
    );
    assert!(text.contains("\ntemper_upload_bytes_total 5\n"), "{text}");
    let text = metrics
        .render(&Snapshot::default(), Format::Prometheus)
        .unwrap();
    assert!(!text.contains("# EOF"), "{text}");
    assert!(
        text.contains("# TYPE temper_upload_bytes_total counter"),
        "{text}"
    );
}
