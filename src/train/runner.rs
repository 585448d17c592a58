//! The task-independent training loop shared by classification and SFT.
//!
//! One optimizer step = `gradient_accumulation_steps` micro-batches (fewer at an epoch's
//! end), each mean loss weighted by its share of the step's units (examples for
//! classification, labelled tokens for SFT) so the accumulated gradient equals the
//! gradient of the mean loss over the whole step. Per step: control poll, forward (train
//! mode), backward, accumulate, clip, LR from the schedule, AdamW. A cancel is polled before
//! every micro-batch and again before the step is reported or checkpointed, so it takes
//! effect within the current step: no step, event or checkpoint of training follows it. Evaluations and
//! checkpoints follow at epoch ends, every `eval_steps` / `save_steps`, and whenever a
//! new best model appears. A task ([`TrainTask`]) supplies the model, its loss and its
//! evaluations; [`Trainer`] owns the optimizer, schedule, state and checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::checkpoint::{self, CheckpointContents, CheckpointRecord, TrainState};
use super::evaluate::scalar;
use super::named_metrics::{MetricNames, Metrics, MetricsRow};
use super::optim::{AdamW, AdamWConfig, Gradients, OptimParam};
use super::schedule::LrSchedule;
use super::summary::{checkpoint_metrics, BestMetric};
use super::{Control, EventLevel, SavedCheckpoint, StepMetrics, TrainError, TrainObserver};
use crate::artifacts::checkpoint::{
    latest_resumable, read_tensors, step_dir, CheckpointMeta, OPTIMIZER_FILE, TRAINABLE_FILE,
};
use crate::domain::hyperparams::{OptimizerKind, TrainingConfig};
use crate::zoo::params::{self, NamedVar};

pub(crate) use super::task::{EvalPoint, MicroBatch, TrainTask};

pub(crate) enum LoopEnd {
    Finished,
    Stopped,
    Cancelled,
}

/// What a [`Trainer`] is built from.
pub(crate) struct TrainerSetup<'a> {
    pub config: &'a TrainingConfig,
    pub work_dir: &'a Path,
    pub device: &'a Device,
    pub vars: Vec<NamedVar>,
    pub buffers: Vec<NamedVar>,
    pub n_train: usize,
    pub meta: CheckpointMeta,
    pub best: Option<BestMetric>,
    pub names: &'static MetricNames,
}

pub(crate) struct Trainer<'a> {
    pub config: &'a TrainingConfig,
    pub work_dir: &'a Path,
    pub device: &'a Device,
    /// The model's trainable vars (shared with the optimizer): checkpoints snapshot them,
    /// resume and `load_best` set them.
    vars: Vec<NamedVar>,
    /// State besides the trainable tensors that checkpoints keep (BatchNorm statistics).
    buffers: Vec<NamedVar>,
    optimizer: AdamW,
    schedule: LrSchedule,
    meta: CheckpointMeta,
    best: Option<BestMetric>,
    names: &'static MetricNames,
    pub state: TrainState,
    last_saved_step: Option<usize>,
}

/// Steps of a whole run: `n_epochs` × ceil(batches / accumulation).
pub(crate) fn total_steps(config: &TrainingConfig, n_train: usize) -> usize {
    let n_batches = n_train.div_ceil(config.batch_size.max(1));
    config.n_epochs * n_batches.div_ceil(config.gradient_accumulation_steps.max(1))
}

impl<'a> Trainer<'a> {
    pub fn new(setup: TrainerSetup<'a>) -> Result<Self, TrainError> {
        let cfg = setup.config;
        let vars = setup.vars;
        let params = vars.iter().cloned().map(OptimParam::from).collect();
        let optimizer = AdamW::new(
            params,
            AdamWConfig {
                weight_decay: cfg.weight_decay,
                decoupled: cfg.task_options.image.optimizer != Some(OptimizerKind::Adam),
                ..AdamWConfig::default()
            },
        )?;
        let schedule = LrSchedule::new(
            cfg.lr_scheduler,
            cfg.learning_rate,
            cfg.warmup_ratio,
            total_steps(cfg, setup.n_train),
        );
        Ok(Self {
            vars,
            buffers: setup.buffers,
            config: cfg,
            work_dir: setup.work_dir,
            device: setup.device,
            optimizer,
            schedule,
            meta: setup.meta,
            best: setup.best,
            names: setup.names,
            state: TrainState::default(),
            last_saved_step: None,
        })
    }

