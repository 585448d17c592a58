//! `/v1/files`: upload (multipart, streamed to disk), list, retrieve, content, delete.

use axum::body::Body;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, Path, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::io::ReaderStream;

use super::error::{echo, ApiError, ApiJson, ApiQuery};
use super::wire::{page_limit, unix_now, HasId, ListResponse, FILES_PAGE};
use super::AppState;
use crate::blobs::Blobs;
use crate::domain::dataset::{self, ScanError};
use crate::domain::ids::new_file_id;
use crate::store::{FileRow, SortOrder, StoreError};

pub const ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/v1/files"),
    (Method::GET, "/v1/files"),
    (Method::GET, "/v1/files/{id}"),
    (Method::DELETE, "/v1/files/{id}"),
    (Method::GET, "/v1/files/{id}/content"),
];

/// Purposes a client may upload with (OpenAI's list); `fine-tune-results` is ours to write.
const UPLOAD_PURPOSES: [&str; 6] = [
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/files", get(list_files).post(create_file))
        .route("/v1/files/{id}", get(retrieve_file).delete(delete_file))
        .route("/v1/files/{id}/content", get(file_content))
}

/// OpenAI's `file` object. OpenAI's spec types `expires_at` and `status_details` as
/// integer and string (not nullable), so they are left out when there is none.
#[derive(Debug, Serialize, Deserialize)]
pub struct FileObject {
    pub id: String,
    pub object: String,
    pub bytes: i64,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    pub filename: String,
    pub purpose: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_details: Option<String>,
}

impl From<FileRow> for FileObject {
    fn from(row: FileRow) -> Self {
        FileObject {
            id: row.id,
            object: "file".to_string(),
            bytes: row.bytes,
            created_at: row.created_at,
            expires_at: None,
            filename: row.filename,
            purpose: row.purpose,
            status: row.status,
            status_details: row.status_details,
        }
    }
}

impl HasId for FileObject {
    fn id(&self) -> &str {
        &self.id
    }
}

/// The 404 OpenAI answers for a missing file.
pub fn no_such_file(id: &str) -> ApiError {
    ApiError::not_found(format!("No such File object: {}", echo(id))).with_param("id")
}

/// The file row, or 404 naming `id`.
async fn existing_file(state: &AppState, id: &str) -> Result<FileRow, ApiError> {
    state
        .store
        .get_file(id)
        .await?
        .ok_or_else(|| no_such_file(id))
}

/// What a multipart upload carried, once the file is on disk.
struct Upload {
    filename: String,
    bytes: u64,
    purpose: String,
}

