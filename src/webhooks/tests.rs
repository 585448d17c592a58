//! The deliverer against a receiver on 127.0.0.1:0 that refuses its first requests. Rounds
//! take the clock as an argument, so retries are tested without waiting.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use super::*;
use crate::store::{ControlAction, EventRow, JobRow};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A receiver that answers 503 to its first `refuse` requests, then 204.
async fn receiver(refuse: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let log = seen.clone();
    let app = Router::new().route(
        "/hooks",
        post(move |headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                let mut log = log.lock().unwrap();
                log.push(Received { headers, body });
                if log.len() <= refuse {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

async fn cancelled_job(store: &Store, id: &str, at: i64) {
    let job = JobRow::new(id.into(), "org/m".into(), "file-t".into(), 1, at);
    store
        .create_job(&job, &EventRow::info(id, "created", at))
        .await
        .unwrap();
    let event = EventRow::info(id, "Fine-tuning job cancelled", at);
    store
        .request_control(id, ControlAction::Cancel, &event, at)
        .await
        .unwrap();
}

fn deliverer(store: &Store, urls: &[&str], policy: RetryPolicy) -> Deliverer {
    deliverer_recording(store, urls, policy, Metrics::new())
}

fn deliverer_recording(
    store: &Store,
    urls: &[&str],
    policy: RetryPolicy,
    metrics: Metrics,
) -> Deliverer {
    let config = WebhookConfig {
        urls: urls.iter().map(|u| u.parse().unwrap()).collect(),
        secret: Some(SECRET.parse().unwrap()),
    };
    Deliverer::new(
        store.clone(),
        &config,
        policy,
        Duration::from_secs(5),
        metrics,
    )
    .unwrap()
}

fn header<'a>(received: &'a Received, name: &str) -> &'a str {
    received.headers.get(name).unwrap().to_str().unwrap()
}

#[tokio::test]
async fn a_refused_event_is_retried_with_backoff_under_the_same_id_and_signed_each_time() {
    let store = Store::open_in_memory().await.unwrap();
    let (url, seen) = receiver(2).await;
    cancelled_job(&store, "ftjob-a", 1_000).await;
    let metrics = Metrics::new();
    let webhooks = deliverer_recording(&store, &[&url], RetryPolicy::default(), metrics.clone());

    let first = webhooks.round(1_000).await.unwrap();
    assert_eq!(
        first,
        Round {
            delivered: 0,
            failed: 1
        }
    );
    // Backoff: 5 s after the first failure, then 10 s after the second.
    assert_eq!(webhooks.round(1_004).await.unwrap(), Round::default());
    assert_eq!(webhooks.round(1_005).await.unwrap().failed, 1);
    assert_eq!(webhooks.round(1_014).await.unwrap(), Round::default());
    assert_eq!(webhooks.round(1_015).await.unwrap().delivered, 1);
    assert_eq!(webhooks.round(5_000).await.unwrap(), Round::default());

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let id = header(&seen[0], "webhook-id").to_string();
    let secret: WebhookSecret = SECRET.parse().unwrap();
    for (received, at) in seen.iter().zip([1_000, 1_005, 1_015]) {
        assert_eq!(header(received, "webhook-id"), id);
        assert_eq!(header(received, "webhook-timestamp"), at.to_string());
        assert_eq!(
            header(received, "webhook-signature"),
            signature(&secret, &id, at, &received.body)
        );
        assert_eq!(header(received, "content-type"), "application/json");
        let body: Value = serde_json::from_slice(&received.body).unwrap();
        assert_eq!(
            body,
            json!({"id": id, "object": "event", "type": "fine_tuning.job.cancelled",
                   "created_at": 1_000, "data": {"id": "ftjob-a"}})
        );
    }
    let counts = store.webhook_delivery_counts().await.unwrap();
    assert_eq!((counts.delivered, counts.pending), (1, 0));
    let scrape = metrics
        .render(
            &Default::default(),
            crate::telemetry::metrics::Format::Prometheus,
        )
        .unwrap();
    assert!(
        scrape.contains("\ntemper_webhook_deliveries_total 3\n"),
        "{scrape}"
    );
    assert!(
        scrape.contains("\ntemper_webhook_delivery_failures_total 2\n"),
        "{scrape}"
    );
}

#[tokio::test]
async fn retries_stop_after_the_policy_gives_up() {
    let store = Store::open_in_memory().await.unwrap();
    let (url, seen) = receiver(usize::MAX).await;
    cancelled_job(&store, "ftjob-a", 1_000).await;
    let policy = RetryPolicy {
        first_delay: Duration::from_secs(10),
        max_delay: Duration::from_secs(20),
        give_up_after: Duration::from_secs(45),
    };
    let webhooks = deliverer(&store, &[&url], policy);
    // Attempts at 0, +10, +30 (20 capped), the next would be +50 > 45: abandoned.
    for now in [1_000, 1_010, 1_030] {
        assert_eq!(webhooks.round(now).await.unwrap().failed, 1, "at {now}");
    }
    assert_eq!(webhooks.round(1_050).await.unwrap(), Round::default());
    assert_eq!(seen.lock().unwrap().len(), 3);
    let counts = store.webhook_delivery_counts().await.unwrap();
    assert_eq!((counts.abandoned, counts.pending), (1, 0));
}

#[tokio::test]
async fn a_dead_receiver_does_not_hold_back_a_live_one() {
    let store = Store::open_in_memory().await.unwrap();
    let (live, seen) = receiver(0).await;
    // Nothing listens there once the listener is dropped: connection refused.
    let dead = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}/hooks", listener.local_addr().unwrap())
    };
    cancelled_job(&store, "ftjob-a", 1_000).await;
    cancelled_job(&store, "ftjob-b", 1_001).await;
    let webhooks = deliverer(&store, &[&dead, &live], RetryPolicy::default());
    let round = webhooks.round(1_002).await.unwrap();
    assert_eq!(
        round,
        Round {
            delivered: 2,
            failed: 2
        }
    );
    let mut jobs: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["data"]["id"].to_string())
        .collect();
    jobs.sort();
    assert_eq!(jobs, ["\"ftjob-a\"", "\"ftjob-b\""]);
}

