//! `POST /v1/fine_tuning/estimates`: the body of a job create, answered with what the job
//! would train on and take (`jobs::estimate`) instead of a job. temper's own route (OpenAI
//! has none); the SDKs reach it with `client.post("/fine_tuning/estimates", …)`.
//!
//! *Choice*: a route of its own rather than `"dry_run": true` on the create, so that the
//! create keeps answering a `FineTuningJob` whatever its body says, as the SDKs' types
//! expect.

use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Router;
use serde::Serialize;
use serde_json::Value;

use super::error::{ApiError, ApiJson};
use super::job_request::{parse_create, CreateJobBody};
use super::job_wire::method_echo;
use super::AppState;
use crate::domain::job_spec::{JobSpec, ResolvedHyperparameters};
use crate::jobs::{DeviceEstimate, DurationBasis, Estimate, EstimatedDuration};

pub const ROUTES: &[(Method, &str)] = &[(Method::POST, "/v1/fine_tuning/estimates")];

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/fine_tuning/estimates", post(estimate_job))
}

async fn estimate_job(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateJobBody>,
) -> Result<ApiJson<EstimateObject>, ApiError> {
    let job = parse_create(body)?;
    let estimate = state.jobs.estimate(&job).await?;
    Ok(ApiJson(EstimateObject::new(estimate, &job.spec)))
}

/// `fine_tuning.estimate`.
#[derive(Debug, Serialize)]
pub struct EstimateObject {
    pub object: &'static str,
    pub model: String,
    /// `classification`, `chat`, … (the job's `task` once it runs).
    pub task: &'static str,
    /// The method as the job would echo it once running: every `"auto"` resolved.
    pub method: Value,
    /// What each `"auto"` became and why.
    pub auto_choices: Vec<String>,
    /// What preparing the data warned of.
    pub warnings: Vec<String>,
    /// Examples (QA: context windows) an epoch trains on, and of the validation file.
    pub training_examples: usize,
    pub validation_examples: usize,
    /// Tokens an epoch reads, padding excluded (0 for images).
    pub tokens_per_epoch: u64,
    /// What the job's `trained_tokens` will be when it runs every epoch.
    pub trained_tokens: u64,
    pub n_epochs: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    /// Matmul FLOPs of the run (transformers), the FLOPs model's input.
    pub training_flops: Option<f64>,
    pub devices: Vec<DeviceObject>,
}

#[derive(Debug, Serialize)]
pub struct DeviceObject {
    pub device: String,
    /// Why this device could not be estimated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub memory: Option<MemoryObject>,
    pub duration: Option<DurationObject>,
}

#[derive(Debug, Serialize)]
pub struct MemoryObject {
    /// The estimated peak.
    pub total_bytes: u64,
    pub weights_bytes: u64,
    /// Gradients and AdamW moments of what trains.
    pub optimizer_bytes: u64,
    pub activations_bytes: u64,
    /// Free on the device now; `null` where it cannot tell.
    pub available_bytes: Option<u64>,
    /// The peak and a 15 % margin fit in that (the check the job makes before it loads).
    pub fits: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct DurationObject {
    pub seconds: f64,
    /// `history` or `flops`.
    pub basis: &'static str,
    /// History: the runs measured, and their pace in `unit`s (tokens or examples) a second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_jobs: Option<usize>,
    /// History: the part of a run that does not grow with its data (fitted over runs of two
    /// sizes, else the runs' time to their first step), which `seconds` includes once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<&'static str>,
    /// FLOPs model: the rate assumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assumed_flops_per_second: Option<f64>,
}

impl EstimateObject {
    fn new(estimate: Estimate, spec: &JobSpec) -> EstimateObject {
        let resolved = ResolvedHyperparameters {
            config: estimate.config,
            beta: estimate.beta,
        };
        let plan = estimate.plan;
        EstimateObject {
            object: "fine_tuning.estimate",
            model: estimate.model,
            task: estimate.task.stored_name(),
            method: method_echo(spec, Some(&resolved)),
            auto_choices: estimate.auto_choices,
            warnings: estimate.warnings,
            training_examples: plan.train_examples,
            validation_examples: plan.valid_examples,
            tokens_per_epoch: plan.tokens_per_epoch,
            trained_tokens: plan.trained_tokens(),
            n_epochs: plan.n_epochs,
            steps_per_epoch: plan.steps_per_epoch,
            total_steps: plan.total_steps,
            training_flops: plan.flops,
            devices: estimate
                .devices
                .into_iter()
                .map(DeviceObject::from)
                .collect(),
        }
    }
}

impl From<DeviceEstimate> for DeviceObject {
    fn from(device: DeviceEstimate) -> DeviceObject {
        let fits = device.fits();
        let (memory, error) = match device.memory {
            Ok(memory) => (
                Some(MemoryObject {
                    total_bytes: memory.total(),
                    weights_bytes: memory.weights,
                    optimizer_bytes: memory.optimizer,
                    activations_bytes: memory.activations,
                    available_bytes: device.available_bytes,
                    fits,
                }),
                None,
            ),
            Err(why) => (None, Some(why)),
        };
        DeviceObject {
            device: device.device,
            error,
            memory,
            duration: device.duration.map(DurationObject::from),
        }
    }
}

impl From<EstimatedDuration> for DurationObject {
    fn from(duration: EstimatedDuration) -> DurationObject {
        let mut object = DurationObject {
            seconds: duration.seconds,
            basis: "history",
            history_jobs: None,
            setup_seconds: None,
            per_second: None,
            unit: None,
            assumed_flops_per_second: None,
        };
        match duration.basis {
            DurationBasis::History {
                jobs,
                setup_seconds,
                per_second,
                unit,
            } => {
                object.history_jobs = Some(jobs);
                object.setup_seconds = Some(setup_seconds);
                object.per_second = Some(per_second);
                object.unit = Some(unit.as_str());
            }
            DurationBasis::Flops {
                assumed_flops_per_second,
                ..
            } => {
                object.basis = "flops";
                object.assumed_flops_per_second = Some(assumed_flops_per_second);
            }
        }
        object
    }
}
