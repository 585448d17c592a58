//! Composition root: the only module that knows every other. `run` opens the store and
//! blobs in the data dir, starts the worker pool and the inference handle, and serves the
//! API on the given listener until `shutdown` is cancelled; then running jobs checkpoint
//! and go back to `queued` before it returns.

use std::sync::Arc;

use anyhow::Context;
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiSettings, AppState, ArtifactFormat, ExportRequest, Inference};
use crate::blobs::Blobs;
use crate::config::Config;
use crate::infer::{
    ClassPrediction, GenerationParams, GenerationStream, InferError, InferenceHandle, ModelCatalog,
    ModelKind, ServableModel,
};
use crate::jobs::{JobsContext, WorkerPool};
use crate::store::Store;
use crate::train::ExportFormat;

/// Serves until `shutdown` is cancelled (SIGTERM/SIGINT in `main`, `Drop` in tests).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let data_dir = &config.storage.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
    let store = Store::open(&config.database_path())
        .await
        .context("opening the database")?;
    let blobs = Blobs::new(data_dir.clone()).context("preparing the data dir")?;
    let pool = Arc::new(WorkerPool::spawn(
        JobsContext {
            store: store.clone(),
            blobs: blobs.clone(),
            models_dir: config.storage.models_dir.clone(),
            devices: config.workers.devices.clone(),
            lease: config.workers.lease(),
            poll_interval: config.workers.poll_interval(),
            max_attempts: config.workers.worker_max_attempts,
        },
        shutdown.clone(),
    ));
    let catalog = Arc::new(StoreCatalog {
        store: store.clone(),
        blobs: blobs.clone(),
    });
    let inference = InferenceHandle::new(
        catalog,
        config.inference.infer_cache_bytes,
        shutdown.clone(),
    );
    // Weak: the router must not keep the pool alive, so `join` below can take it back.
    let weak_pool = Arc::downgrade(&pool);
    let state = AppState {
        store: store.clone(),
        blobs,
        inference: Arc::new(InferenceService(inference)),
        wake_workers: Arc::new(move || {
            if let Some(pool) = weak_pool.upgrade() {
                pool.wake();
            }
        }),
        settings: Arc::new(ApiSettings {
            api_keys: config.server.api_keys.clone(),
            max_upload_bytes: config.server.max_upload_bytes,
            models_dir: config.storage.models_dir.clone(),
        }),
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

/// Resolves servable model names through the `models` table.
struct StoreCatalog {
    store: Store,
    blobs: Blobs,
}

impl ModelCatalog for StoreCatalog {
    fn resolve(&self, model: &str) -> BoxFuture<'_, Result<Option<ServableModel>, String>> {
        let name = model.to_string();
        Box::pin(async move {
            let row = self
                .store
                .get_model(&name)
                .await
                .map_err(|e| e.to_string())?;
            Ok(row.and_then(|row| {
                let kind = match row.kind.as_str() {
                    "classifier" => ModelKind::Classifier,
                    _ => return None,
                };
                Some(ServableModel {
                    name: row.id,
                    dir: self.blobs.path(&row.artifact_dir),
                    kind,
                })
            }))
        })
    }
}

/// The API's view of `InferenceHandle`.
struct InferenceService(InferenceHandle);

impl Inference for InferenceService {
    fn classify(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> BoxFuture<'static, Result<Vec<ClassPrediction>, InferError>> {
        let handle = self.0.clone();
        Box::pin(async move { handle.classify(&model, inputs).await })
    }

    fn export(&self, request: ExportRequest) -> BoxFuture<'static, Result<(), InferError>> {
        let handle = self.0.clone();
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
        let handle = self.0.clone();
        Box::pin(async move { handle.chat(&model, messages, tools, params).await })
    }

    fn complete(
        &self,
        model: String,
        prompt: String,
        params: GenerationParams,
    ) -> BoxFuture<'static, Result<GenerationStream, InferError>> {
        let handle = self.0.clone();
        Box::pin(async move { handle.complete(&model, prompt, params).await })
    }

    fn evict(&self, model: &str) {
        self.0.evict(model);
    }
}