    /// Per-parameter learning rates: `scale(name)` times the schedule's (`AdamW::scale_learning_rates`).
    pub fn scale_learning_rates(&mut self, scale: impl Fn(&str) -> f64) {
        self.optimizer.scale_learning_rates(scale);
    }

    pub fn total_steps(&self) -> usize {
        self.schedule.total_steps
    }

    /// Continues from the newest checkpoint that still has optimizer state, if any.
    pub fn resume(&mut self, observer: &mut dyn TrainObserver) -> Result<(), TrainError> {
        let Some((step, dir)) = latest_resumable(self.work_dir)? else {
            return Ok(());
        };
        let tensors = read_tensors(&dir, TRAINABLE_FILE, self.device)?;
        self.load_model_state(&tensors)?;
        self.optimizer.load(&dir.join(OPTIMIZER_FILE))?;
        self.state = checkpoint::read_state(&dir)?;
        // A job that started before the upgrade stored some metrics under older names.
        for row in &mut self.state.history {
            row.rename_aliases(self.names);
        }
        if self.state.step != step || self.optimizer.step_count() != step {
            return Err(TrainError::checkpoint(
                &dir,
                "step in state.json, optimizer and directory name differ",
            ));
        }
        self.last_saved_step = Some(step);
        observer.on_event(EventLevel::Info, format!("Resuming from step {step}"));
        // Re-announce every checkpoint on disk: a process killed between a checkpoint's
        // rename and its row leaves a directory without a row, and the caller writes the
        // rows it lacks (the ones it has are kept).
        for saved in self.saved_checkpoints() {
            if saved.dir.is_dir() {
                observer.on_checkpoint(&saved);
            }
        }
        Ok(())
    }

    pub fn run(
        &mut self,
        task: &dyn TrainTask,
        observer: &mut dyn TrainObserver,
    ) -> Result<LoopEnd, TrainError> {
        let cfg = self.config;
        let accumulation = cfg.gradient_accumulation_steps.max(1);
        while self.state.epoch < cfg.n_epochs {
            task.begin_epoch(self.state.epoch);
            let batches = super::data::epoch_batches(
                task.n_train(),
                cfg.batch_size,
                cfg.seed,
                self.state.epoch,
            );
            while self.state.batch_in_epoch < batches.len() {
                match observer.control() {
                    Control::Continue => {}
                    Control::Cancel => return Ok(LoopEnd::Cancelled),
                    Control::Pause | Control::Shutdown => {
                        if self.state.step > 0 && self.last_saved_step != Some(self.state.step) {
                            let epoch_end = self.state.batch_in_epoch == 0;
                            self.save(epoch_end, observer)?;
                        }
                        return Ok(LoopEnd::Stopped);
                    }
                }
                let start = self.state.batch_in_epoch;
                let group = &batches[start..(start + accumulation).min(batches.len())];
                let lr = self.schedule.lr_at(self.state.step);
                let stepped = crate::runtime::keep_pool_awake(|| {
                    self.optimizer_step(task, group, lr, observer)
                });
                let Some(result) = stepped? else {
                    return Ok(LoopEnd::Cancelled);
                };
                let epoch_of_step = self.state.epoch + 1;
                self.state.step += 1;
                self.state.tokens_seen += result.tokens;
                self.state.batch_in_epoch += group.len();
                let epoch_end = self.state.batch_in_epoch == batches.len();
                if epoch_end {
                    self.state.epoch += 1;
                    self.state.batch_in_epoch = 0;
                }
                let done = StepDone {
                    result,
                    lr,
                    epoch_of_step,
                    epoch_end,
                };
                match self.after_step(task, &done, observer)? {
                    AfterStep::Continue => {}
                    AfterStep::StopEarly => return Ok(LoopEnd::Finished),
                    AfterStep::Cancelled => return Ok(LoopEnd::Cancelled),
                }
                if epoch_end {
                    // `batches` belongs to the finished epoch; the next one reshuffles.
                    break;
                }
            }
        }
        Ok(LoopEnd::Finished)
    }

