//! The HTTP layer: OpenAI's files, fine-tuning, models, chat completions and completions
//! routes plus `/v1/classifications`, over axum.
//!
//! # Layout
//! - `error.rs`: the one `ApiError` (OpenAI envelope) and `ApiJson`/`ApiQuery` extractors.
//! - `middleware.rs`: bearer-key auth, request ids and request metrics.
//! - `inference.rs`: the narrow `Inference` trait handlers call (app wires `infer`).
//! - `files.rs`, `jobs.rs` (+ `job_wire.rs`, `job_request.rs`, `download.rs`), `estimates.rs`, `models.rs`,
//!   `classify.rs`, `chat.rs`, `completions.rs` (+ `generation.rs`, what the two share):
//!   one `router()` per resource; handlers extract, validate into a domain type, call a
//!   handle, map to a wire type.
//! - `health.rs`: `/health`, `/health/live`, `/health/ready` (store and worker pool checks).
//! - `metrics.rs`: `/metrics` (Prometheus text, `telemetry::metrics`).
//! - `dashboard.rs`: the web dashboard at `/` (assets embedded from `dashboard/`) and its
//!   data routes `/v1/dashboard/jobs[/{id}]`, views through `jobs::JobService`.
//! - `wire.rs`: shared wire helpers (list envelope, pagination limits, clock).
//! - [`limits`]: every number `openapi.yaml` states, re-exported from where it is enforced.
//!
//! Layer order (outermost first): request id, trace, body limit, request metrics (by
//! matched route), then routes; auth is a route layer on `/v1` so unknown paths still get
//! the 404 envelope. `/health/*`, `/metrics` and `/openapi.yaml` (the committed contract,
//! embedded at build time) need no key, nor do the dashboard's page and assets (its data
//! routes are under `/v1`).

mod adapters;
mod chat;
mod classify;
mod completions;
mod dashboard;
mod download;
pub mod error;
mod estimates;
mod files;
mod generation;
mod health;
pub mod inference;
mod job_request;
mod job_wire;
mod jobs;
mod metrics;
mod middleware;
mod models;
mod question_answering;
#[cfg(test)]
mod tests;
mod token_classification;
mod wire;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, Method};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::blobs::Blobs;
use crate::config::ApiKey;
use crate::jobs::{JobService, WorkerLiveness};
use crate::store::Store;
use crate::telemetry::metrics::Metrics;

pub use error::{ApiError, ApiJson};
pub use inference::{ArtifactFormat, ExportRequest, Inference};

/// What handlers share. Cheap to clone: every field is a handle or an `Arc`.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub blobs: Blobs,
    pub inference: Arc<dyn Inference>,
    /// The rules of creating and steering jobs, shared with every other front end.
    pub jobs: JobService,
    /// The worker pool's tasks, for `/health`, and its busy workers, for `/metrics`.
    pub workers: WorkerLiveness,
    pub settings: Arc<ApiSettings>,
    /// What `/metrics` serves; handlers count uploads into it.
    pub metrics: Metrics,
}

/// The parts of the configuration handlers read.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Empty: no authentication.
    pub api_keys: Vec<ApiKey>,
    pub max_upload_bytes: u64,
    /// Where base models are resolved (`basemodels::resolve`).
    pub models_dir: PathBuf,
}

/// JSON bodies (job creation, classification batches) are far smaller than uploads; a
/// larger one is a 413 `request_too_large`.
pub const JSON_BODY_LIMIT_BYTES: usize = 32 * 1024 * 1024;

/// The numbers `openapi.yaml` states (page sizes, list lengths, ranges), re-exported from
/// the code that enforces them so the e2e suite can compare the two.
pub mod limits {
    pub use super::chat::MAX_TOP_LOGPROBS as CHAT_MAX_TOP_LOGPROBS;
    pub use super::classify::MAX_IMAGE_INPUTS as CLASSIFY_MAX_IMAGE_INPUTS;
    pub use super::classify::MAX_INPUTS as CLASSIFY_MAX_INPUTS;
    pub use super::completions::MAX_LOGPROBS as COMPLETION_MAX_LOGPROBS;
    pub use super::generation::{MAX_N, MAX_STOP};
    pub use super::job_request::{
        MAX_METADATA_KEY_CHARS, MAX_METADATA_PAIRS, MAX_METADATA_VALUE_CHARS, MAX_SEED,
    };
    pub use super::question_answering::MAX_QUESTIONS as QA_MAX_QUESTIONS;
    pub use super::token_classification::MAX_INPUTS as TOKEN_CLASSIFY_MAX_INPUTS;
    pub use super::wire::{PageLimits, CHECKPOINTS_PAGE, EVENTS_PAGE, FILES_PAGE, JOBS_PAGE};
    pub use crate::domain::model_name::MAX_SUFFIX_LEN;
}

/// OpenAI's objects as the handlers write them; the client subcommands (`crate::cli`) read
/// replies into the same types, so a renamed field breaks the build rather than the CLI.
pub mod objects {
    pub use super::files::FileObject;
    pub use super::job_wire::{CheckpointObject, EventObject, JobObject};
    pub use super::models::ModelObject;
}

/// The contract, as committed; served at `GET /openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// Multipart framing around the file; the file itself is limited by `max_upload_bytes`.
const MULTIPART_OVERHEAD_BYTES: u64 = 1024 * 1024;

/// Every route we serve, as `(method, path)` in axum's syntax; `openapi.yaml` must list the
/// same set (checked by the e2e suite).
pub fn routes() -> Vec<(Method, &'static str)> {
    let mut all = vec![(Method::GET, "/openapi.yaml")];
    all.extend(health::ROUTES.iter().cloned());
    all.extend(metrics::ROUTES.iter().cloned());
    all.extend(dashboard::ROUTES.iter().cloned());
    all.extend(files::ROUTES.iter().cloned());
    all.extend(jobs::ROUTES.iter().cloned());
    all.extend(estimates::ROUTES.iter().cloned());
    all.extend(models::ROUTES.iter().cloned());
    all.extend(adapters::ROUTES.iter().cloned());
    all.extend(classify::ROUTES.iter().cloned());
    all.extend(question_answering::ROUTES.iter().cloned());
    all.extend(token_classification::ROUTES.iter().cloned());
    all.extend(chat::ROUTES.iter().cloned());
    all.extend(completions::ROUTES.iter().cloned());
    all
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let upload_limit = state
        .settings
        .max_upload_bytes
        .saturating_add(MULTIPART_OVERHEAD_BYTES);
    let v1 = Router::new()
        .merge(files::router().layer(DefaultBodyLimit::max(
            usize::try_from(upload_limit).unwrap_or(usize::MAX),
        )))
        .merge(jobs::router())
        .merge(estimates::router())
        .merge(models::router())
        .merge(adapters::router())
        .merge(classify::router())
        .merge(question_answering::router())
        .merge(token_classification::router())
        .merge(chat::router())
        .merge(completions::router())
        .merge(dashboard::data_router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_api_key,
        ));
    Router::new()
        .merge(health::router())
        .merge(metrics::router())
        .merge(dashboard::router())
        .route("/openapi.yaml", get(openapi_document))
        .merge(v1)
        .fallback(unknown_route)
        // Innermost, so the matched route is known (`Router::layer` wraps each route).
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.http(),
            middleware::record_request,
        ))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT_BYTES))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(middleware::http_span)
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(middleware::RandomRequestId))
        .with_state(state)
}

async fn openapi_document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "Invalid URL ({method} {}).",
        error::echo(uri.path())
    ))
    .with_code("unknown_url")
}
