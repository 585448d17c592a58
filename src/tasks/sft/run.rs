//! `run_sft`: the decoder as a [`TrainTask`] for the shared loop in `runner.rs`.
//!
//! Loss = mean cross-entropy over the trained tokens of the whole optimizer step (the
//! runner weights each micro-batch by its share of them). Evaluation follows OpenAI's
//! metrics: `valid_*` on ONE validation batch (rotating through the set) every
//! `eval_steps` and at save points, `full_valid_*` on the whole set at each epoch end,
//! plus one full validation before the first step ("validation loss before").

use std::path::PathBuf;

use candle_core::backprop::GradStore;
use candle_core::Device;
use serde_json::json;

use super::batch::{make_lm_batch, masked_next_token_loss};
use super::decoder_job::{
    check_memory, decoder_for_job, decoder_memory, decoder_spec, fit_to_context, lm_spec, run_mode,
    Placement,
};
use super::prepare::{PreparedSet, SftExample, SftExamples, SftTokenizer};
use crate::artifacts::checkpoint::CheckpointTask;
use crate::domain::hyperparams::TrainingConfig;
use crate::train::checkpoint::TrainState;
use crate::train::data::sequential_batches;
use crate::train::named_metrics::{MetricNames, Metrics, MetricsRow};
use crate::train::plan::{decoder_weights_per_token, training_flops_per_token, TrainingPlan};
use crate::train::runner::{EvalPoint, MicroBatch, TrainTask, Trainer};
use crate::train::setup::{check_loop_settings, run_task, RunSetup};
use crate::train::summary::results_csv;
use crate::train::{EventLevel, TrainError, TrainObserver, TrainOutcome, TrainSummary};
use crate::zoo::decoder::{CausalLm, DecoderConfig, DecoderSpec};

/// OpenAI's names for chat / prompt-completion fine-tuning metrics: mean token accuracies,
/// `valid_*` on one validation batch, `full_valid_*` on the whole set (epoch ends).
pub const SFT_METRICS: MetricNames = MetricNames {
    train: &["train_loss", "train_mean_token_accuracy"],
    valid: &[
        "valid_loss",
        "valid_mean_token_accuracy",
        "full_valid_loss",
        "full_valid_mean_token_accuracy",
    ],
    train_accuracy: Some("train_mean_token_accuracy"),
    default_best: "full_valid_loss",
    aliases: &[
        ("train_accuracy", "train_mean_token_accuracy"),
        ("valid_accuracy", "valid_mean_token_accuracy"),
        ("full_valid_accuracy", "full_valid_mean_token_accuracy"),
    ],
};

pub struct SftJob {
    pub base_model_dir: PathBuf,
    /// How checkpoints name that base (`meta.json`).
    pub base_model: crate::artifacts::BaseLocation,
    pub train: SftExamples,
    pub valid: Option<SftExamples>,
    pub config: TrainingConfig,
    /// `checkpoints/step-N/` live here.
    pub work_dir: PathBuf,
    pub device: Device,
}

/// Loss and mean token accuracy over a set of examples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LmEvaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub n_targets: usize,
}

pub(crate) struct SftTask<'a> {
    job: &'a SftJob,
    pub(crate) model: CausalLm,
    pub(crate) train: Vec<SftExample>,
    pub(crate) valid: Option<Vec<SftExample>>,
    valid_batches: Vec<Vec<usize>>,
    pad_id: u32,
    /// `max_seq_len`, at most the model's context ([`fit_to_context`]).
    max_seq_len: usize,
}

fn report_preparation(
    split: &str,
    set: &PreparedSet,
    max_seq_len: usize,
    observer: &mut dyn TrainObserver,
) {
    if set.truncated > 0 {
        observer.on_event(
            EventLevel::Warn,
            format!(
                "{} {split} examples were longer than max_seq_len ({max_seq_len}) tokens and were truncated",
                set.truncated
            ),
        );
    }
    if set.dropped > 0 {
        observer.on_event(
            EventLevel::Warn,
            format!(
                "{} {split} examples had no trainable assistant or completion tokens within max_seq_len and were skipped",
                set.dropped
            ),
        );
    }
}