    /// One optimizer step over `group`; `None` when a cancel arrived before one of its
    /// micro-batches (the weights are left as they were).
    fn optimizer_step(
        &mut self,
        task: &dyn TrainTask,
        group: &[Vec<usize>],
        lr: f64,
        observer: &mut dyn TrainObserver,
    ) -> Result<Option<StepResult>, TrainError> {
        let mut total_units = 0;
        for indices in group {
            total_units += task.units(indices)?;
        }
        if total_units == 0 {
            return Err(TrainError::InvalidData(
                "an optimizer step had nothing to train on".into(),
            ));
        }
        let mut grads: Option<Gradients> = None;
        let (mut loss_sum, mut correct, mut tokens) = (0f64, 0usize, 0u64);
        let mut extra_sums = Metrics::default();
        for (micro_batch, indices) in group.iter().enumerate() {
            if observer.cancel_requested() {
                return Ok(None);
            }
            crate::zoo::cpu::dropout::seed_dropout(dropout_seed(
                self.config.seed,
                self.state.step,
                micro_batch,
            ));
            let out = task.forward_train(indices)?;
            let share = out.units as f64 / total_units as f64;
            let mut store = (&out.loss * share)?.backward()?;
            task.after_backward(&mut store)?;
            match grads.as_mut() {
                Some(acc) => self.optimizer.accumulate(acc, &store)?,
                None => grads = Some(self.optimizer.gradients(&store)?),
            }
            loss_sum += scalar(&out.loss)? * out.units as f64;
            correct += out.correct;
            tokens += out.tokens;
            for (name, mean) in out.extra.iter() {
                let sum = extra_sums.get(name).unwrap_or(0.0);
                extra_sums.set(name, sum + mean * out.units as f64);
            }
        }
        let Some(mut grads) = grads else {
            return Err(TrainError::InvalidData(
                "an optimizer step had no batches".into(),
            ));
        };
        if observer.cancel_requested() {
            return Ok(None);
        }
        grads.clip_global_norm(self.config.max_grad_norm)?;
        self.optimizer.step(&grads, lr)?;
        let mut extra = Metrics::default();
        for (name, sum) in extra_sums.iter() {
            extra.set(name, sum / total_units as f64);
        }
        Ok(Some(StepResult {
            loss: loss_sum / total_units as f64,
            accuracy: correct as f64 / total_units as f64,
            extra,
            tokens,
        }))
    }

    /// Evaluation, metrics, best-model tracking and checkpoints after a step. A cancel that
    /// arrived during the step or its evaluation ends it unreported and unsaved.
    fn after_step(
        &mut self,
        task: &dyn TrainTask,
        done: &StepDone,
        observer: &mut dyn TrainObserver,
    ) -> Result<AfterStep, TrainError> {
        let cfg = self.config;
        let step = self.state.step;
        let hits = |every: Option<usize>| every.is_some_and(|n| n > 0 && step.is_multiple_of(n));
        let at = EvalPoint {
            step,
            epoch_end: done.epoch_end,
            eval_due: hits(cfg.eval_steps),
            regular_save: done.epoch_end || hits(cfg.save_steps) || step == self.total_steps(),
        };
        let mut row = MetricsRow::new(step);
        row.set("train_loss", done.result.loss);
        if let Some(name) = self.names.train_accuracy {
            row.set(name, done.result.accuracy);
        }
        for (name, value) in done.result.extra.iter() {
            row.set(name, value);
        }
        task.evaluate(&at, &mut row)?;
        if observer.cancel_requested() {
            return Ok(AfterStep::Cancelled);
        }
        let (compared, improved) = self.compare_best(&row, at.regular_save);
        let patience = cfg.early_stopping_patience;
        let stop_early = compared
            && patience.is_some_and(|p| p > 0 && self.state.evals_without_improvement >= p);
        observer.on_step(&StepMetrics {
            step,
            total_steps: self.total_steps(),
            epoch: done.epoch_of_step,
            metrics: self
                .names
                .columns()
                .map(|name| (name, row.get(name)))
                .collect(),
            learning_rate: done.lr,
            tokens_seen: self.state.tokens_seen,
        });
        self.state.history.push(row);
        if improved {
            self.state.best_step = Some(step);
        }
        if at.regular_save || improved || stop_early {
            if observer.cancel_requested() {
                return Ok(AfterStep::Cancelled);
            }
            self.save(done.epoch_end, observer)?;
        }
        if stop_early {
            observer.on_event(
                EventLevel::Info,
                format!(
                    "Early stopping at step {step}: no improvement in {} evaluations",
                    self.state.evals_without_improvement
                ),
            );
        }
        Ok(if stop_early {
            AfterStep::StopEarly
        } else {
            AfterStep::Continue
        })
    }

