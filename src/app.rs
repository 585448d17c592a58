//! Composition root: the only module that knows every other. `run` opens the store and
//! blobs in the data dir, starts the worker pool and the inference handle, and serves the
//! API on the given listener until `shutdown` is cancelled; then running jobs checkpoint
//! and go back to `queued` before it returns.

mod catalog;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiSettings, AppState, ArtifactFormat, ExportRequest, Inference};
use crate::artifacts::{BaseModels, ExportFormat};
use crate::basemodels::{self, BaseModelKind};
use crate::blobs::Blobs;
use crate::config::Config;
use crate::infer::{
    ClassPrediction, GenerationParams, GenerationStream, InferError, InferenceHandle, QaPrediction,
    QaQuestion,
};
use crate::jobs::EstimateSetup;
use crate::jobs::{JobService, JobsContext, WorkerPool};
use crate::store::Store;
use crate::telemetry::metrics::Metrics;
use crate::webhooks::{Deliverer, RetryPolicy};
use catalog::StoreCatalog;

/// How often the webhook outbox is read: a job's end reaches its receivers within this.
const WEBHOOK_POLL: Duration = Duration::from_secs(1);
/// One webhook attempt, connection included; a slower receiver is retried later.
const WEBHOOK_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves until `shutdown` is cancelled (SIGTERM/SIGINT in `main`, `Drop` in tests).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // A device that cannot be opened would fail every job its worker claims: refuse to
    // start instead.
    for device in &config.workers.devices {
        crate::jobs::device_by_name(device).map_err(|detail| {
            anyhow::anyhow!("the worker device `{device}` cannot be used: {detail}")
        })?;
    }
    config.webhooks.check().map_err(anyhow::Error::msg)?;
    let serve_names = config
        .inference
        .serve_devices(&config.workers)
        .map_err(|detail| anyhow::anyhow!("the serving devices cannot be used: {detail}"))?;
    let mut serve_devices = Vec::with_capacity(serve_names.len());
    for name in serve_names {
        serve_devices.push(crate::jobs::device_by_name(name).map_err(|detail| {
            anyhow::anyhow!("the serving device `{name}` cannot be used: {detail}")
        })?);
    }
    let data_dir = &config.storage.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
    let store = Store::open(&config.database_path())
        .await
        .context("opening the database")?;
    let blobs = Blobs::new(data_dir.clone())
        .context("preparing the data dir")?
        .with_reserve(config.storage.disk_reserve_bytes);
    if !blobs.reserve().arm().await {
        tracing::warn!(
            bytes = config.storage.disk_reserve_bytes,
            "the data disk has no room for its space reserve; uploads get 507 until it has"
        );
    }
    // Before serving, so no upload of this process can be in flight; then periodically.
    let grace = config.storage.leftover_grace();
    sweep_leftovers(&store, &blobs, grace, true).await;
    tokio::spawn(sweep_periodically(
        store.clone(),
        blobs.clone(),
        grace,
        shutdown.clone(),
    ));
    // One registry for the whole process: each part records into its own recorder of it.
    let metrics = Metrics::new();
    let pool = Arc::new(WorkerPool::spawn(
        JobsContext {
            store: store.clone(),
            blobs: blobs.clone(),
            models_dir: config.storage.models_dir.clone(),
            devices: config.workers.devices.clone(),
            lease: config.workers.lease(),
            poll_interval: config.workers.poll_interval(),
            max_attempts: config.workers.worker_max_attempts,
            metrics: metrics.training(),
        },
        shutdown.clone(),
    ));
    let deliverer = Deliverer::new(
        store.clone(),
        &config.webhooks,
        RetryPolicy::default(),
        WEBHOOK_ATTEMPT_TIMEOUT,
        metrics.clone(),
    )
    .context("preparing the webhook client")?;
    tokio::spawn(deliverer.run(WEBHOOK_POLL, shutdown.clone()));
    let catalog = Arc::new(StoreCatalog {
        store: store.clone(),
        blobs: blobs.clone(),
        models_dir: config.storage.models_dir.clone(),
    });
    let mut options = crate::infer::InferOptions::from_config(&config.inference, serve_devices);
    options.bases = BaseModels::new(&config.storage.models_dir, blobs.root());
    options.metrics = metrics.generation();
    let inference = InferenceHandle::with_options(catalog, options, shutdown.clone());
    // Weak: the router must not keep the pool alive, so `join` below can take it back.
    let weak_pool = Arc::downgrade(&pool);
    let workers = pool.liveness();
    let state = AppState {
        store: store.clone(),
        blobs: blobs.clone(),
        inference: Arc::new(InferenceService {
            handle: inference,
            models_dir: config.storage.models_dir.clone(),
        }),
        jobs: JobService::new(
            store.clone(),
            Arc::new(move || {
                if let Some(pool) = weak_pool.upgrade() {
                    pool.wake();
                }
            }),
            config.storage.models_dir.clone(),
            EstimateSetup::new(blobs.clone(), config.workers.devices.clone()),
        ),
        workers,
        settings: Arc::new(ApiSettings {
            api_keys: config.server.api_keys.clone(),
            max_upload_bytes: config.server.max_upload_bytes,
            models_dir: config.storage.models_dir.clone(),
        }),
        metrics,
    };
    let served = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("serving HTTP");
    // Whatever ended serving, workers must stop and checkpoint.
    shutdown.cancel();
    match Arc::try_unwrap(pool) {
        Ok(pool) => pool.join().await,
        Err(_) => tracing::warn!("worker pool still referenced at shutdown; not waiting for it"),
    }
    store.close().await;
    tracing::info!("shut down");
    served
}