/// An SFT job's data as its trainer reads it, before the model loads: what the plan
/// counts and the trainer trains on.
struct SftData {
    model_config: DecoderConfig,
    max_seq_len: usize,
    pad_id: u32,
    train: Vec<SftExample>,
    valid: Option<Vec<SftExample>>,
    spec: DecoderSpec,
}

impl SftData {
    /// Tokenizes both files (truncations and skipped examples reported to `observer`).
    fn prepare(job: &SftJob, observer: &mut dyn TrainObserver) -> Result<Self, TrainError> {
        let cfg = &job.config;
        check_loop_settings(cfg)?;
        if cfg.max_seq_len < 2 {
            return Err(TrainError::InvalidData(
                "`max_seq_len` must be at least 2".into(),
            ));
        }
        let (model_config, _) = DecoderConfig::from_dir(&job.base_model_dir)?;
        let max_seq_len = fit_to_context(
            cfg.max_seq_len,
            model_config.max_position_embeddings,
            observer,
        );
        let tokenizer = SftTokenizer::from_dir(&job.base_model_dir, &model_config.eos_token_ids)?;
        let train = tokenizer.prepare(&job.train, max_seq_len)?;
        report_preparation("training", &train, max_seq_len, observer);
        if train.examples.is_empty() {
            return Err(TrainError::InvalidData(
                "no training example has a trainable token (assistant message with weight 1 or a completion) within max_seq_len".into(),
            ));
        }
        let valid = match &job.valid {
            Some(valid) if !valid.is_empty() => {
                let set = tokenizer
                    .prepare(valid, max_seq_len)
                    .map_err(TrainError::in_validation_file)?;
                report_preparation("validation", &set, max_seq_len, observer);
                Some(set.examples).filter(|v| !v.is_empty())
            }
            _ => None,
        };
        Ok(SftData {
            spec: decoder_spec(&lm_spec(cfg))?,
            model_config,
            max_seq_len,
            pad_id: tokenizer.pad_id(),
            train: train.examples,
            valid,
        })
    }

    /// Each training example's (tokens, trained positions), for the memory estimate.
    fn lengths(&self) -> Vec<(usize, usize)> {
        self.train
            .iter()
            .map(|e| (e.ids.len(), e.n_targets()))
            .collect()
    }

    fn placement<'a>(job: &'a SftJob) -> Placement<'a> {
        let cfg = &job.config;
        (
            &job.device,
            cfg.batch_size,
            false,
            run_mode(cfg, &job.device),
        )
    }
}

/// The job's plan (`train::plan`) from the preparation its trainer runs.
pub fn plan_sft(
    job: &SftJob,
    observer: &mut dyn TrainObserver,
) -> Result<TrainingPlan, TrainError> {
    let data = SftData::prepare(job, observer)?;
    let memory = decoder_memory(
        &data.model_config,
        &data.spec,
        &data.lengths(),
        SftData::placement(job),
    );
    let tokens = data.train.iter().map(|e| e.ids.len() as u64).sum();
    let trained_rows = data.train.iter().map(|e| e.n_targets() as u64).sum();
    let weights = decoder_weights_per_token(&data.model_config, tokens, trained_rows);
    let flops = training_flops_per_token(weights, data.spec.lora.is_none());
    let examples = (data.train.len(), data.valid.as_ref().map_or(0, Vec::len));
    Ok(TrainingPlan::new(
        &job.config,
        examples,
        tokens,
        memory,
        Some(flops),
    ))
}

