//! Estimates before training (`POST /v1/fine_tuning/estimates`): everything a create
//! checks, then the job's own preparation (`Training::plan`, the code its trainer runs:
//! the same tokenizer, truncation and batching) on each configured device, without
//! creating a job or loading a model's weights (an image job builds its small classifier
//! for its footprint). It answers the examples, tokens and steps the job will train on,
//! its peak memory on each device against what the device has free, and its duration:
//! from the speed recent jobs of the same base model, task and device measured
//! (`store::ThroughputRow`), or without such history from a stated FLOPs model.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::device::device_by_name;
use super::fine_tune::{prepare_base_model, train_failure};
use super::service::{JobError, JobService, NewJob};
use super::training::{check_model_fits_task, check_options_fit_task, TrainSettings, Training};
use super::validate::{load_and_validate, TrainingData};
use super::JobFailure;
use crate::artifacts::BaseLocation;
use crate::basemodels::{self, BaseModel};
use crate::blobs::Blobs;
use crate::domain::hyperparams::TrainingConfig;
use crate::domain::task::Task;
use crate::store::ThroughputRow;
use crate::train::memory::{self, MemoryEstimate};
use crate::train::plan::{PlanNotes, TrainingPlan};

/// At most this many estimates prepare data at once (each holds its files and their
/// tokens in memory, as a job does); more wait their turn.
const CONCURRENT_ESTIMATES: usize = 2;

/// Sustained f32 training FLOP/s per CPU thread the FLOPs model assumes: measured on a
/// 2-core VM, the training pace (the fitted part that grows with the data) of MiniLM-L6
/// full fine-tuning on Rotten Tomatoes was ~58 GFLOP/s a thread of the model's matmul work,
/// and of SmolLM2-135M LoRA on chat data ~62 (`bench/estimate_accuracy.py`; README,
/// "Estimates before training"). The fixed part of a run (loading, checkpoints) is not in it.
pub const CPU_FLOPS_PER_THREAD: f64 = 60e9;
/// What the FLOPs model assumes of a GPU: a quarter of a current data-center GPU's dense
/// bf16 peak (an H100 has ~990 TFLOP/s). An assumption, not a measurement: history
/// replaces it after the first job on the device.
pub const GPU_FLOPS: f64 = 250e12;

/// What estimates need besides the job service's store: the uploaded files and the
/// devices the workers train on.
#[derive(Clone)]
pub struct EstimateSetup {
    pub blobs: Blobs,
    /// One entry per worker (`cpu`, `cuda:0`); estimated once per distinct name.
    pub devices: Vec<String>,
    permits: Arc<Semaphore>,
}

impl EstimateSetup {
    pub fn new(blobs: Blobs, devices: Vec<String>) -> EstimateSetup {
        EstimateSetup {
            blobs,
            devices,
            permits: Arc::new(Semaphore::new(CONCURRENT_ESTIMATES)),
        }
    }
}

/// The answer: what the job would train with and on, and what it would take.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub model: String,
    pub task: Task,
    /// Every `"auto"` resolved, as the job would resolve it.
    pub config: TrainingConfig,
    pub beta: Option<f64>,
    /// What each `"auto"` became and why.
    pub auto_choices: Vec<String>,
    /// What preparing the data warned of (truncated or skipped examples, a cut context).
    pub warnings: Vec<String>,
    /// Counts (the same on every device; taken from the first that planned).
    pub plan: TrainingPlan,
    pub devices: Vec<DeviceEstimate>,
}

/// One device's share of the estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEstimate {
    /// `cpu`, `cuda:0`.
    pub device: String,
    /// The estimate, or why this device could not be estimated (not available, …).
    pub memory: Result<MemoryEstimate, String>,
    /// What the device has free now (`None` where it cannot tell).
    pub available_bytes: Option<u64>,
    pub duration: Option<Duration>,
}

impl DeviceEstimate {
    /// The estimate and a 15 % margin fit in what the device has free (the check a job
    /// makes before it loads its model); `None` when either is unknown.
    pub fn fits(&self) -> Option<bool> {
        let need = self.memory.as_ref().ok()?.total();
        Some(memory::within_margin(need, self.available_bytes?))
    }
}

/// How long the job should take on a device, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Duration {
    pub seconds: f64,
    pub basis: DurationBasis,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DurationBasis {
    /// Measured by `jobs` recent runs of the same base model, task and device: the part of
    /// a run that does not grow with its data, and the pace of the part that does, in tokens
    /// (text tasks) or examples (images) a second.
    History {
        jobs: usize,
        setup_seconds: f64,
        per_second: f64,
        unit: RateUnit,
    },
    /// `flops` of the whole run (`train::plan::training_flops_per_token`) at an assumed
    /// rate.
    Flops {
        flops: f64,
        assumed_flops_per_second: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    Tokens,
    Examples,
}

impl RateUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            RateUnit::Tokens => "tokens",
            RateUnit::Examples => "examples",
        }
    }
}

