//! The web dashboard: a page at `/` and its assets under `/dashboard/` (embedded in the
//! binary, so nothing is read from disk or built at run time; they need no key), and the
//! data routes the page polls under `/v1/dashboard/` (behind the API keys like all of
//! `/v1`). The data routes are views through `jobs::JobService`, never a second copy of
//! the job rules; the page's actions (cancel, pause, resume, uploads, deletes, the
//! playground) call the OpenAI routes.
//!
//! The assets live in `dashboard/` at the repository root; uPlot (MIT, its licence served
//! beside it) is vendored from npm's `uplot@1.6.32` unchanged.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use super::error::{echo, ApiError, ApiJson};
use super::job_wire::{CheckpointObject, EventObject, JobObject};
use super::AppState;
use crate::jobs::{AllowedActions, JobProgress, JobReport, MetricSeries, VIEW_EVENTS, VIEW_JOBS};

pub const ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/"),
    (Method::GET, "/dashboard/{asset}"),
    (Method::GET, "/v1/dashboard/jobs"),
    (Method::GET, "/v1/dashboard/jobs/{id}"),
];

/// The page; everything else it needs comes from [`ASSETS`].
pub const INDEX_HTML: &str = include_str!("../../dashboard/index.html");

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// `/dashboard/<name>`: `(name, content type, bytes)`.
pub const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", JAVASCRIPT, include_str!("../../dashboard/app.js")),
    (
        "common.js",
        JAVASCRIPT,
        include_str!("../../dashboard/common.js"),
    ),
    ("job.js", JAVASCRIPT, include_str!("../../dashboard/job.js")),
    (
        "pages.js",
        JAVASCRIPT,
        include_str!("../../dashboard/pages.js"),
    ),
    ("app.css", CSS, include_str!("../../dashboard/app.css")),
    (
        "uPlot.iife.min.js",
        JAVASCRIPT,
        include_str!("../../dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        CSS,
        include_str!("../../dashboard/vendor/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        TEXT,
        include_str!("../../dashboard/vendor/uPlot.LICENSE"),
    ),
];

/// The page loads only its own scripts and talks only to this server; uPlot sets inline
/// styles, hence `'unsafe-inline'` for styles (never for scripts).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/dashboard/{asset}", get(asset))
}

/// The data routes, merged under the `/v1` key check.
pub fn data_router() -> Router<AppState> {
    Router::new()
        .route("/v1/dashboard/jobs", get(list_jobs))
        .route("/v1/dashboard/jobs/{id}", get(job_view))
}

/// `no-cache`: the assets change with the binary, and revalidating costs one request.
fn static_response(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn index() -> Response {
    let mut response = static_response(HTML, INDEX_HTML);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(asset, _, _)| *asset == name)
        .map(|(_, content_type, body)| static_response(content_type, body))
        .ok_or_else(|| {
            ApiError::not_found(format!("No dashboard asset `{}`.", echo(&name)))
                .with_param("asset")
        })
}

#[derive(Debug, Serialize)]
struct JobListItem {
    job: JobObject,
    progress: Option<JobProgress>,
}

#[derive(Debug, Serialize)]
struct JobList {
    object: &'static str,
    data: Vec<JobListItem>,
    /// Older jobs exist beyond the newest [`VIEW_JOBS`].
    has_more: bool,
    limit: i64,
}

/// The newest jobs with their progress, for the jobs page.
async fn list_jobs(State(state): State<AppState>) -> Result<ApiJson<JobList>, ApiError> {
    let list = state.jobs.list_view().await?;
    let data = list
        .jobs
        .into_iter()
        .map(|summary| JobListItem {
            job: summary.job.into(),
            progress: summary.progress,
        })
        .collect();
    Ok(ApiJson(JobList {
        object: "list",
        data,
        has_more: list.has_more,
        limit: VIEW_JOBS,
    }))
}

#[derive(Debug, Serialize)]
struct JobViewObject {
    job: JobObject,
    /// Which control buttons the job's status allows.
    actions: AllowedActions,
    progress: Option<JobProgress>,
    /// Every metrics event of the job, as columns against `steps`.
    metrics: MetricSeries,
    checkpoints: Vec<CheckpointObject>,
    /// The newest events, newest first (at most `events_limit`).
    events: Vec<EventObject>,
    events_limit: i64,
    report: Option<JobReport>,
}

/// One job with its whole training curve, for the job page (polled while it runs).
async fn job_view(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<JobViewObject>, ApiError> {
    let view = state.jobs.view(&id, &state.blobs).await?;
    Ok(ApiJson(JobViewObject {
        job: view.job.into(),
        actions: view.actions,
        progress: view.progress,
        metrics: view.metrics,
        checkpoints: view.checkpoints.into_iter().map(Into::into).collect(),
        events: view.events.into_iter().map(Into::into).collect(),
        events_limit: VIEW_EVENTS,
        report: view.report,
    }))
}