async fn create_file(
    State(state): State<AppState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<ApiJson<FileObject>, ApiError> {
    let multipart = multipart.map_err(|e| {
        ApiError::bad_request(format!(
            "Expected a multipart/form-data body: {}",
            e.body_text()
        ))
    })?;
    // hyper drops this handler when its client disconnects; the upload runs in a task of its
    // own so that it always ends by recording the file or by removing what it wrote.
    // In the request's span: its lines carry the request id.
    let upload = receive_and_store(state, multipart);
    let upload = tokio::spawn(tracing::Instrument::in_current_span(upload));
    let row = upload.await.map_err(ApiError::internal)??;
    Ok(ApiJson(row.into()))
}

async fn receive_and_store(state: AppState, mut multipart: Multipart) -> Result<FileRow, ApiError> {
    let id = new_file_id();
    let rel = Blobs::file_rel(&id);
    // Nothing of a failed upload stays on disk.
    match store_upload(&state, id, &rel, &mut multipart).await {
        Ok(row) => Ok(row),
        Err(error) => {
            discard_blob(&state, &rel).await;
            drain(multipart).await;
            Err(error)
        }
    }
}

/// Reads what is left of a refused upload's body (bounded by the upload limit) without
/// keeping it. Clients that send the whole body before they read a reply (Python's
/// http.client, httpx and so the OpenAI SDK) would otherwise meet a broken connection
/// instead of the error, e.g. the 507 a full disk answers before reading anything.
async fn drain(mut multipart: Multipart) {
    while let Ok(Some(mut field)) = multipart.next_field().await {
        while let Ok(Some(_)) = field.chunk().await {}
    }
}

/// Receives, validates and records one upload as file `id`, stored at `rel`.
async fn store_upload(
    state: &AppState,
    id: String,
    rel: &str,
    multipart: &mut Multipart,
) -> Result<FileRow, ApiError> {
    // 507 up front while the disk is full (its reserve released), so the space left is for
    // deletes.
    state.blobs.ensure_space().await?;
    let upload = receive_upload(state, rel, multipart).await?;
    let uploaded_bytes = upload.bytes;
    let mut row = FileRow {
        id,
        bytes: i64::try_from(upload.bytes).unwrap_or(i64::MAX),
        created_at: unix_now(),
        filename: upload.filename,
        purpose: upload.purpose,
        status: "processed".to_string(),
        status_details: None,
        format: None,
        n_examples: None,
    };
    if row.purpose == "fine-tune" {
        validate_training_file(state, rel, &mut row).await?;
    }
    // Acknowledged only once the row is committed (and fsynced): if it cannot be, the
    // caller removes the blob and the client gets the error.
    if let Err(error) = state.store.insert_file(&row).await {
        return Err(store_write_failed(state, error).await);
    }
    state.metrics.uploaded(uploaded_bytes);
    Ok(row)
}

/// The API error for a failed store write; on a full disk the space reserve is released
/// first, so deletes can still free space.
async fn store_write_failed(state: &AppState, error: StoreError) -> ApiError {
    if error.is_storage_full() {
        state.blobs.reserve().release().await;
    }
    error.into()
}

/// Streams the `file` field to `rel` and reads `purpose`, in whichever order they come.
async fn receive_upload(
    state: &AppState,
    rel: &str,
    multipart: &mut Multipart,
) -> Result<Upload, ApiError> {
    let limit = state.settings.max_upload_bytes;
    let mut file: Option<(String, u64)> = None;
    let mut purpose: Option<String> = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        match field.name() {
            Some("file") => {
                let filename = field.file_name().unwrap_or("file").to_string();
                let bytes = stream_field(state, rel, field, limit).await?;
                file = Some((filename, bytes));
            }
            Some("purpose") => {
                purpose = Some(field.text().await.map_err(|e| multipart_error(e, limit))?)
            }
            // `expires_after[…]` and anything else: accepted and ignored.
            _ => {}
        }
    }
    let (filename, bytes) = file.ok_or_else(|| {
        ApiError::bad_request("Missing required parameter: 'file'.").with_param("file")
    })?;
    let purpose = purpose.ok_or_else(|| {
        ApiError::bad_request("Missing required parameter: 'purpose'.").with_param("purpose")
    })?;
    if !UPLOAD_PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::bad_request(format!(
            "'{}' is not one of {} - 'purpose'",
            echo(&purpose),
            UPLOAD_PURPOSES.map(|p| format!("'{p}'")).join(", ")
        ))
        .with_param("purpose"));
    }
    Ok(Upload {
        filename,
        bytes,
        purpose,
    })
}

/// Streams the file's bytes to `rel`. A body that breaks off is the client's doing, told
/// apart from a failure to write.
async fn stream_field(
    state: &AppState,
    rel: &str,
    field: Field<'_>,
    limit: u64,
) -> Result<u64, ApiError> {
    let mut body_error = None;
    let chunks = field.map(|chunk| {
        chunk.map_err(|error| {
            let cause = std::io::Error::other(error.body_text());
            body_error = Some(error);
            cause
        })
    });
    let streamed = state.blobs.stream_to_file(rel, chunks, limit).await;
    match (streamed, body_error) {
        (Ok(bytes), _) => Ok(bytes),
        (Err(_), Some(error)) => Err(multipart_error(error, limit)),
        (Err(error), None) => Err(error.into()),
    }
}

/// A multipart error: 413 when the body limit cut it off, else 400 (the client's error).
fn multipart_error(error: MultipartError, limit: u64) -> ApiError {
    match error.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(limit),
        // What axum answers when the body itself failed to arrive: the client disconnected,
        // or sent less than its Content-Length.
        StatusCode::INTERNAL_SERVER_ERROR => {
            tracing::info!(cause = %error_chain(&error), "upload aborted: the request body broke off");
            ApiError::bad_request(
                "The request body ended before the upload was complete (the client sent less \
                 than its Content-Length, or disconnected).",
            )
            .with_param("file")
            .with_code("incomplete_request_body")
        }
        _ => {
            tracing::debug!(cause = %error_chain(&error), "invalid multipart body");
            ApiError::bad_request(format!("Invalid multipart body: {}.", error.body_text()))
                .with_code("invalid_multipart_body")
        }
    }
}

