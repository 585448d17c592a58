//! `/v1/models`: fine-tuned models and checkpoints from the store, plus the base models in
//! the models dir. Ids contain `/` and `:`, so the single-model routes take a wildcard
//! segment (axum percent-decodes it, so `%2F`/`%3A` from other SDKs work too).

use axum::extract::{Path, State};
use axum::http::Method;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use super::error::{echo, ApiError, ApiJson};
use super::AppState;
use crate::basemodels::{self, BaseModel};
use crate::domain::model_name::normalize_model_id;
use crate::store::ModelRow;

pub const ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/v1/models"),
    (Method::GET, "/v1/models/{*id}"),
    (Method::DELETE, "/v1/models/{*id}"),
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(retrieve_model).delete(delete_model))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub owned_by: String,
    /// The base model a registered adapter (`/v1/adapters`) is served over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl From<ModelRow> for ModelObject {
    fn from(row: ModelRow) -> Self {
        ModelObject {
            parent: row.base_model.filter(|_| row.registered_adapter),
            id: row.id,
            object: "model".to_string(),
            created: row.created_at,
            owned_by: row.owned_by,
        }
    }
}

fn base_model_object(model: &BaseModel) -> ModelObject {
    let created = std::fs::metadata(model.dir.join("config.json"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    let owner = model.id.split('/').next().unwrap_or("temper").to_string();
    ModelObject {
        id: model.id.clone(),
        object: "model".to_string(),
        created,
        owned_by: owner,
        parent: None,
    }
}

#[derive(Debug, Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelObject>,
}

async fn list_models(State(state): State<AppState>) -> Result<ApiJson<ModelList>, ApiError> {
    let mut data: Vec<ModelObject> = state
        .store
        .list_models()
        .await?
        .into_iter()
        .map(ModelObject::from)
        .collect();
    let models_dir = state.settings.models_dir.clone();
    let base = tokio::task::spawn_blocking(move || basemodels::list(&models_dir))
        .await
        .map_err(ApiError::internal)?;
    data.extend(base.iter().map(base_model_object));
    Ok(ApiJson(ModelList {
        object: "list",
        data,
    }))
}

/// The wildcard capture as a model id: normalised (`normalize_model_id`), which also drops
/// the leading `/` some routers keep, so `/v1/models/org/m/` is model `org/m`.
fn model_id(raw: String) -> String {
    normalize_model_id(&raw)
}

async fn retrieve_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<ModelObject>, ApiError> {
    let id = model_id(id);
    if let Some(row) = state.store.get_model(&id).await? {
        return Ok(ApiJson(row.into()));
    }
    let models_dir = state.settings.models_dir.clone();
    let lookup = id.clone();
    let base = tokio::task::spawn_blocking(move || basemodels::resolve(&models_dir, &lookup))
        .await
        .map_err(ApiError::internal)?;
    base.map(|m| ApiJson(base_model_object(&m)))
        .ok_or_else(|| ApiError::model_not_found(&id))
}

#[derive(Debug, Serialize)]
struct ModelDeleted {
    id: String,
    object: &'static str,
    deleted: bool,
}

/// Deletes a fine-tuned model or checkpoint: the row, its loaded engine, and its weights
/// once no other model (a job's final model shares its best checkpoint's directory) uses them.
async fn delete_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<ModelDeleted>, ApiError> {
    let id = model_id(id);
    let Some(row) = state.store.get_model(&id).await? else {
        if basemodels::resolve(&state.settings.models_dir, &id).is_some() {
            return Err(ApiError::bad_request(format!(
                "Model {} is a base model; only fine-tuned models can be deleted.",
                echo(&id)
            ))
            .with_param("model"));
        }
        return Err(ApiError::model_not_found(&id));
    };
    if !state.store.delete_model(&row.id).await? {
        return Err(ApiError::model_not_found(&id));
    }
    state.inference.evict(&row.id);
    let shared = state
        .store
        .list_models()
        .await?
        .iter()
        .any(|m| m.artifact_dir == row.artifact_dir);
    // A running job may still resume from this checkpoint directory.
    let job_unfinished = match &row.job_id {
        Some(job_id) => state
            .store
            .get_job(job_id)
            .await?
            .is_some_and(|job| !job.status.is_terminal()),
        None => false,
    };
    if !shared && !job_unfinished {
        state.blobs.remove_dir_all(&row.artifact_dir).await?;
    }
    Ok(ApiJson(ModelDeleted {
        id: row.id,
        object: "model",
        deleted: true,
    }))
}
