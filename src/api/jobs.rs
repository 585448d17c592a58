//! `/v1/fine_tuning/jobs`: create, list, retrieve, cancel/pause/resume, events,
//! checkpoints. Downloads live in `download.rs`.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::Method;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::error::{echo, ApiError, ApiJson, ApiQuery};
use super::job_request::{parse_create, CreateJobBody, ValidJobRequest};
use super::job_wire::{CheckpointObject, EventObject, JobObject};
use super::wire::{
    page_limit, unix_now, ListResponse, PageLimits, CHECKPOINTS_PAGE, EVENTS_PAGE, JOBS_PAGE,
};
use super::{download, AppState};
use crate::basemodels;
use crate::domain::dataset::DataFormat;
use crate::domain::ids::new_job_id;
use crate::domain::job_spec::Method as JobMethod;
use crate::domain::task::ServedKind;
use crate::store::{ControlAction, ControlOutcome, EventRow, FileRow, JobRow};

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
    state
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| no_such_job(id))
}

async fn create_job(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateJobBody>,
) -> Result<ApiJson<JobObject>, ApiError> {
    let request = parse_create(body)?;
    check_base_model(&state, &request.model, &request.spec.method).await?;
    let training = check_file(&state, &request.training_file, "training_file").await?;
    // The data decides the task: a hyperparameter of another task is a 400 now, not an
    // option the job would ignore.
    let format = training.format.as_deref().and_then(DataFormat::from_stored);
    if let Some(task) = format.and_then(|format| request.spec.task_on(format)) {
        request.spec.check_task(task)?;
    }
    if let Some(validation) = &request.validation_file {
        check_file(&state, validation, "validation_file").await?;
    }
    let now = unix_now();
    let row = job_row(new_job_id(), request, now);
    let event = EventRow::info(&row.id, format!("Created fine-tuning job: {}", row.id), now);
    state.store.create_job(&row, &event).await?;
    (state.wake_workers)();
    Ok(ApiJson(row.into()))
}

fn job_row(id: String, request: ValidJobRequest, now: i64) -> JobRow {
    JobRow {
        validation_file: request.validation_file,
        suffix: request.suffix,
        metadata: request.metadata,
        spec: request.spec,
        ..JobRow::new(id, request.model, request.training_file, request.seed, now)
    }
}

async fn check_base_model(
    state: &AppState,
    model: &str,
    method: &JobMethod,
) -> Result<(), ApiError> {
    if model.starts_with("ft:") {
        return check_fine_tuned_start(state, model, method).await;
    }
    match basemodels::resolve(&state.settings.models_dir, model) {
        Some(_) => Ok(()),
        None => Err(ApiError::model_not_found_with_hint(
            model,
            &basemodels::not_found_hint(&state.settings.models_dir, model, None),
        )),
    }
}

/// A DPO job may start from a chat model this server fine-tuned (SFT then DPO, the path
/// OpenAI recommends); supervised jobs start from base models.
async fn check_fine_tuned_start(
    state: &AppState,
    model: &str,
    method: &JobMethod,
) -> Result<(), ApiError> {
    if !matches!(method, JobMethod::Dpo { .. }) {
        return Err(ApiError::bad_request(format!(
            "Model {} is a fine-tuned model; continuing supervised fine-tuning from a fine-tuned model is not supported yet (a `dpo` job can start from one). Use its base model.",
            echo(model)
        ))
        .with_param("model")
        .with_code("model_not_available"));
    }
    let Some(row) = state.store.get_model(model).await? else {
        return Err(ApiError::model_not_found(model));
    };
    if ServedKind::from_stored(&row.kind) != Some(ServedKind::CausalLm) {
        return Err(ApiError::bad_request(format!(
            "Model {} is a {} model; DPO tunes chat models.",
            echo(model),
            row.kind
        ))
        .with_param("model")
        .with_code("invalid_model"));
    }
    Ok(())
}

/// The file exists, has purpose `fine-tune` and parsed at upload; its row.
async fn check_file(state: &AppState, id: &str, param: &str) -> Result<FileRow, ApiError> {
    let Some(file) = state.store.get_file(id).await? else {
        return Err(
            ApiError::not_found(format!("No such File object: {}", echo(id))).with_param(param),
        );
    };
    if file.purpose != "fine-tune" {
        return Err(ApiError::bad_request(format!(
            "File {id} has purpose '{}'; files used for fine-tuning must be uploaded with purpose 'fine-tune'.",
            file.purpose
        ))
        .with_param(param)
        .with_code("invalid_file_purpose"));
    }
    if file.status == "error" {
        let details = file.status_details.unwrap_or_default();
        return Err(ApiError::bad_request(format!(
            "File {id} is not a valid training file: {details}"
        ))
        .with_param(param)
        .with_code(format!("invalid_{param}")));
    }
    Ok(file)
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
        .store
        .list_jobs(
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

/// One compare-and-set in the store; a transition that does not apply is a 400 naming the
/// job's state (never 409: the SDK would retry it).
async fn control(
    State(state): State<AppState>,
    Path(id): Path<String>,
    action: ControlAction,
) -> Result<ApiJson<JobObject>, ApiError> {
    let (verb, message) = match action {
        ControlAction::Cancel => ("cancel", "Fine-tuning job cancelled"),
        ControlAction::Pause => ("pause", "Fine-tuning job pause requested"),
        ControlAction::Resume => ("resume", "Fine-tuning job resumed"),
    };
    let now = unix_now();
    let event = EventRow::info(&id, message, now);
    let outcome = match state.store.request_control(&id, action, &event, now).await {
        Err(crate::store::StoreError::NotFound) => return Err(no_such_job(&id)),
        other => other?,
    };
    match outcome {
        ControlOutcome::Applied(job) => {
            // Idle workers claim a resumed job; a running job's worker reads the cancel
            // or pause at once.
            (state.wake_workers)();
            Ok(ApiJson((*job).into()))
        }
        ControlOutcome::NotAllowed(status) => Err(ApiError::bad_request(format!(
            "Cannot {verb} job {}: its status is `{status}`.",
            echo(&id)
        ))
        .with_param("id")
        .with_code("invalid_job_state")),
    }
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
    existing_job(&state, &id).await?;
    let page = state
        .store
        .list_events(&id, query.after.as_deref(), limit)
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
    existing_job(&state, &id).await?;
    let page = state
        .store
        .list_checkpoints(&id, query.after.as_deref(), limit)
        .await?;
    let data = page.data.into_iter().map(CheckpointObject::from).collect();
    Ok(ApiJson(ListResponse::new(data, page.has_more)))
}
