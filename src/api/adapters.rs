//! `/v1/adapters`: LoRA adapters trained elsewhere (a PEFT directory, as peft and temper's
//! adapter download write it) registered over a base decoder of the models dir (a
//! `CAUSAL_LM` adapter) or a base encoder (a `SEQ_CLS` one, with its head), then served by
//! their id like temper's own fine-tunes: unmerged, sharing the base with every other
//! adapter of it. temper's own API (OpenAI has no such endpoint), in the same envelope.
//!
//! A registration copies the adapter into the data dir so later
//! changes to the source cannot break a served model (`adapters/<random>/`), checks it
//! against the base as serving will load it (a 400 naming what does not fit), then records
//! it as a model row.

use std::path::{Component, Path as FsPath, PathBuf};

use axum::extract::{Path, State};
use axum::http::Method;
use axum::routing::{delete, get};
use axum::Router;
use serde::{Deserialize, Serialize};

use super::error::{echo, ApiError, ApiJson};
use super::AppState;
use crate::artifacts::peft::{LABELS_FILE, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE};
use crate::basemodels::{self, BaseModelKind};
use crate::domain::model_name::normalize_model_id;
use crate::infer::adapters::{check_classifier_adapter, check_peft_adapter};
use crate::infer::ServedKind;
use crate::store::ModelRow;

pub const ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/v1/adapters"),
    (Method::GET, "/v1/adapters"),
    (Method::DELETE, "/v1/adapters/{*id}"),
];

/// Longest adapter id.
pub const MAX_ADAPTER_ID_CHARS: usize = 256;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/adapters", get(list_adapters).post(register_adapter))
        .route("/v1/adapters/{*id}", delete(delete_adapter))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterAdapter {
    id: String,
    base_model: String,
    /// A PEFT directory, relative to the models dir.
    path: Option<String>,
    /// An uploaded tar of a PEFT directory.
    file_id: Option<String>,
    /// A classification adapter's label names, one per row of its classifier (else
    /// `LABEL_<i>`); only for adapters of a base encoder.
    labels: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct AdapterObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: i64,
    pub base_model: String,
    /// Bytes of the adapter's weights file.
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
struct AdapterList {
    object: &'static str,
    data: Vec<AdapterObject>,
}

#[derive(Debug, Serialize)]
struct AdapterDeleted {
    id: String,
    object: &'static str,
    deleted: bool,
}

fn adapter_object(state: &AppState, row: ModelRow) -> AdapterObject {
    let weights = state.blobs.path(&row.artifact_dir).join(PEFT_WEIGHTS_FILE);
    AdapterObject {
        bytes: std::fs::metadata(weights).map(|m| m.len()).unwrap_or(0),
        id: row.id,
        object: "adapter",
        created_at: row.created_at,
        base_model: row.base_model.unwrap_or_default(),
    }
}

async fn list_adapters(State(state): State<AppState>) -> Result<ApiJson<AdapterList>, ApiError> {
    let rows = state.store.list_models().await?;
    let data = rows
        .into_iter()
        .filter(|row| row.registered_adapter)
        .map(|row| adapter_object(&state, row))
        .collect();
    Ok(ApiJson(AdapterList {
        object: "list",
        data,
    }))
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).with_param(param)
}

/// The id's rules: a model name users can type and URLs can carry.
fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.chars().count() > MAX_ADAPTER_ID_CHARS {
        return Err(invalid(
            "id",
            format!("`id` must be 1 to {MAX_ADAPTER_ID_CHARS} characters"),
        ));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("id", "`id` must not contain whitespace"));
    }
    Ok(())
}

/// `path` as a directory under the models dir: relative, with no `..`.
fn source_under(models_dir: &FsPath, path: &str) -> Result<PathBuf, ApiError> {
    let relative = FsPath::new(path);
    let plain = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if path.is_empty() || relative.is_absolute() || !plain {
        return Err(invalid(
            "path",
            format!(
                "`path` must be a directory relative to the models dir, without `..`; got {}",
                echo(path)
            ),
        ));
    }
    Ok(models_dir.join(relative))
}

/// Reads the two PEFT files of `dir`, each at most `limit` bytes.
async fn read_peft_files(
    dir: &FsPath,
    limit: u64,
    param: &'static str,
) -> Result<[Vec<u8>; 2], ApiError> {
    let mut out = [Vec::new(), Vec::new()];
    for (slot, name) in out.iter_mut().zip([PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE]) {
        let file = dir.join(name);
        let size = tokio::fs::metadata(&file).await.map(|m| m.len()).map_err(|_| {
            invalid(param, format!("The adapter has no `{name}` (a PEFT adapter directory holds `{PEFT_CONFIG_FILE}` and `{PEFT_WEIGHTS_FILE}`)."))
        })?;
        if size > limit {
            return Err(invalid(
                param,
                format!("`{name}` is larger than {limit} bytes."),
            ));
        }
        *slot = tokio::fs::read(&file).await.map_err(ApiError::internal)?;
    }
    Ok(out)
}