#[tokio::test]
async fn a_receiver_that_never_answers_costs_one_timeout_and_a_retry() {
    let store = Store::open_in_memory().await.unwrap();
    // Accepts connections and reads nothing: the request hangs until the client gives up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    cancelled_job(&store, "ftjob-a", 1_000).await;
    let config = WebhookConfig {
        urls: vec![url.parse().unwrap()],
        secret: Some(SECRET.parse().unwrap()),
    };
    let policy = RetryPolicy::default();
    let timeout = Duration::from_millis(200);
    let webhooks = Deliverer::new(store.clone(), &config, policy, timeout, Metrics::new()).unwrap();
    assert_eq!(
        webhooks.round(1_000).await.unwrap(),
        Round {
            delivered: 0,
            failed: 1
        }
    );
    let retry = store
        .due_webhook_deliveries(&[url], 1_005, 10)
        .await
        .unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].attempts, 1);
    held.abort();
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let policy = RetryPolicy::default();
    let delays: Vec<i64> = (1..=12)
        .map(|failures| policy.next_attempt(failures, 0, 0).unwrap())
        .collect();
    assert_eq!(
        delays,
        [5, 10, 20, 40, 80, 160, 320, 640, 1_280, 2_560, 3_600, 3_600]
    );
    // Three days after the event, no further attempt.
    assert_eq!(
        policy.next_attempt(40, 0, 72 * 3_600 - 3_600),
        Some(72 * 3_600)
    );
    assert_eq!(policy.next_attempt(40, 0, 72 * 3_600 - 3_599), None);
}