/// The duration `plan` should take by what `history` measured, if it measured the unit
/// the plan counts (tokens for text, examples for images): a fixed part plus the plan's
/// work at a pace. Runs of at least two sizes give both by least squares over (work,
/// seconds): the fixed part then holds what each run spends whatever its size (reading the
/// model, checkpoints, the final evaluation and export). A single size gives the runs' own
/// setup (up to their first step) and their pace after it.
pub fn duration_from_history(plan: &TrainingPlan, history: &[ThroughputRow]) -> Option<Duration> {
    let (unit, planned) = if plan.tokens_per_epoch > 0 {
        (RateUnit::Tokens, plan.trained_tokens() as f64)
    } else {
        let planned = plan.train_examples * plan.n_epochs;
        (RateUnit::Examples, planned as f64)
    };
    let work = |row: &ThroughputRow| match unit {
        RateUnit::Tokens => row.tokens as f64,
        RateUnit::Examples => row.samples as f64,
    };
    let runs: Vec<(f64, &ThroughputRow)> = history
        .iter()
        .map(|row| (work(row), row))
        .filter(|(work, row)| *work > 0.0 && row.seconds > 0.0)
        .collect();
    if runs.is_empty() {
        return None;
    }
    let points: Vec<(f64, f64)> = runs.iter().map(|(w, row)| (*w, row.seconds)).collect();
    let (setup_seconds, per_second) = fixed_and_pace(&points).or_else(|| {
        let setup = runs.iter().map(|(_, r)| r.setup_seconds).sum::<f64>() / runs.len() as f64;
        let training: f64 = runs.iter().map(|(_, r)| r.seconds - r.setup_seconds).sum();
        let done: f64 = runs.iter().map(|(w, _)| w).sum();
        (training > 0.0).then(|| (setup, done / training))
    })?;
    Some(Duration {
        seconds: setup_seconds + planned / per_second,
        basis: DurationBasis::History {
            jobs: runs.len(),
            setup_seconds,
            per_second,
            unit,
        },
    })
}

/// `seconds = fixed + work / pace` fitted by least squares to (work, seconds) points;
/// `None` unless they have two sizes at least and give a positive pace and a fixed part
/// that is not negative.
fn fixed_and_pace(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    let mean_work = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_seconds = points.iter().map(|p| p.1).sum::<f64>() / n;
    let spread: f64 = points.iter().map(|p| (p.0 - mean_work).powi(2)).sum();
    if spread <= f64::EPSILON * mean_work * mean_work {
        return None;
    }
    let covariance: f64 = points
        .iter()
        .map(|p| (p.0 - mean_work) * (p.1 - mean_seconds))
        .sum();
    let seconds_per_unit = covariance / spread;
    let fixed = mean_seconds - seconds_per_unit * mean_work;
    (seconds_per_unit > 0.0 && fixed >= 0.0).then(|| (fixed, 1.0 / seconds_per_unit))
}

/// The FLOPs model's duration on `device` (`cpu`: the training pool's threads at
/// [`CPU_FLOPS_PER_THREAD`]; a GPU at [`GPU_FLOPS`]); `None` without a FLOPs count.
pub fn duration_from_flops(
    plan: &TrainingPlan,
    device: &str,
    cpu_threads: usize,
) -> Option<Duration> {
    let flops = plan.flops?;
    let rate = if device == "cpu" {
        CPU_FLOPS_PER_THREAD * cpu_threads.max(1) as f64
    } else {
        GPU_FLOPS
    };
    Some(Duration {
        seconds: flops / rate,
        basis: DurationBasis::Flops {
            flops,
            assumed_flops_per_second: rate,
        },
    })
}