impl<'a> SftTask<'a> {
    fn prepare(job: &'a SftJob, observer: &mut dyn TrainObserver) -> Result<Self, TrainError> {
        let cfg = &job.config;
        let data = SftData::prepare(job, observer)?;
        let placement = SftData::placement(job);
        check_memory(
            &data.model_config,
            &data.spec,
            &data.lengths(),
            placement,
            observer,
        )?;
        let model = decoder_for_job(&job.base_model_dir, &data.spec, cfg, &job.device)?;
        let valid_batches = data
            .valid
            .as_ref()
            .map_or_else(Vec::new, |v| sequential_batches(v.len(), cfg.batch_size));
        Ok(Self {
            job,
            model,
            train: data.train,
            valid: data.valid,
            valid_batches,
            pad_id: data.pad_id,
            max_seq_len: data.max_seq_len,
        })
    }

    /// Token-weighted loss and accuracy over `batches` of `examples`, in eval mode.
    pub(crate) fn evaluate_batches(
        &self,
        examples: &[SftExample],
        batches: &[Vec<usize>],
    ) -> Result<LmEvaluation, TrainError> {
        let (mut loss_sum, mut correct, mut n) = (0f64, 0usize, 0usize);
        for indices in batches {
            let batch = make_lm_batch(examples, indices, self.pad_id, &self.job.device)?;
            let hidden = self.model.hidden_states(&batch.inputs, false)?;
            let out = masked_next_token_loss(&hidden, |x| self.model.lm_head(x), &batch.targets)?;
            loss_sum += out.loss_sum()?;
            correct += out.correct;
            n += out.n_targets;
        }
        Ok(LmEvaluation {
            loss: if n == 0 { 0.0 } else { loss_sum / n as f64 },
            accuracy: if n == 0 {
                0.0
            } else {
                correct as f64 / n as f64
            },
            n_targets: n,
        })
    }

    /// The whole validation set (None without one).
    pub(crate) fn full_validation(&self) -> Result<Option<LmEvaluation>, TrainError> {
        match &self.valid {
            Some(valid) => Ok(Some(self.evaluate_batches(valid, &self.valid_batches)?)),
            None => Ok(None),
        }
    }
}

impl TrainTask for SftTask<'_> {
    fn n_train(&self) -> usize {
        self.train.len()
    }

    fn units(&self, indices: &[usize]) -> Result<usize, TrainError> {
        indices
            .iter()
            .map(|&i| {
                self.train
                    .get(i)
                    .map(SftExample::n_targets)
                    .ok_or_else(|| TrainError::InvalidData(format!("batch index {i} out of range")))
            })
            .sum()
    }

    fn forward_train(&self, indices: &[usize]) -> Result<MicroBatch, TrainError> {
        let batch = make_lm_batch(&self.train, indices, self.pad_id, &self.job.device)?;
        let hidden = self.model.hidden_states(&batch.inputs, true)?;
        let out = masked_next_token_loss(&hidden, |x| self.model.lm_head(x), &batch.targets)?;
        Ok(MicroBatch {
            loss: out.loss,
            units: out.n_targets,
            correct: out.correct,
            tokens: batch.inputs.n_tokens as u64,
            extra: Metrics::default(),
        })
    }

    fn after_backward(&self, store: &mut GradStore) -> Result<(), TrainError> {
        Ok(self.model.drain_recomputed_gradients(store)?)
    }

    fn evaluate(&self, at: &EvalPoint, row: &mut MetricsRow) -> Result<(), TrainError> {
        let Some(valid) = self.valid.as_deref() else {
            return Ok(());
        };
        if at.eval_due || at.regular_save {
            // Batch k of the validation set at the k-th evaluation interval: a resumed
            // run evaluates the same batches as an uninterrupted one.
            let every = self.job.config.eval_steps.unwrap_or(1).max(1);
            let k = (at.step / every) % self.valid_batches.len().max(1);
            if let Some(indices) = self.valid_batches.get(k) {
                let eval = self.evaluate_batches(valid, std::slice::from_ref(indices))?;
                row.set("valid_loss", eval.loss);
                row.set("valid_mean_token_accuracy", eval.accuracy);
            }
        }
        if at.epoch_end {
            let eval = self.evaluate_batches(valid, &self.valid_batches)?;
            row.set("full_valid_loss", eval.loss);
            row.set("full_valid_mean_token_accuracy", eval.accuracy);
        }
        Ok(())
    }

    /// "Validation loss before": the starting model on the whole validation set.
    fn before_first_step(
        &self,
        state: &mut TrainState,
        observer: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        if let Some(before) = self.full_validation()? {
            state.initial_valid_loss = Some(before.loss);
            state.initial_valid_accuracy = Some(before.accuracy);
            observer.on_event(
                EventLevel::Info,
                format!(
                    "Before training: full validation loss={:.4}, full validation mean token accuracy={:.4}",
                    before.loss, before.accuracy
                ),
            );
        }
        Ok(())
    }
}

