//! The Prometheus metrics `GET /metrics` serves, in one registry.
//!
//! `app.rs` makes one [`Metrics`] (cheap to clone: an `Arc`) and hands each part of the
//! service the narrow recorder it needs: the api its [`HttpMetrics`] layer and the upload
//! counter, the worker pool [`TrainingMetrics`], the inference engines
//! [`GenerationMetrics`]. What the store, the worker pool and the model registry already
//! know (jobs by status, busy workers, loaded models) is read at scrape time into a
//! [`Snapshot`] instead of being mirrored.
//!
//! Memory stays bounded because every label takes values from a bounded set: job statuses
//! and HTTP methods from a fixed list, routes from the router's templates (unknown paths
//! share [`UNMATCHED_ROUTE`]), workers from the configured devices, and job ids and model
//! names only while the job runs or the model is loaded (their series are removed then).
//!
//! # Layout
//! - here: [`Metrics`], the names, the scrape-time gauges and the encoding.
//! - `http.rs`: requests by route and status, latency histograms.
//! - `generation.rs`: tokens, tokens/s per loaded model, time to first token, batch sizes.
//! - `training.rs`: tokens/s and step seconds of each running job.

mod generation;
mod http;
#[cfg(test)]
pub(crate) mod scrape;
#[cfg(test)]
mod tests;
mod training;

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

pub use crate::domain::job::JobCounts;
use crate::domain::job::JobStatus;

pub use generation::{EngineMetrics, GenerationMetrics};
pub use http::{HttpMetrics, UNMATCHED_ROUTE};
pub use training::{JobTrainingMetrics, TrainingMetrics};

/// Every metric name starts with it.
pub const PREFIX: &str = "temper";

/// `Content-Type` of the Prometheus text format (version 0.0.4), served by default.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// `Content-Type` of OpenMetrics text, served when the scraper asks for it (`Accept`), as
/// Prometheus does by default.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A gauge holding a float (seconds, rates).
pub(crate) type FloatGauge = Gauge<f64, AtomicU64>;

/// The label set of a series without labels, in a family so that it can be removed (a
/// value the scrape could not read is left out, never shown stale).
type NoLabels = [(&'static str, &'static str); 0];

/// The text format of a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `accept` (the request's `Accept` header) names it, else Prometheus
    /// text.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => PROMETHEUS_TEXT,
            Format::OpenMetrics => OPENMETRICS_TEXT,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
    device: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoadedLabels {
    kind: &'static str,
    model: String,
}

/// What the store, the worker pool and the model registry report at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// `None` when the store did not answer: the job gauges are left out of the scrape
    /// rather than shown stale.
    pub jobs: Option<JobCounts>,
    pub workers: Vec<WorkerState>,
    pub loaded: Vec<LoadedModel>,
}

/// One worker of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerState {
    /// Its place in `--devices`.
    pub index: usize,
    pub device: String,
    /// Running a job now.
    pub busy: bool,
}

/// One loaded model or LoRA adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedModel {
    pub name: String,
    /// `model` or `adapter`.
    pub kind: &'static str,
    pub bytes: u64,
}

/// The kinds [`LoadedModel::kind`] takes; each is exported, 0 when none is loaded.
pub const LOADED_KINDS: [&str; 2] = ["model", "adapter"];