impl JobService {
    /// Every check `create` makes and the job's plan on each configured device; creates
    /// nothing. A file or setting the job would fail on is refused as the job would fail.
    pub async fn estimate(&self, job: &NewJob) -> Result<Estimate, JobError> {
        self.check(job).await?;
        let setup = self.estimates();
        let _permit = setup
            .permits
            .acquire()
            .await
            .map_err(|_| JobError::WouldFail(JobFailure::internal("shutting down")))?;
        let method = &job.spec.method;
        let data = load_and_validate(
            &setup.blobs,
            &job.training_file,
            job.validation_file.as_deref(),
            method,
        )
        .await
        .map_err(JobError::WouldFail)?
        .data;
        let task = data.task();
        check_options_fit_task(&job.spec, task).map_err(JobError::WouldFail)?;
        let seed = u64::try_from(job.seed).unwrap_or(job.seed.unsigned_abs());
        let (config, mut auto_choices) =
            method
                .hyperparameters()
                .resolve_explained(task, data.n_train(), seed);
        let beta = method.resolved_beta().map(|(beta, why)| {
            auto_choices.extend(why);
            beta
        });
        let base = self.start_base(&job.model).await?;
        check_model_fits_task(&job.model, base.kind, task).map_err(JobError::WouldFail)?;
        let model_dir = prepare_base_model(&base, setup.blobs.root())
            .await
            .map_err(JobError::WouldFail)?;
        let settings = (config.clone(), beta);
        let planned =
            plan_on_devices(data, model_dir, &job.model, settings, &setup.devices).await?;
        let Some(plan) = planned.plan else {
            let why: Vec<String> = planned
                .devices
                .iter()
                .filter_map(|(name, memory, _)| {
                    memory.as_ref().err().map(|e| format!("{name}: {e}"))
                })
                .collect();
            let message = format!("No worker device could be estimated ({}).", why.join("; "));
            return Err(JobError::WouldFail(JobFailure::fatal(
                "device_unavailable",
                message,
                None,
            )));
        };
        let mut devices = Vec::new();
        for (device, memory, available) in planned.devices {
            // A device that could not be opened has no duration either.
            let duration = match &memory {
                Err(_) => None,
                Ok(_) => {
                    let history = self
                        .store()
                        .recent_throughput(&job.model, task.stored_name(), &device)
                        .await?;
                    duration_from_history(&plan, &history).or_else(|| {
                        duration_from_flops(&plan, &device, rayon::current_num_threads())
                    })
                }
            };
            devices.push(DeviceEstimate {
                device,
                memory,
                available_bytes: available,
                duration,
            });
        }
        Ok(Estimate {
            model: job.model.clone(),
            task,
            config,
            beta,
            auto_choices,
            warnings: planned.warnings,
            plan,
            devices,
        })
    }

    /// The base model whose configuration and tokenizer the job trains with: the model
    /// itself, or for a fine-tuned start (`ft:…`, checked by `check`) the base it was
    /// trained from, whose architecture and tokenizer it keeps.
    async fn start_base(&self, model: &str) -> Result<BaseModel, JobError> {
        let base_id = match model.strip_prefix("ft:") {
            None => model.to_string(),
            Some(_) => self
                .store()
                .get_model(model)
                .await?
                .and_then(|row| row.base_model)
                .ok_or_else(|| JobError::FineTunedModelNotFound(model.to_string()))?,
        };
        basemodels::resolve(self.models_dir(), &base_id).ok_or_else(|| {
            JobError::BaseModelNotFound {
                model: base_id.clone(),
                hint: basemodels::not_found_hint(self.models_dir(), &base_id, None),
            }
        })
    }
}

/// The plans of every distinct device, made on a blocking thread (tokenizing is CPU work).
struct Planned {
    plan: Option<TrainingPlan>,
    warnings: Vec<String>,
    /// Per device: its name, its memory estimate (or why not), what it has free.
    devices: Vec<(String, Result<MemoryEstimate, String>, Option<u64>)>,
}

async fn plan_on_devices(
    data: TrainingData,
    model_dir: PathBuf,
    model: &str,
    (config, beta): (TrainingConfig, Option<f64>),
    devices: &[String],
) -> Result<Planned, JobError> {
    let mut names: Vec<String> = Vec::new();
    for name in devices {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let location = BaseLocation::JobStartModel {
        id: model.to_string(),
    };
    let planning = move || -> Result<Planned, JobFailure> {
        let mut planned = Planned {
            plan: None,
            warnings: Vec::new(),
            devices: Vec::new(),
        };
        for name in names {
            let device = match device_by_name(&name) {
                Ok(device) => device,
                Err(why) => {
                    planned.devices.push((name, Err(why), None));
                    continue;
                }
            };
            // Plans read the data, the model's files and the settings; they never write
            // (no work directory) nor name the base in a checkpoint (the location).
            let settings = TrainSettings {
                config: config.clone(),
                beta,
            };
            let training = Training::new(
                data.clone(),
                model_dir.clone(),
                location.clone(),
                settings,
                PathBuf::new(),
                device.clone(),
            );
            let mut notes = PlanNotes::default();
            let plan = training.plan(&mut notes).map_err(train_failure)?;
            let available = memory::available_bytes(&device);
            planned.devices.push((name, Ok(plan.memory), available));
            if planned.plan.is_none() {
                planned.plan = Some(plan);
                planned.warnings = notes.warnings;
            }
        }
        Ok(planned)
    };
    tokio::task::spawn_blocking(planning)
        .await
        .map_err(|e| JobError::WouldFail(JobFailure::internal(format!("estimate: {e}"))))?
        .map_err(JobError::WouldFail)
}

#[cfg(test)]
#[path = "estimate_tests.rs"]
mod tests;
