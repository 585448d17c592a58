//! `/v1/fine_tuning/jobs`: create, list, retrieve, cancel/pause/resume, events,
//! checkpoints: wire translation only; the rules are `jobs::JobService`'s. Downloads live
//! in `download.rs`.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::Method;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::error::{echo, ApiError, ApiJson, ApiQuery};
use super::job_request::{parse_create, CreateJobBody};
use super::job_wire::{CheckpointObject, EventObject, JobObject};
use super::wire::{
    page_limit, unix_now, ListResponse, PageLimits, CHECKPOINTS_PAGE, EVENTS_PAGE, JOBS_PAGE,
};
use super::{download, AppState};
use crate::jobs::{JobError, JobFailure};
use crate::store::{ControlAction, JobRow};

pub const ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/v1/fine_tuning/jobs"),
    (Method::GET, "/v1/fine_tuning/jobs"),
    (Method::GET, "/v1/fine_tuning/jobs/{id}"),
    (Method::POST, "/v1/fine_tuning/jobs/{id}/cancel"),
    (Method::POST, "/v1/fine_tuning/jobs/{id}/pause"),
    (Method::POST, "/v1/fine_tuning/jobs/{id}/resume"),
    (Method::GET, "/v1/fine_tuning/jobs/{id}/events"),
    (Method::GET, "/v1/fine_tuning/jobs/{id}/checkpoints"),
    (Method::GET, "/v1/fine_tuning/jobs/{id}/download"),
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/fine_tuning/jobs", get(list_jobs).post(create_job))
        .route("/v1/fine_tuning/jobs/{id}", get(retrieve_job))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/fine_tuning/jobs/{id}/pause", post(pause_job))
        .route("/v1/fine_tuning/jobs/{id}/resume", post(resume_job))
        .route("/v1/fine_tuning/jobs/{id}/events", get(list_events))
        .route(
            "/v1/fine_tuning/jobs/{id}/checkpoints",
            get(list_checkpoints),
        )
        .route(
            "/v1/fine_tuning/jobs/{id}/download",
            get(download::download),
        )
}

pub fn no_such_job(id: &str) -> ApiError {
    ApiError::not_found(format!("No such FineTuningJob object: {}", echo(id))).with_param("id")
}

/// The job row, or 404 naming `id`.
pub async fn existing_job(state: &AppState, id: &str) -> Result<JobRow, ApiError> {
    Ok(state.jobs.get(id).await?)
}

impl From<JobError> for ApiError {
    /// OpenAI's texts and codes for the service's refusals; user input echoed shortened.
    fn from(error: JobError) -> ApiError {
        match error {
            JobError::NoSuchJob(id) => no_such_job(&id),
            JobError::NoSuchFile { id, param } => {
                ApiError::not_found(format!("No such File object: {}", echo(&id))).with_param(param)
            }
            JobError::WrongFilePurpose { id, purpose, param } => ApiError::bad_request(format!(
                "File {id} has purpose '{purpose}'; files used for fine-tuning must be uploaded with purpose 'fine-tune'."
            ))
            .with_param(param)
            .with_code("invalid_file_purpose"),
            JobError::InvalidFile { id, details, param } => ApiError::bad_request(format!(
                "File {id} is not a valid training file: {details}"
            ))
            .with_param(param)
            .with_code(format!("invalid_{param}")),
            JobError::BaseModelNotFound { model, hint } => {
                ApiError::model_not_found_with_hint(&model, &hint)
            }
            JobError::FineTunedStart(model) => ApiError::bad_request(format!(
                "Model {} is a fine-tuned model; continuing supervised fine-tuning from a fine-tuned model is not supported yet (a `dpo` job can start from one). Use its base model.",
                echo(&model)
            ))
            .with_param("model")
            .with_code("model_not_available"),
            JobError::FineTunedModelNotFound(model) => ApiError::model_not_found(&model),
            JobError::NotAChatModel { model, kind } => ApiError::bad_request(format!(
                "Model {} is a {kind} model; DPO tunes chat models.",
                echo(&model)
            ))
            .with_param("model")
            .with_code("invalid_model"),
            JobError::Spec(spec) => spec.into(),
            // Never 409: the SDK would retry it.
            JobError::NotAllowed { id, verb, status } => ApiError::bad_request(format!(
                "Cannot {verb} job {}: its status is `{status}`.",
                echo(&id)
            ))
            .with_param("id")
            .with_code("invalid_job_state"),
            JobError::Store(store) => store.into(),
            JobError::WouldFail(failure) => would_fail(failure),
        }
    }
}