/// Removes crash leftovers older than `grace` (partial writes in `tmp/`, file blobs whose
/// row was never committed) and logs what went; `always_log` also logs an empty sweep.
async fn sweep_leftovers(store: &Store, blobs: &Blobs, grace: Duration, always_log: bool) {
    let known: HashSet<String> = match store.file_ids().await {
        Ok(ids) => ids.into_iter().collect(),
        Err(error) => {
            tracing::warn!(%error, "could not list files; crash leftovers not swept");
            return;
        }
    };
    match blobs.sweep_leftovers(known, grace).await {
        Ok(report) if always_log || report.partial_writes + report.orphan_files > 0 => {
            tracing::info!(
                partial_writes = report.partial_writes,
                orphan_files = report.orphan_files,
                bytes = report.bytes,
                grace_secs = grace.as_secs(),
                "swept crash leftovers"
            );
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not sweep crash leftovers"),
    }
}

/// Sweeps again every `grace` (at least a minute) until shutdown, so leftovers too young at
/// start-up go too.
async fn sweep_periodically(
    store: Store,
    blobs: Blobs,
    grace: Duration,
    shutdown: CancellationToken,
) {
    let interval = grace.max(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => sweep_leftovers(&store, &blobs, grace, false).await,
        }
    }
}

/// The API's view of `InferenceHandle` (also what the API's generation tests serve through).
pub(crate) struct InferenceService {
    pub(crate) handle: InferenceHandle,
    /// Where base models live: an unknown model is answered with the decoders that exist.
    pub(crate) models_dir: PathBuf,
}

/// `ModelNotFound` for chat or completions, with the closest base decoder and those there are.
fn with_decoder_hint<T>(models_dir: &Path, result: Result<T, InferError>) -> Result<T, InferError> {
    result.map_err(|error| match error {
        InferError::ModelNotFound(model) => {
            let hint = basemodels::not_found_hint(models_dir, &model, Some(BaseModelKind::Decoder));
            InferError::ModelNotFoundWithHint { model, hint }
        }
        other => other,
    })
}

impl Inference for InferenceService {
    fn classify(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> BoxFuture<'static, Result<Vec<ClassPrediction>, InferError>> {
        let handle = self.handle.clone();
        Box::pin(async move { handle.classify(&model, inputs).await })
    }

    fn answer_questions(
        &self,
        model: String,
        questions: Vec<QaQuestion>,
    ) -> BoxFuture<'static, Result<Vec<QaPrediction>, InferError>> {
        let handle = self.handle.clone();
        Box::pin(async move { handle.answer_questions(&model, questions).await })
    }

    fn classify_images(
        &self,
        model: String,
        images: Vec<Vec<u8>>,
    ) -> BoxFuture<'static, Result<Vec<ClassPrediction>, InferError>> {
        let handle = self.handle.clone();
        Box::pin(async move { handle.classify_images(&model, images).await })
    }

    fn classify_tokens(
        &self,
        model: String,
        inputs: Vec<String>,
        aggregation: crate::infer::Aggregation,
    ) -> BoxFuture<'static, Result<Vec<Vec<crate::infer::TokenEntity>>, InferError>> {
        let handle = self.handle.clone();
        Box::pin(async move { handle.classify_tokens(&model, inputs, aggregation).await })
    }

    fn export(&self, request: ExportRequest) -> BoxFuture<'static, Result<(), InferError>> {
        let handle = self.handle.clone();
        let format = match request.format {
            ArtifactFormat::Merged => ExportFormat::Merged,
            ArtifactFormat::Adapter => ExportFormat::Adapter,
        };
        Box::pin(async move {
            handle
                .export(
                    request.checkpoint_dir,
                    format,
                    request.base_model_id,
                    request.out_dir,
                )
                .await
        })
    }

    fn chat(
        &self,
        model: String,
        messages: Vec<serde_json::Value>,
        tools: Option<serde_json::Value>,
        params: GenerationParams,
    ) -> BoxFuture<'static, Result<GenerationStream, InferError>> {
        let handle = self.handle.clone();
        let models_dir = self.models_dir.clone();
        Box::pin(async move {
            let started = handle.chat(&model, messages, tools, params).await;
            with_decoder_hint(&models_dir, started)
        })
    }

    fn complete(
        &self,
        model: String,
        prompt: String,
        params: GenerationParams,
    ) -> BoxFuture<'static, Result<GenerationStream, InferError>> {
        let handle = self.handle.clone();
        let models_dir = self.models_dir.clone();
        Box::pin(async move {
            let started = handle.complete(&model, prompt, params).await;
            with_decoder_hint(&models_dir, started)
        })
    }

    fn evict(&self, model: &str) {
        self.handle.evict(model);
    }

    fn loaded_models(&self) -> Vec<crate::telemetry::metrics::LoadedModel> {
        self.handle.loaded_models()
    }
}
