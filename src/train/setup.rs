//! How every task starts, drives and ends a run on the shared loop, written once.
//!
//! A task prepares its model and data, then hands [`run_task`] what differs between tasks
//! ([`RunSetup`]: metric names, the checkpoint's task, the new head's tensor names, …) and
//! a closure that builds its final summary. `run_task` does the rest in the same order for
//! every task: best-model metric, checkpoint meta, [`Trainer`], the new head's learning
//! rate, resume, the task's work before a first step, the loop, and the outcome.

use std::path::Path;

use candle_core::{DType, Device};

use super::named_metrics::MetricNames;
use super::runner::{LoopEnd, TrainTask, Trainer, TrainerSetup};
use super::summary::BestMetric;
use super::{TrainError, TrainObserver, TrainOutcome, TrainSummary};
use crate::artifacts::checkpoint::{CheckpointMeta, CheckpointTask};
use crate::artifacts::BaseLocation;
use crate::domain::hyperparams::{Precision, TrainingConfig};
use crate::zoo::params::NamedVar;

/// PEFT names every tensor of a LoRA model under this prefix (`base_model.model.classifier.…`).
const PEFT_PREFIX: &str = "base_model.model.";

/// Refuses loop settings no run can use, before a task spends time loading its model.
pub(crate) fn check_loop_settings(config: &TrainingConfig) -> Result<(), TrainError> {
    if config.batch_size == 0 || config.n_epochs == 0 {
        return Err(TrainError::InvalidData(
            "`batch_size` and `n_epochs` must be at least 1".into(),
        ));
    }
    Ok(())
}

/// What differs between tasks when a run is set up.
pub(crate) struct RunSetup<'a> {
    pub config: &'a TrainingConfig,
    /// `checkpoints/step-N/` live here.
    pub work_dir: &'a Path,
    pub device: &'a Device,
    /// The task's metrics: best model, events, results CSV and checkpoint metrics.
    pub names: &'static MetricNames,
    /// What `meta.json` records to rebuild the model (labels, head spec, LoRA, …).
    pub checkpoint: CheckpointTask,
    /// The base the model is trained over, as `meta.json` names it.
    pub base_model: BaseLocation,
    /// The sequence length the task trains with (the config's, or cut to the model's
    /// positions).
    pub max_seq_len: usize,
    /// Name prefixes of the head made from scratch (`classifier.`), which learns at
    /// `head_learning_rate` when the config sets one; matched with PEFT's prefix removed.
    /// Empty for tasks whose every tensor is pretrained.
    pub new_head: &'static [&'static str],
    /// The model's trainable tensors.
    pub vars: Vec<NamedVar>,
    /// Whether the task has validation data (it decides the default best-model metric).
    pub has_valid: bool,
    /// State the model changes outside the optimizer (BatchNorm running statistics):
    /// checkpointed with the trainable tensors, restored on resume.
    pub buffers: Vec<NamedVar>,
    /// The learning rate of every pretrained tensor (not `new_head`) over the schedule's,
    /// e.g. an image backbone unfrozen under a new head; 1 for the other tasks.
    pub pretrained_lr_scale: f64,
}

/// Whether tensor `name` belongs to a head made from scratch, under any of `prefixes`.
/// The matmul dtype of a text job: its `precision`, by default bf16 on a GPU (mixed
/// precision) and f32 on the CPU.
pub(crate) fn compute_dtype(cfg: &TrainingConfig, device: &Device) -> DType {
    match cfg.precision {
        Some(Precision::Bf16) => DType::BF16,
        Some(Precision::F32) => DType::F32,
        None if !device.is_cpu() => DType::BF16,
        None => DType::F32,
    }
}

pub(crate) fn is_new_head(name: &str, prefixes: &[&str]) -> bool {
    let name = name.strip_prefix(PEFT_PREFIX).unwrap_or(name);
    prefixes.iter().any(|prefix| name.starts_with(prefix))
}

/// Trains `task` from `setup`, resuming from the newest complete checkpoint in the work
/// directory (exact: step, optimizer, data order); `summarize` builds the summary of a run
/// that finished.
pub(crate) fn run_task<S>(
    setup: RunSetup<'_>,
    task: &dyn TrainTask,
    observer: &mut dyn TrainObserver,
    summarize: S,
) -> Result<TrainOutcome, TrainError>
where
    S: FnOnce(&Trainer<'_>, &mut dyn TrainObserver) -> Result<TrainSummary, TrainError>,
{
    let cfg = setup.config;
    let best = BestMetric::resolve(
        cfg.metric_for_best_model.as_deref(),
        setup.names,
        setup.has_valid,
        observer,
    );
    let meta = CheckpointMeta {
        task: setup.checkpoint,
        base_model: setup.base_model,
        max_seq_len: setup.max_seq_len,
        seed: cfg.seed,
    };
    let mut trainer = Trainer::new(TrainerSetup {
        config: cfg,
        work_dir: setup.work_dir,
        device: setup.device,
        vars: setup.vars,
        buffers: setup.buffers,
        n_train: task.n_train(),
        meta,
        best,
        names: setup.names,
    })?;
    let head_scale = cfg
        .head_learning_rate
        .map_or(1.0, |head_lr| head_lr / cfg.learning_rate);
    let pretrained_scale = setup.pretrained_lr_scale;
    if head_scale != 1.0 || pretrained_scale != 1.0 {
        let prefixes = setup.new_head;
        trainer.scale_learning_rates(|name| {
            if is_new_head(name, prefixes) {
                head_scale
            } else {
                pretrained_scale
            }
        });
    }
    trainer.resume(observer)?;
    if trainer.state.step == 0 {
        task.before_first_step(&mut trainer.state, observer)?;
    }
    match trainer.run(task, observer)? {
        LoopEnd::Cancelled => Ok(TrainOutcome::Cancelled),
        LoopEnd::Stopped => Ok(TrainOutcome::Stopped {
            step: trainer.state.step,
        }),
        LoopEnd::Finished => Ok(TrainOutcome::Completed(summarize(&trainer, observer)?)),
    }
}