/// What a job would have failed on, answered at once: the user's to fix (data, settings,
/// model) as a 400 with the job's code, the server's as a 500.
fn would_fail(failure: JobFailure) -> ApiError {
    match failure {
        JobFailure::Fatal {
            code,
            message,
            param,
        } if code != "server_error" => {
            let error = ApiError::bad_request(message).with_code(code);
            match param {
                Some(param) => error.with_param(param),
                None => error,
            }
        }
        other => ApiError::internal(other),
    }
}

async fn create_job(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateJobBody>,
) -> Result<ApiJson<JobObject>, ApiError> {
    let job = parse_create(body)?;
    Ok(ApiJson(state.jobs.create(job, unix_now()).await?.into()))
}

async fn list_jobs(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
) -> Result<ApiJson<ListResponse<JobObject>>, ApiError> {
    let limit = parse_limit(query.get("limit"), JOBS_PAGE)?;
    let filters: Vec<(&str, &str)> = query
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata[")?.strip_suffix(']')?, v.as_str())))
        .collect();
    if filters.len() > 1 {
        return Err(
            ApiError::bad_request("Filter on one `metadata[key]=value` pair at a time.")
                .with_param("metadata"),
        );
    }
    let page = state
        .jobs
        .list(
            query.get("after").map(String::as_str),
            limit,
            filters.first().copied(),
        )
        .await?;
    let data = page.data.into_iter().map(JobObject::from).collect();
    Ok(ApiJson(ListResponse::new(data, page.has_more)))
}

fn parse_limit(text: Option<&String>, page: PageLimits) -> Result<i64, ApiError> {
    let limit = text
        .map(|t| {
            t.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("`limit` must be an integer, got `{}`.", echo(t)))
                    .with_param("limit")
            })
        })
        .transpose()?;
    page_limit(limit, page)
}

async fn retrieve_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<JobObject>, ApiError> {
    Ok(ApiJson(existing_job(&state, &id).await?.into()))
}

async fn cancel_job(
    state: State<AppState>,
    id: Path<String>,
) -> Result<ApiJson<JobObject>, ApiError> {
    control(state, id, ControlAction::Cancel).await
}

async fn pause_job(
    state: State<AppState>,
    id: Path<String>,
) -> Result<ApiJson<JobObject>, ApiError> {
    control(state, id, ControlAction::Pause).await
}

async fn resume_job(
    state: State<AppState>,
    id: Path<String>,
) -> Result<ApiJson<JobObject>, ApiError> {
    control(state, id, ControlAction::Resume).await
}

/// One compare-and-set in the job service; a transition that does not apply is a 400
/// naming the job's state.
async fn control(
    State(state): State<AppState>,
    Path(id): Path<String>,
    action: ControlAction,
) -> Result<ApiJson<JobObject>, ApiError> {
    Ok(ApiJson(
        state.jobs.control(&id, action, unix_now()).await?.into(),
    ))
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<i64>,
}

async fn list_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<ApiJson<ListResponse<EventObject>>, ApiError> {
    let limit = page_limit(query.limit, EVENTS_PAGE)?;
    let page = state
        .jobs
        .events(&id, query.after.as_deref(), limit)
        .await?;
    let data = page.data.into_iter().map(EventObject::from).collect();
    Ok(ApiJson(ListResponse::new(data, page.has_more)))
}

async fn list_checkpoints(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<ApiJson<ListResponse<CheckpointObject>>, ApiError> {
    let limit = page_limit(query.limit, CHECKPOINTS_PAGE)?;
    let page = state
        .jobs
        .checkpoints(&id, query.after.as_deref(), limit)
        .await?;
    let data = page.data.into_iter().map(CheckpointObject::from).collect();
    Ok(ApiJson(ListResponse::new(data, page.has_more)))
}
