//! Sequence-classification fine-tuning: the training loop.
//!
//! One optimizer step = `gradient_accumulation_steps` micro-batches (fewer at an epoch's
//! end), each loss weighted by its share of the step's examples so the accumulated
//! gradient equals the gradient of the mean loss over all of them. Per step: control poll,
//! forward (train mode), cross-entropy, backward, accumulate, clip, LR from the schedule,
//! AdamW. Evaluations and checkpoints follow at epoch ends, every `eval_steps` /
//! `save_steps`, and whenever a new best model appears.

use std::path::PathBuf;

use candle_core::Device;

use super::checkpoint::{
    self, CheckpointContents, CheckpointMeta, CheckpointRecord, MetricsRow, TrainState,
    OPTIMIZER_FILE, TASK_SEQUENCE_CLASSIFICATION, TRAINABLE_FILE,
};
use super::data::{encode_examples, epoch_batches, make_batch, EncodedExample};
use super::evaluate::{evaluate, forward_batch, scalar, EvalSet, Evaluation};
use super::optim::{AdamW, AdamWConfig, Gradients, OptimParam};
use super::schedule::LrSchedule;
use super::summary::{build_summary, checkpoint_metrics, BestMetric};
use super::{Control, EventLevel, SavedCheckpoint, StepMetrics, TrainError, TrainObserver};
use crate::domain::dataset::LabeledText;
use crate::domain::hyperparams::TrainingConfig;
use crate::zoo::{ClassifierSpec, SequenceClassifier, TextTokenizer};

pub struct ClassificationJob {
    pub base_model_dir: PathBuf,
    pub train: Vec<LabeledText>,
    pub valid: Option<Vec<LabeledText>>,
    /// Label id = index in this list (`domain::dataset::label_set`).
    pub labels: Vec<String>,
    pub config: TrainingConfig,
    /// `checkpoints/step-N/` live here.
    pub work_dir: PathBuf,
    pub device: Device,
}

#[derive(Debug)]
pub enum TrainOutcome {
    Completed(TrainSummary),
    /// Paused or shut down after saving a checkpoint at `step` (no checkpoint at step 0:
    /// a job stopped before its first step simply starts over).
    Stopped {
        step: usize,
    },
    Cancelled,
}

#[derive(Debug)]
pub struct TrainSummary {
    pub best_step: usize,
    pub best_checkpoint: PathBuf,
    /// Non-padding tokens over all steps trained (every epoch counts).
    pub trained_tokens: u64,
    /// `step,train_loss,train_accuracy,valid_loss,valid_accuracy,valid_f1`.
    pub results_csv: String,
    /// Classification report + confusion matrix of the best checkpoint.
    pub report: serde_json::Value,
    pub checkpoints: Vec<SavedCheckpoint>,
}

enum LoopEnd {
    Finished,
    Stopped,
    Cancelled,
}

/// Results of one optimizer step's forward/backward passes.
struct StepResult {
    loss: f64,
    accuracy: f64,
    tokens: u64,
}

pub(crate) struct Run<'a> {
    pub(crate) job: &'a ClassificationJob,
    pub(crate) model: SequenceClassifier,
    optimizer: AdamW,
    schedule: LrSchedule,
    pub(crate) train: Vec<EncodedExample>,
    pub(crate) valid: Option<Vec<EncodedExample>>,
    pub(crate) pad_id: u32,
    meta: CheckpointMeta,
    best: Option<BestMetric>,
    pub(crate) state: TrainState,
    last_saved_step: Option<usize>,
}