    /// Updates the best metric and the no-improvement counter. Returns (compared, improved).
    /// Validation metrics are compared whenever the step computed them; train metrics only
    /// at regular save points (one step's train loss is too noisy to pick a model by).
    fn compare_best(&mut self, row: &MetricsRow, regular_save: bool) -> (bool, bool) {
        let Some(best) = &self.best else {
            return (false, false);
        };
        if best.is_train_metric() && !regular_save {
            return (false, false);
        }
        let Some(value) = best.value(row) else {
            return (false, false);
        };
        let improved = self
            .state
            .best_metric
            .is_none_or(|b| best.is_better(value, b));
        if improved {
            self.state.best_metric = Some(value);
            self.state.evals_without_improvement = 0;
        } else {
            self.state.evals_without_improvement += 1;
        }
        (true, improved)
    }

    fn save(
        &mut self,
        epoch_end: bool,
        observer: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        let step = self.state.step;
        self.state.checkpoints.retain(|c| c.step != step);
        self.state
            .checkpoints
            .push(CheckpointRecord { step, epoch_end });
        if self.best.is_none() {
            // Without a metric the newest checkpoint is the best one.
            self.state.best_step = Some(step);
        }
        let mut trainable = params::snapshot(&self.vars)?;
        trainable.extend(params::snapshot(&self.buffers)?);
        let optimizer = self.optimizer.state_tensors()?;
        let contents = CheckpointContents {
            trainable: &trainable,
            optimizer: &optimizer,
            state: &self.state,
            meta: &self.meta,
        };
        let dir = checkpoint::write_checkpoint(self.work_dir, &contents)?;
        checkpoint::prune_optimizer_states(self.work_dir, &dir)?;
        self.last_saved_step = Some(step);
        let metrics = checkpoint_metrics(&self.state.history, step, self.names);
        observer.on_checkpoint(&SavedCheckpoint {
            step,
            dir,
            metrics,
            epoch_end,
        });
        Ok(())
    }

    /// The best checkpoint (the newest one without a metric): its step and directory.
    pub fn best_checkpoint(&self) -> Result<(usize, PathBuf), TrainError> {
        let step = self
            .state
            .best_step
            .or_else(|| self.state.checkpoints.last().map(|c| c.step))
            .ok_or_else(|| {
                TrainError::InvalidData("training finished without a checkpoint".into())
            })?;
        Ok((step, step_dir(self.work_dir, step)))
    }

    /// Loads the best checkpoint's weights into the model; returns its step and dir.
    pub fn load_best(&self) -> Result<(usize, PathBuf), TrainError> {
        let (step, dir) = self.best_checkpoint()?;
        let tensors = read_tensors(&dir, TRAINABLE_FILE, self.device)?;
        self.load_model_state(&tensors)?;
        Ok((step, dir))
    }

    /// Sets the trainable tensors and the buffers from a checkpoint's tensors.
    fn load_model_state(&self, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        params::load_into(&self.vars, tensors)?;
        params::load_into(&self.buffers, tensors)?;
        Ok(())
    }

    /// Every checkpoint this job wrote, with its metrics.
    pub fn saved_checkpoints(&self) -> Vec<SavedCheckpoint> {
        self.state
            .checkpoints
            .iter()
            .map(|c| SavedCheckpoint {
                step: c.step,
                dir: step_dir(self.work_dir, c.step),
                metrics: checkpoint_metrics(&self.state.history, c.step, self.names),
                epoch_end: c.epoch_end,
            })
            .collect()
    }
}

/// How training goes on after a step.
enum AfterStep {
    Continue,
    /// Early stopping: training is finished.
    StopEarly,
    Cancelled,
}

/// The dropout seed of micro-batch `micro_batch` of optimizer step `step` (counted from 0):
/// a function of the job's seed and the position alone, so a resumed run draws the masks
/// the uninterrupted one drew.
fn dropout_seed(job_seed: u64, step: usize, micro_batch: usize) -> u64 {
    use crate::zoo::cpu::dropout::mix;
    mix(job_seed ^ mix(((step as u64) << 20) ^ micro_batch as u64))
}

/// Results of one optimizer step's forward/backward passes.
struct StepResult {
    loss: f64,
    accuracy: f64,
    extra: Metrics,
    tokens: u64,
}

struct StepDone {
    result: StepResult,
    lr: f64,
    epoch_of_step: usize,
    epoch_end: bool,
}
