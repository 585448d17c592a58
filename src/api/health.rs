//! Health probes for people and container orchestrators, outside the API keys:
//! `/health/live` answers while the process serves HTTP at all (liveness: restart it when
//! this stops answering); `/health/ready` and `/health` answer 200 only while the store
//! answers a query and every task of the worker pool still runs (readiness: send traffic),
//! 503 otherwise, with what failed in the JSON. Each probe is one `SELECT 1` at most.

use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

pub(super) const ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/health"),
    (Method::GET, "/health/live"),
    (Method::GET, "/health/ready"),
];

/// Longer than any query the store answers when well (a busy SQLite waits for its lock
/// up to its own timeout), short enough for a probe's deadline.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(ready))
        .route("/health/ready", get(ready))
        .route("/health/live", get(live))
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(state): State<AppState>) -> Response {
    let store = match tokio::time::timeout(STORE_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => json!({ "status": "ok" }),
        Ok(Err(error)) => json!({ "status": "error", "error": error.to_string() }),
        Err(_) => json!({
            "status": "error",
            "error": format!("no answer in {} s", STORE_TIMEOUT.as_secs()),
        }),
    };
    let (started, running) = state.workers.counts();
    let workers_ok = state.workers.all_running();
    let workers = json!({
        "status": if workers_ok { "ok" } else { "error" },
        "tasks": started,
        "running": running,
    });
    let ready = workers_ok && store["status"] == "ok";
    let (code, status) = match ready {
        true => (StatusCode::OK, "ok"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let body = json!({ "status": status, "store": store, "workers": workers });
    (code, Json(body)).into_response()
}