/// The PEFT files of an uploaded tar: at its root or in one directory, nothing else read.
fn peft_files_of_tar(tar_path: &FsPath, limit: u64) -> Result<[Vec<u8>; 2], ApiError> {
    use std::io::Read;
    let not_tar = |e: std::io::Error| {
        invalid(
            "file_id",
            format!("The file is not a tar of a PEFT adapter directory: {e}"),
        )
    };
    let file = std::fs::File::open(tar_path).map_err(ApiError::internal)?;
    let mut archive = tar::Archive::new(file);
    let mut out: [Option<Vec<u8>>; 2] = [None, None];
    for entry in archive.entries().map_err(not_tar)? {
        let entry = entry.map_err(not_tar)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(not_tar)?.into_owned();
        let depth = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let slot = match name {
            PEFT_CONFIG_FILE => 0,
            PEFT_WEIGHTS_FILE => 1,
            _ => continue,
        };
        if depth > 2 || out[slot].is_some() {
            continue;
        }
        let mut bytes = Vec::new();
        entry
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(not_tar)?;
        if bytes.len() as u64 > limit {
            return Err(invalid(
                "file_id",
                format!("`{name}` is larger than {limit} bytes."),
            ));
        }
        out[slot] = Some(bytes);
    }
    match out {
        [Some(config), Some(weights)] => Ok([config, weights]),
        _ => Err(invalid(
            "file_id",
            format!("The tar holds no `{PEFT_CONFIG_FILE}` and `{PEFT_WEIGHTS_FILE}` (at its root or in one directory)."),
        )),
    }
}

async fn register_adapter(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RegisterAdapter>,
) -> Result<ApiJson<AdapterObject>, ApiError> {
    let id = normalize_model_id(&request.id);
    check_id(&id)?;
    let models_dir = state.settings.models_dir.clone();
    if basemodels::resolve(&models_dir, &id).is_some() {
        return Err(invalid("id", format!("{} is a base model's id", echo(&id))));
    }
    if state.store.get_model(&id).await?.is_some() {
        return Err(invalid("id", format!("A model named {} exists", echo(&id))));
    }
    let base = basemodels::resolve(&models_dir, &request.base_model)
        .filter(|base| base.kind != BaseModelKind::Vision)
        .ok_or_else(|| {
            let hint = basemodels::not_found_hint(&models_dir, &request.base_model, None);
            invalid(
                "base_model",
                format!(
                    "{} is not a base decoder or encoder in the models dir. {hint}",
                    echo(&request.base_model)
                ),
            )
        })?;
    let classifier = base.kind == BaseModelKind::Encoder;
    let labels = match (&request.labels, classifier) {
        (Some(_), false) => {
            return Err(invalid(
                "labels",
                "`labels` names a classification adapter's labels; this base is a decoder",
            ))
        }
        (Some(labels), true) => Some(serde_json::to_vec(labels).map_err(ApiError::internal)?),
        (None, _) => None,
    };
    let limit = state.settings.max_upload_bytes;
    let files = match (&request.path, &request.file_id) {
        (Some(path), None) => {
            read_peft_files(&source_under(&models_dir, path)?, limit, "path").await?
        }
        (None, Some(file_id)) => {
            if state.store.get_file(file_id).await?.is_none() {
                return Err(invalid(
                    "file_id",
                    format!("No such file: {}", echo(file_id)),
                ));
            }
            let tar_path = state.blobs.file_path(file_id);
            tokio::task::spawn_blocking(move || peft_files_of_tar(&tar_path, limit))
                .await
                .map_err(ApiError::internal)??
        }
        _ => return Err(invalid("path", "Give exactly one of `path` and `file_id`.")),
    };
    let param = if request.path.is_some() {
        "path"
    } else {
        "file_id"
    };
    let base_dir = base
        .prepare_in_data_dir(state.blobs.root())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let rel = format!("adapters/{}", crate::domain::ids::random_base62(24));
    let written = [PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE]
        .into_iter()
        .zip(&files);
    let labels_file = labels.as_ref().map(|bytes| (LABELS_FILE, bytes));
    for (name, bytes) in written.chain(labels_file) {
        state
            .blobs
            .write_atomic(&format!("{rel}/{name}"), bytes)
            .await?;
    }
    let dir = state.blobs.path(&rel);
    let (kind, check): (ServedKind, fn(&FsPath, &FsPath, &'static str) -> _) = if classifier {
        (ServedKind::Classifier, check_classifier_adapter)
    } else {
        (ServedKind::CausalLm, check_peft_adapter)
    };
    let checked = tokio::task::spawn_blocking(move || check(&dir, &base_dir, param))
        .await
        .map_err(ApiError::internal)?;
    let row = ModelRow {
        id: id.clone(),
        created_at: super::wire::unix_now(),
        owned_by: "user".into(),
        job_id: None,
        base_model: Some(base.id.clone()),
        kind: kind.as_str().into(),
        artifact_dir: rel.clone(),
        step: None,
        is_checkpoint: false,
        registered_adapter: true,
    };
    let recorded = match checked {
        Ok(()) => state.store.insert_model(&row).await.map_err(ApiError::from),
        Err(error) => Err(ApiError::from(error)),
    };
    if let Err(error) = recorded {
        state.blobs.remove_dir_all(&rel).await?;
        return Err(error);
    }
    Ok(ApiJson(adapter_object(&state, row)))
}

async fn delete_adapter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<AdapterDeleted>, ApiError> {
    let id = normalize_model_id(&id);
    let row = state
        .store
        .get_model(&id)
        .await?
        .filter(|row| row.registered_adapter);
    let Some(row) = row else {
        return Err(ApiError::not_found(format!(
            "No registered adapter {}.",
            echo(&id)
        )));
    };
    if !state.store.delete_model(&row.id).await? {
        return Err(ApiError::not_found(format!(
            "No registered adapter {}.",
            echo(&id)
        )));
    }
    state.inference.evict(&row.id);
    state.blobs.remove_dir_all(&row.artifact_dir).await?;
    Ok(ApiJson(AdapterDeleted {
        id: row.id,
        object: "adapter",
        deleted: true,
    }))
}