/// The registry and every metric in it. Cheap to clone; every clone records into the same
/// registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    /// Held while a scrape refills the scrape-time gauges and encodes the registry, so
    /// two concurrent scrapes never encode each other's half-refilled families.
    scrape: Mutex<()>,
    jobs: Family<StatusLabel, Gauge>,
    queue_depth: Family<NoLabels, Gauge>,
    worker_busy: Family<WorkerLabels, Gauge>,
    loaded_models: Family<KindLabel, Gauge>,
    loaded_bytes: Family<LoadedLabels, Gauge>,
    upload_bytes: Counter,
    webhook_deliveries: Counter,
    webhook_failures: Counter,
    http: HttpMetrics,
    generation: GenerationMetrics,
    training: TrainingMetrics,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry holding every metric of the service.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let jobs = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "fine_tuning_jobs",
            "Fine-tuning jobs by status",
            jobs.clone(),
        );
        let queue_depth = Family::<NoLabels, Gauge>::default();
        registry.register(
            "fine_tuning_queue_depth",
            "Jobs waiting for a worker (validating_files or queued, not claimed)",
            queue_depth.clone(),
        );
        let worker_busy = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_busy",
            "1 while the worker (by its place in --devices) runs a job, else 0",
            worker_busy.clone(),
        );
        let loaded_models = Family::<KindLabel, Gauge>::default();
        registry.register(
            "loaded_models",
            "Models and LoRA adapters loaded for inference",
            loaded_models.clone(),
        );
        let loaded_bytes = Family::<LoadedLabels, Gauge>::default();
        registry.register_with_unit(
            "loaded_model",
            "Parameter bytes of each loaded model or adapter",
            Unit::Bytes,
            loaded_bytes.clone(),
        );
        let upload_bytes = Counter::default();
        registry.register_with_unit(
            "upload",
            "Bytes of files uploaded and stored",
            Unit::Bytes,
            upload_bytes.clone(),
        );
        let webhook_deliveries = Counter::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries attempted",
            webhook_deliveries.clone(),
        );
        let webhook_failures = Counter::default();
        registry.register(
            "webhook_delivery_failures",
            "Webhook deliveries that failed",
            webhook_failures.clone(),
        );
        let http = HttpMetrics::register(&mut registry);
        let generation = GenerationMetrics::register(&mut registry);
        let training = TrainingMetrics::register(&mut registry);
        Metrics(Arc::new(Inner {
            registry,
            scrape: Mutex::new(()),
            jobs,
            queue_depth,
            worker_busy,
            loaded_models,
            loaded_bytes,
            upload_bytes,
            webhook_deliveries,
            webhook_failures,
            http,
            generation,
            training,
        }))
    }

    /// The recorder of the api's HTTP layer.
    pub fn http(&self) -> HttpMetrics {
        self.0.http.clone()
    }

    /// The recorder the inference engines get.
    pub fn generation(&self) -> GenerationMetrics {
        self.0.generation.clone()
    }

    /// The recorder the worker pool gets.
    pub fn training(&self) -> TrainingMetrics {
        self.0.training.clone()
    }

    /// Counts `bytes` of an upload that was stored.
    pub fn uploaded(&self, bytes: u64) {
        self.0.upload_bytes.inc_by(bytes);
    }

    /// The webhook deliverer calls this for every delivery it attempts (retries included).
    pub fn webhook_attempted(&self) {
        self.0.webhook_deliveries.inc();
    }

    /// The webhook deliverer calls this for every attempt that failed (no answer, or a
    /// status other than 2xx).
    pub fn webhook_attempt_failed(&self) {
        self.0.webhook_failures.inc();
    }

    /// Refills the scrape-time gauges from `snapshot` and encodes every metric.
    pub fn render(&self, snapshot: &Snapshot, format: Format) -> Result<String, fmt::Error> {
        let inner = &*self.0;
        // A poisoned lock only means a scrape panicked mid-encode; the families are whole.
        let _scrape = inner
            .scrape
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.refill(snapshot);
        let mut out = String::new();
        match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &inner.registry)?
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &inner.registry)?
            }
        }
        Ok(out)
    }

    fn refill(&self, snapshot: &Snapshot) {
        let inner = &*self.0;
        inner.jobs.clear();
        inner.queue_depth.clear();
        if let Some(counts) = &snapshot.jobs {
            for status in JobStatus::ALL {
                let count = counts.of(status);
                let label = StatusLabel {
                    status: status.as_str(),
                };
                inner.jobs.get_or_create(&label).set(count);
            }
            inner.queue_depth.get_or_create(&[]).set(counts.waiting);
        }
        inner.worker_busy.clear();
        for worker in &snapshot.workers {
            let labels = WorkerLabels {
                worker: worker.index.to_string(),
                device: worker.device.clone(),
            };
            inner
                .worker_busy
                .get_or_create(&labels)
                .set(i64::from(worker.busy));
        }
        inner.loaded_models.clear();
        inner.loaded_bytes.clear();
        for kind in LOADED_KINDS {
            let count = snapshot.loaded.iter().filter(|m| m.kind == kind).count();
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            inner
                .loaded_models
                .get_or_create(&KindLabel { kind })
                .set(count);
        }
        for model in &snapshot.loaded {
            let labels = LoadedLabels {
                kind: model.kind,
                model: model.name.clone(),
            };
            let bytes = i64::try_from(model.bytes).unwrap_or(i64::MAX);
            inner.loaded_bytes.get_or_create(&labels).set(bytes);
        }
    }
}
