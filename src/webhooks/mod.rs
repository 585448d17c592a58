//! webhooks: OpenAI's `fine_tuning.job.succeeded|failed|cancelled` events, POSTed to the
//! configured endpoints and signed as Standard Webhooks (`signing.rs`).
//!
//! Durable by construction: the store writes each event with the job's final state (a
//! trigger, one transaction), and the [`Deliverer`] works from those rows alone: it fans
//! new events out into one delivery per endpoint, POSTs what is due, and records each
//! attempt. A crash or restart loses nothing: an attempt not recorded as delivered is made
//! again, with the same `webhook-id` (at-least-once; receivers deduplicate on it). A failed
//! attempt is retried with exponential backoff ([`RetryPolicy`]) for three days, as OpenAI
//! retries its own. Deliveries run on their own task, a few at a time, each bounded by a
//! timeout, so a slow or dead receiver never holds back jobs or the API.

mod signing;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{WebhookConfig, WebhookSecret};
use crate::store::{DueDelivery, Store, StoreError};
use crate::telemetry::metrics::Metrics;

pub use signing::signature;

/// Deliveries in flight at once (each to any endpoint).
const MAX_IN_FLIGHT: usize = 8;
/// Due deliveries read per endpoint per round.
const BATCH: i64 = 64;

/// When a failed delivery is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failure; doubled after each further one.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// No attempt is scheduled later than this after the event.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(60 * 60),
            give_up_after: Duration::from_secs(72 * 60 * 60),
        }
    }
}

impl RetryPolicy {
    /// The time of the next attempt after `failures` failed ones (this one included), or
    /// `None` when it would fall past `give_up_after` of the event's `created_at`.
    pub fn next_attempt(&self, failures: i64, created_at: i64, now: i64) -> Option<i64> {
        let doublings = u32::try_from(failures.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let delay = self
            .first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay);
        let at = now.saturating_add(secs(delay));
        (at <= created_at.saturating_add(secs(self.give_up_after))).then_some(at)
    }
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// The outbox's worker: see the module doc.
#[derive(Clone)]
pub struct Deliverer {
    store: Store,
    urls: Vec<String>,
    secret: Option<WebhookSecret>,
    policy: RetryPolicy,
    client: reqwest::Client,
    /// Attempts and failed attempts, for `/metrics`.
    metrics: Metrics,
}

/// What one round did, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub delivered: usize,
    pub failed: usize,
}

impl Deliverer {
    /// `request_timeout` bounds one attempt, connection included.
    pub fn new(
        store: Store,
        config: &WebhookConfig,
        policy: RetryPolicy,
        request_timeout: Duration,
        metrics: Metrics,
    ) -> Result<Deliverer, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            // A redirect is the receiver's misconfiguration, not a place to resend a
            // signed event to.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("temper-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer {
            store,
            urls: config.urls.iter().map(|u| u.as_str().to_string()).collect(),
            secret: config.secret.clone(),
            policy,
            client,
            metrics,
        })
    }

    /// Rounds every `poll` until `shutdown`; an attempt cut off by shutdown is made again
    /// after the restart.
    pub async fn run(self, poll: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                round = self.round(unix_now()) => {
                    if let Err(error) = round {
                        tracing::warn!(%error, "webhook outbox round failed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Dispatches new events and makes every attempt due at `now`.
    pub async fn round(&self, now: i64) -> Result<Round, StoreError> {
        self.store.dispatch_webhook_events(&self.urls, now).await?;
        let due = self
            .store
            .due_webhook_deliveries(&self.urls, now, BATCH)
            .await?;
        let results: Vec<Result<bool, StoreError>> = futures::stream::iter(due)
            .map(|delivery| self.attempt(delivery, now))
            .buffer_unordered(MAX_IN_FLIGHT)
            .collect()
            .await;
        let mut round = Round::default();
        for result in results {
            if result? {
                round.delivered += 1;
            } else {
                round.failed += 1;
            }
        }
        Ok(round)
    }

    /// One POST; records its outcome. True when the receiver took it.
    async fn attempt(&self, delivery: DueDelivery, now: i64) -> Result<bool, StoreError> {
        let outcome = self.post(&delivery, now).await;
        self.metrics.webhook_attempted();
        let (event, url) = (&delivery.event_id, &delivery.url);
        match outcome {
            Ok(()) => {
                self.store.webhook_delivered(event, url, unix_now()).await?;
                tracing::info!(event_id = %event, %url, job_id = %delivery.job_id, "webhook delivered");
                Ok(true)
            }
            Err(error) => {
                self.metrics.webhook_attempt_failed();
                let failures = delivery.attempts.saturating_add(1);
                let retry_at = self.policy.next_attempt(failures, delivery.created_at, now);
                tracing::warn!(event_id = %event, %url, %error, failures, ?retry_at, "webhook delivery failed");
                self.store
                    .webhook_attempt_failed(event, url, &error, retry_at, now)
                    .await?;
                Ok(false)
            }
        }
    }

    async fn post(&self, delivery: &DueDelivery, now: i64) -> Result<(), String> {
        let body = event_body(delivery);
        let mut request = self
            .client
            .post(&delivery.url)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.event_id)
            .header("webhook-timestamp", now.to_string());
        if let Some(secret) = &self.secret {
            request = request.header(
                "webhook-signature",
                signature(secret, &delivery.event_id, now, &body),
            );
        }
        let response = request.body(body).send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {status}"))
        }
    }
}

/// OpenAI's webhook event object.
pub fn event_body(delivery: &DueDelivery) -> Vec<u8> {
    json!({
        "id": delivery.event_id,
        "object": "event",
        "type": delivery.event_type,
        "created_at": delivery.created_at,
        "data": {"id": delivery.job_id},
    })
    .to_string()
    .into_bytes()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(secs)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
