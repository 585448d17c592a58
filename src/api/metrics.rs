//! `GET /metrics`: the service's Prometheus metrics (`telemetry::metrics`), outside the API
//! keys like `/health`: scrapers are configured once per deployment, and the labels name
//! nothing secret (routes, statuses, devices, job ids, model names). Jobs by status are
//! one `GROUP BY` on the store per scrape; workers and loaded models are read from memory.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::wire::unix_now;
use super::{ApiError, AppState};
use crate::telemetry::metrics::{Format, JobCounts, Snapshot};

pub(super) const ROUTES: &[(Method, &str)] = &[(Method::GET, "/metrics")];

/// A scrape's usual deadline is 10 s; the job counts give up well before it, and the rest
/// of the metrics are served without them.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let snapshot = Snapshot {
        jobs: job_counts(&state).await,
        workers: state.workers.workers(),
        loaded: state.inference.loaded_models(),
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    let body = state
        .metrics
        .render(&snapshot, format)
        .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

/// The store's job counts, or `None` (logged) when it does not answer in time.
async fn job_counts(state: &AppState) -> Option<JobCounts> {
    match tokio::time::timeout(STORE_TIMEOUT, state.store.job_counts(unix_now())).await {
        Ok(Ok(counts)) => Some(counts),
        Ok(Err(error)) => {
            tracing::warn!(%error, "counting jobs for /metrics failed; job gauges left out");
            None
        }
        Err(_) => {
            tracing::warn!(
                "counting jobs for /metrics took over {} s; job gauges left out",
                STORE_TIMEOUT.as_secs()
            );
            None
        }
    }
}
