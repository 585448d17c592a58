//! `GET /v1/fine_tuning/jobs/{id}/download?format=merged|adapter|tensorboard&step=N`.
//!
//! `merged` and `adapter`: the job's model (or one checkpoint) exported into a temporary
//! directory under the data dir and streamed back as a tar archive, which is removed once
//! streamed. `tensorboard`: the job's metrics as a TensorBoard event file, in a tar holding
//! `<job id>/events.out.tfevents.<created_at>.temper`, so that unpacking the downloads of
//! several jobs into one directory and running `tensorboard --logdir` on it shows one run
//! per job, named by its id (TensorBoard reads log directories, not single files).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::{echo, ApiError, ApiQuery};
use super::inference::{ArtifactFormat, ExportRequest};
use super::jobs::existing_job;
use super::AppState;
use crate::artifacts::tensorboard::{self, MetricsEvent};
use crate::domain::ids::random_base62;
use crate::store::JobRow;

/// Tar bytes are sent in chunks of this size.
const CHUNK_BYTES: usize = 256 * 1024;

#[derive(Debug, Deserialize)]
pub struct DownloadQuery {
    format: Option<String>,
    step: Option<i64>,
}

/// What `format` asks for: weights (the default, `merged`) or the training curves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DownloadFormat {
    Model(ArtifactFormat),
    Tensorboard,
}

impl DownloadFormat {
    fn parse(text: Option<&str>) -> Result<DownloadFormat, ApiError> {
        match text {
            None => Ok(DownloadFormat::Model(ArtifactFormat::Merged)),
            Some("tensorboard") => Ok(DownloadFormat::Tensorboard),
            Some(text) => ArtifactFormat::parse(text)
                .map(DownloadFormat::Model)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "`format` must be `merged`, `adapter` or `tensorboard`, got `{}`.",
                        echo(text)
                    ))
                    .with_param("format")
                }),
        }
    }
}

pub async fn download(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    ApiQuery(query): ApiQuery<DownloadQuery>,
) -> Result<Response, ApiError> {
    match DownloadFormat::parse(query.format.as_deref())? {
        DownloadFormat::Model(format) => download_model(&state, &id, format, query.step).await,
        DownloadFormat::Tensorboard => download_tensorboard(&state, &id, query.step).await,
    }
}

async fn download_model(
    state: &AppState,
    id: &str,
    format: ArtifactFormat,
    step: Option<i64>,
) -> Result<Response, ApiError> {
    let job = existing_job(state, id).await?;
    let artifact_dir = match step {
        Some(step) => state
            .store
            .get_checkpoint_by_step(&job.id, step)
            .await?
            .map(|c| c.artifact_dir)
            .ok_or_else(|| {
                ApiError::not_found(format!("Job {id} has no checkpoint at step {step}."))
                    .with_param("step")
            })?,
        None => {
            let model = match &job.fine_tuned_model {
                Some(name) => state.store.get_model(name).await?,
                None => None,
            };
            model.map(|m| m.artifact_dir).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Job {id} has no fine-tuned model (status `{}`); pass `step` to download a checkpoint.",
                    job.status
                ))
                .with_param("step")
            })?
        }
    };
    let out_dir = state
        .blobs
        .root()
        .join("tmp")
        .join(format!("export-{}", random_base62(16)));
    let request = ExportRequest {
        checkpoint_dir: state.blobs.path(&artifact_dir),
        format,
        base_model_id: job.model.clone(),
        out_dir: out_dir.clone(),
    };
    if let Err(error) = state.inference.export(request).await {
        remove_dir_quietly(out_dir).await;
        return Err(error.into());
    }
    let name = match step {
        Some(step) => format!("{id}-step-{step}-{}", format.as_str()),
        None => format!("{id}-{}", format.as_str()),
    };
    Ok(tar_response(out_dir, name))
}

/// The event file of every step so far, at any status (a running job's curves too). Built
/// whole in memory: a few hundred bytes a step.
async fn download_tensorboard(
    state: &AppState,
    id: &str,
    step: Option<i64>,
) -> Result<Response, ApiError> {
    if step.is_some() {
        return Err(ApiError::bad_request(
            "`step` picks a checkpoint's weights; `format=tensorboard` holds the metrics of every step and takes no `step`.",
        )
        .with_param("step"));
    }
    let job = existing_job(state, id).await?;
    let rows = state.store.metric_events(&job.id).await?;
    let events: Vec<MetricsEvent<'_>> = rows
        .iter()
        .filter_map(|row| {
            row.data.as_ref().map(|data| MetricsEvent {
                created_at: row.created_at,
                data,
            })
        })
        .collect();
    let file = tensorboard::event_file(job.created_at, &events);
    let modified = rows.last().map_or(job.created_at, |row| row.created_at);
    let archive = event_file_tar(&job, &file, modified).map_err(ApiError::internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}-tensorboard.tar\"", job.id),
            ),
        ],
        archive,
    )
        .into_response())
}

/// A tar of one entry, `<job id>/<event file name>`, modified at `modified` (Unix seconds).
fn event_file_tar(job: &JobRow, file: &[u8], modified: i64) -> io::Result<Vec<u8>> {
    let mut header = tar::Header::new_gnu();
    header.set_size(file.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(u64::try_from(modified).unwrap_or(0));
    let path = format!(
        "{}/{}",
        job.id,
        tensorboard::event_file_name(job.created_at)
    );
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_data(&mut header, path, file)?;
    builder.into_inner()
}

async fn remove_dir_quietly(dir: PathBuf) {
    if let Err(error) = tokio::fs::remove_dir_all(&dir).await {
        tracing::warn!(%error, dir = %dir.display(), "could not remove an export directory");
    }
}

/// Streams `dir` as `<name>/…` inside a tar, built on a blocking thread, then removes `dir`.
fn tar_response(dir: PathBuf, name: String) -> Response {
    let (sender, receiver) = mpsc::channel::<io::Result<Bytes>>(4);
    let archive_root = name.clone();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            sender: sender.clone(),
            buffer: Vec::with_capacity(CHUNK_BYTES),
        };
        let result = write_tar(&dir, &archive_root, &mut writer);
        if let Err(error) = result {
            // A client that hangs up mid-download is routine, not a failure of ours.
            if error.kind() == io::ErrorKind::BrokenPipe {
                tracing::info!(%error, "download ended early");
            } else {
                tracing::warn!(%error, "tar export failed");
            }
            // The receiver may be gone already (client hung up); nothing else to do.
            let _ = sender.blocking_send(Err(error));
        }
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(%error, dir = %dir.display(), "could not remove an export directory");
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.tar\""),
            ),
        ],
        Body::from_stream(ReceiverStream::new(receiver)),
    )
        .into_response()
}

fn write_tar(dir: &Path, root: &str, writer: &mut ChannelWriter) -> io::Result<()> {
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(true);
    builder.append_dir_all(root, dir)?;
    builder.into_inner()?.flush()
}

/// `io::Write` into the response body channel, in `CHUNK_BYTES` pieces.
struct ChannelWriter {
    sender: mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.sender.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the client closed the download")
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send_buffer()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}