pub fn run_classification(
    job: &ClassificationJob,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome, TrainError> {
    let mut run = Run::prepare(job, observer)?;
    run.resume(observer)?;
    match run.train_loop(observer)? {
        LoopEnd::Cancelled => Ok(TrainOutcome::Cancelled),
        LoopEnd::Stopped => Ok(TrainOutcome::Stopped {
            step: run.state.step,
        }),
        LoopEnd::Finished => Ok(TrainOutcome::Completed(build_summary(&mut run, observer)?)),
    }
}

fn validate(job: &ClassificationJob) -> Result<(), TrainError> {
    if job.train.is_empty() {
        return Err(TrainError::InvalidData(
            "the training file has no examples".into(),
        ));
    }
    if job.labels.len() < 2 {
        return Err(TrainError::InvalidData(format!(
            "classification needs at least 2 distinct labels, found {}",
            job.labels.len()
        )));
    }
    if job.config.batch_size == 0 || job.config.n_epochs == 0 {
        return Err(TrainError::InvalidData(
            "`batch_size` and `n_epochs` must be at least 1".into(),
        ));
    }
    Ok(())
}

impl<'a> Run<'a> {
    fn prepare(
        job: &'a ClassificationJob,
        observer: &mut dyn TrainObserver,
    ) -> Result<Self, TrainError> {
        validate(job)?;
        let cfg = &job.config;
        let tokenizer = TextTokenizer::from_dir(&job.base_model_dir)?;
        let train = encode_examples(&tokenizer, &job.train, &job.labels, cfg.max_seq_len)?;
        let valid = match job.valid.as_deref() {
            Some(valid) if !valid.is_empty() => Some(encode_examples(
                &tokenizer,
                valid,
                &job.labels,
                cfg.max_seq_len,
            )?),
            _ => None,
        };
        let spec = ClassifierSpec {
            num_labels: job.labels.len(),
            lora: (cfg.lora.rank > 0).then(|| cfg.lora.clone()),
            classifier_dropout: None,
        };
        let model =
            SequenceClassifier::from_pretrained(&job.base_model_dir, &spec, &job.device, cfg.seed)?;
        let params = model
            .trainable_vars()
            .into_iter()
            .map(|v| OptimParam {
                name: v.name,
                var: v.var,
                weight_decay: v.weight_decay,
            })
            .collect();
        let optimizer = AdamW::new(
            params,
            AdamWConfig {
                weight_decay: cfg.weight_decay,
                ..AdamWConfig::default()
            },
        )?;
        let n_batches = train.len().div_ceil(cfg.batch_size);
        let total_steps = cfg.n_epochs * n_batches.div_ceil(cfg.gradient_accumulation_steps.max(1));
        let schedule = LrSchedule::new(
            cfg.lr_scheduler,
            cfg.learning_rate,
            cfg.warmup_ratio,
            total_steps,
        );
        let best = BestMetric::resolve(
            cfg.metric_for_best_model.as_deref(),
            valid.is_some(),
            observer,
        );
        let meta = CheckpointMeta {
            task: TASK_SEQUENCE_CLASSIFICATION.to_string(),
            base_model_dir: job.base_model_dir.clone(),
            labels: job.labels.clone(),
            spec,
            max_seq_len: cfg.max_seq_len,
            seed: cfg.seed,
        };
        Ok(Self {
            job,
            model,
            optimizer,
            schedule,
            train,
            valid,
            pad_id: tokenizer.pad_id(),
            meta,
            best,
            state: TrainState::default(),
            last_saved_step: None,
        })
    }

    /// Continues from the newest checkpoint that still has optimizer state, if any.
    fn resume(&mut self, observer: &mut dyn TrainObserver) -> Result<(), TrainError> {
        let Some((step, dir)) = checkpoint::latest_resumable(&self.job.work_dir)? else {
            return Ok(());
        };
        let tensors = checkpoint::read_tensors(&dir, TRAINABLE_FILE, &self.job.device)?;
        self.model.load_trainable(&tensors)?;
        self.optimizer.load(&dir.join(OPTIMIZER_FILE))?;
        self.state = checkpoint::read_state(&dir)?;
        if self.state.step != step || self.optimizer.step_count() != step {
            return Err(TrainError::checkpoint(
                &dir,
                "step in state.json, optimizer and directory name differ",
            ));
        }
        self.last_saved_step = Some(step);
        observer.on_event(EventLevel::Info, format!("Resuming from step {step}"));
        Ok(())
    }

    pub(crate) fn total_steps(&self) -> usize {
        self.schedule.total_steps
    }

    fn train_loop(&mut self, observer: &mut dyn TrainObserver) -> Result<LoopEnd, TrainError> {
        let cfg = &self.job.config;
        let accumulation = cfg.gradient_accumulation_steps.max(1);
        while self.state.epoch < cfg.n_epochs {
            let batches =
                epoch_batches(self.train.len(), cfg.batch_size, cfg.seed, self.state.epoch);
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
                let result = self.optimizer_step(group, lr)?;
                let epoch_of_step = self.state.epoch + 1;
                self.state.step += 1;
                self.state.tokens_seen += result.tokens;
                self.state.batch_in_epoch += group.len();
                let epoch_end = self.state.batch_in_epoch == batches.len();
                if epoch_end {
                    self.state.epoch += 1;
                    self.state.batch_in_epoch = 0;
                }
                let stop_early =
                    self.after_step(&result, lr, epoch_of_step, epoch_end, observer)?;
                if stop_early {
                    return Ok(LoopEnd::Finished);
                }
                if epoch_end {
                    // `batches` belongs to the finished epoch; the next one reshuffles.
                    break;
                }
            }
        }
        Ok(LoopEnd::Finished)
    }

    fn optimizer_step(&mut self, group: &[Vec<usize>], lr: f64) -> Result<StepResult, TrainError> {
        let n_examples: usize = group.iter().map(Vec::len).sum();
        let mut grads: Option<Gradients> = None;
        let (mut loss_sum, mut correct, mut tokens) = (0f64, 0usize, 0u64);
        for indices in group {
            let batch = make_batch(&self.train, indices, self.pad_id, &self.job.device)?;
            let out = forward_batch(&self.model, &batch, true)?;
            let share = batch.len() as f64 / n_examples as f64;
            let store = (&out.loss * share)?.backward()?;
            match grads.as_mut() {
                Some(acc) => self.optimizer.accumulate(acc, &store)?,
                None => grads = Some(self.optimizer.gradients(&store)),
            }
            loss_sum += scalar(&out.loss)? * batch.len() as f64;
            correct += out
                .predictions
                .iter()
                .zip(&batch.label_ids)
                .filter(|(p, t)| p == t)
                .count();
            tokens += batch.inputs.n_tokens as u64;
        }
        let Some(mut grads) = grads else {
            return Err(TrainError::InvalidData(
                "an optimizer step had no batches".into(),
            ));
        };
        grads.clip_global_norm(self.job.config.max_grad_norm)?;
        self.optimizer.step(&grads, lr)?;
        Ok(StepResult {
            loss: loss_sum / n_examples as f64,
            accuracy: correct as f64 / n_examples as f64,
            tokens,
        })
    }

    /// Evaluation, metrics, best-model tracking and checkpoints after a step. Returns
    /// true when early stopping ends training.
    fn after_step(
        &mut self,
        result: &StepResult,
        lr: f64,
        epoch_of_step: usize,
        epoch_end: bool,
        observer: &mut dyn TrainObserver,
    ) -> Result<bool, TrainError> {
        let cfg = &self.job.config;
        let step = self.state.step;
        let hits = |every: Option<usize>| every.is_some_and(|n| n > 0 && step.is_multiple_of(n));
        let regular_save = epoch_end || hits(cfg.save_steps) || step == self.total_steps();
        let evaluation = if epoch_end || hits(cfg.eval_steps) || regular_save {
            self.evaluate_valid()?
        } else {
            None
        };
        let row = MetricsRow {
            step,
            train_loss: result.loss,
            train_accuracy: result.accuracy,
            valid_loss: evaluation.as_ref().map(|e| e.loss),
            valid_accuracy: evaluation.as_ref().map(|e| e.accuracy),
            valid_f1: evaluation.as_ref().map(|e| e.macro_f1),
        };
        let (compared, improved) = self.compare_best(&row, evaluation.is_some(), regular_save);
        let patience = cfg.early_stopping_patience;
        let stop_early = compared
            && patience.is_some_and(|p| p > 0 && self.state.evals_without_improvement >= p);
        observer.on_step(&StepMetrics {
            step,
            total_steps: self.total_steps(),
            epoch: epoch_of_step,
            train_loss: row.train_loss,
            train_accuracy: row.train_accuracy,
            valid_loss: row.valid_loss,
            valid_accuracy: row.valid_accuracy,
            valid_f1: row.valid_f1,
            learning_rate: lr,
            tokens_seen: self.state.tokens_seen,
        });
        self.state.history.push(row);
        if improved {
            self.state.best_step = Some(step);
        }
        if regular_save || improved || stop_early {
            self.save(epoch_end, observer)?;
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
        Ok(stop_early)
    }

    fn evaluate_valid(&self) -> Result<Option<Evaluation>, TrainError> {
        let Some(valid) = self.valid.as_deref() else {
            return Ok(None);
        };
        let set = EvalSet {
            examples: valid,
            n_labels: self.job.labels.len(),
            batch_size: self.job.config.batch_size,
            pad_id: self.pad_id,
        };
        Ok(Some(evaluate(&self.model, &set, &self.job.device)?))
    }

    /// Updates the best metric and the no-improvement counter. Returns (compared, improved).
    fn compare_best(
        &mut self,
        row: &MetricsRow,
        evaluated: bool,
        regular_save: bool,
    ) -> (bool, bool) {
        let Some(best) = &self.best else {
            return (false, false);
        };
        // Validation metrics are compared at every evaluation; train metrics only at
        // regular save points (one step's train loss is too noisy to pick a model by).
        if !(evaluated || (regular_save && best.is_train_metric())) {
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
        let trainable = self.model.trainable_tensors()?;
        let optimizer = self.optimizer.state_tensors()?;
        let contents = CheckpointContents {
            trainable: &trainable,
            optimizer: &optimizer,
            state: &self.state,
            meta: &self.meta,
        };
        let dir = checkpoint::write_checkpoint(&self.job.work_dir, &contents)?;
        checkpoint::prune_optimizer_states(&self.job.work_dir, &dir)?;
        self.last_saved_step = Some(step);
        let metrics = checkpoint_metrics(&self.state.history, step);
        observer.on_checkpoint(&SavedCheckpoint {
            step,
            dir,
            metrics,
            epoch_end,
        });
        Ok(())
    }
}