/// Fine-tunes a decoder on chat or prompt/completion examples; resumes from the newest
/// complete checkpoint in `work_dir` (exact: step, optimizer, data order).
pub fn run_sft(job: &SftJob, observer: &mut dyn TrainObserver) -> Result<TrainOutcome, TrainError> {
    let task = SftTask::prepare(job, observer)?;
    let setup = RunSetup {
        config: &job.config,
        work_dir: &job.work_dir,
        device: &job.device,
        names: &SFT_METRICS,
        checkpoint: CheckpointTask::CausalLm {
            lm: lm_spec(&job.config),
        },
        base_model: job.base_model.clone(),
        max_seq_len: task.max_seq_len,
        new_head: &[],
        vars: task.model.trainable_vars(),
        has_valid: task.valid.is_some(),
        buffers: Vec::new(),
        pretrained_lr_scale: 1.0,
    };
    run_task(setup, &task, observer, |trainer, observer| {
        summarize(trainer, &task, observer)
    })
}

/// Results CSV, checkpoints and a report: data counts, validation before training and
/// of the best checkpoint (taken from its epoch-end full validation when it has one).
fn summarize(
    trainer: &Trainer,
    task: &SftTask,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary, TrainError> {
    let (best_step, best_dir) = trainer.best_checkpoint()?;
    let recorded = trainer
        .state
        .history
        .iter()
        .find(|r| r.step == best_step)
        .and_then(|r| {
            Some((
                r.get("full_valid_loss")?,
                r.get("full_valid_mean_token_accuracy")?,
            ))
        });
    let after = match (recorded, &task.valid) {
        (Some(pair), _) => Some(pair),
        (None, Some(_)) => {
            trainer.load_best()?;
            task.full_validation()?.map(|e| (e.loss, e.accuracy))
        }
        (None, None) => None,
    };
    let state = &trainer.state;
    let mut report = json!({
        "task": "causal_lm",
        "best_step": best_step,
        "train_examples": task.train.len(),
        "train_target_tokens": task.train.iter().map(SftExample::n_targets).sum::<usize>(),
        "valid_examples": task.valid.as_ref().map_or(0, Vec::len),
        "trained_tokens": state.tokens_seen,
        "initial_full_valid_loss": state.initial_valid_loss,
        "initial_full_valid_mean_token_accuracy": state.initial_valid_accuracy,
        "full_valid_loss": null,
        "full_valid_mean_token_accuracy": null,
    });
    if let Some((loss, accuracy)) = after {
        report["full_valid_loss"] = json!(loss);
        report["full_valid_mean_token_accuracy"] = json!(accuracy);
        observer.on_event(
            EventLevel::Info,
            format!(
                "Best checkpoint: step {best_step} (full validation loss {loss:.4}, mean token accuracy {accuracy:.4})"
            ),
        );
    }
    Ok(TrainSummary {
        best_step,
        best_checkpoint: best_dir,
        trained_tokens: state.tokens_seen,
        results_csv: results_csv(&state.history, &SFT_METRICS),
        report,
        checkpoints: trainer.saved_checkpoints(),
    })
}