/// `error: its source: …`, for the log (wrappers that repeat their source's text are skipped).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

async fn discard_blob(state: &AppState, rel: &str) {
    if let Err(error) = state.blobs.remove(rel).await {
        tracing::warn!(%error, rel, "could not remove a rejected upload");
    }
}

/// Checks a `fine-tune` upload, streaming it from disk in bounded memory on a blocking thread:
/// `processed` with its format, or `error` with the first bad example's line-numbered message.
async fn validate_training_file(
    state: &AppState,
    rel: &str,
    row: &mut FileRow,
) -> Result<(), ApiError> {
    let path = state.blobs.path(rel);
    let verdict = tokio::task::spawn_blocking(move || dataset::validate_training_file(&path))
        .await
        .map_err(ApiError::internal)?;
    match verdict {
        Ok(summary) => {
            tracing::info!(
                file_id = %row.id,
                format = summary.format.as_str(),
                examples = summary.examples,
                duplicates = summary.duplicates,
                conflicting_duplicates = summary.conflicting_duplicates,
                labels = summary.labels.len(),
                "training file validated"
            );
            row.format = Some(summary.format.as_str().to_string());
            row.n_examples = Some(i64::try_from(summary.examples).unwrap_or(i64::MAX));
        }
        Err(ScanError::Invalid(error)) => {
            row.status = "error".to_string();
            row.status_details = Some(error.message);
        }
        Err(ScanError::Io(error)) => return Err(ApiError::internal(error)),
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct ListFilesQuery {
    purpose: Option<String>,
    limit: Option<i64>,
    order: Option<String>,
    after: Option<String>,
}

async fn list_files(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListFilesQuery>,
) -> Result<ApiJson<ListResponse<FileObject>>, ApiError> {
    let limit = page_limit(query.limit, FILES_PAGE)?;
    let order = match query.order.as_deref() {
        None | Some("desc") => SortOrder::Desc,
        Some("asc") => SortOrder::Asc,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`order` must be `asc` or `desc`, got `{}`.",
                echo(other)
            ))
            .with_param("order"))
        }
    };
    let page = state
        .store
        .list_files(
            query.purpose.as_deref(),
            query.after.as_deref(),
            limit,
            order,
        )
        .await?;
    let data = page.data.into_iter().map(FileObject::from).collect();
    Ok(ApiJson(ListResponse::new(data, page.has_more)))
}

async fn retrieve_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<FileObject>, ApiError> {
    Ok(ApiJson(existing_file(&state, &id).await?.into()))
}

/// The bytes exactly as stored (result CSVs are stored base64-encoded, as OpenAI serves them).
async fn file_content(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = existing_file(&state, &id).await?;
    let file = state.blobs.open(&Blobs::file_rel(&row.id)).await?;
    let length = file.metadata().await.map_err(ApiError::internal)?.len();
    let body = Body::from_stream(ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Serialize)]
struct FileDeleted {
    id: String,
    object: &'static str,
    deleted: bool,
}

async fn delete_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<FileDeleted>, ApiError> {
    let row = existing_file(&state, &id).await?;
    if state.store.file_in_use(&row.id).await? {
        return Err(ApiError::bad_request(format!(
            "File {id} is used by a fine-tuning job that has not finished; cancel the job or wait for it to finish first."
        ))
        .with_param("id"));
    }
    let deleted = match state.store.delete_file(&row.id).await {
        // On a full disk the reserve's space lets the deletion commit.
        Err(error) if error.is_storage_full() && state.blobs.reserve().release().await => {
            state.store.delete_file(&row.id).await?
        }
        result => result?,
    };
    if !deleted {
        return Err(no_such_file(&id));
    }
    state.blobs.remove(&Blobs::file_rel(&row.id)).await?;
    // The space just freed may be enough to put the reserve back (and take uploads again).
    state.blobs.reserve().arm().await;
    Ok(ApiJson(FileDeleted {
        id: row.id,
        object: "file",
        deleted: true,
    }))
}
