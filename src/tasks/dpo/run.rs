//! `run_dpo`: preference tuning as a [`TrainTask`] on the shared runner (schedules,
//! accumulation, clipping, eval/save steps, early stopping, best checkpoint, exact resume,
//! pause/cancel all come from it).
//!
//! A unit is a pair: the step's loss is the mean DPO loss over its pairs and the runner's
//! accuracy (right / units) is the reward accuracy. Validation covers the whole validation
//! set at every evaluation point, as TRL evaluates, and the best checkpoint is the one with
//! the lowest `valid_loss`. The checkpoint holds a causal LM like an SFT checkpoint (over
//! the job's starting model), so the result is served, exported and downloaded as one.

use std::path::PathBuf;

use candle_core::backprop::GradStore;
use candle_core::Device;
use serde_json::json;

use super::loss::RewardMeans;
use super::prepare::{PreferencePair, PreferenceTokenizer, PreparedPairs};
use super::reference::DpoModels;
use crate::artifacts::checkpoint::CheckpointTask;
use crate::domain::dataset::PreferenceExample;
use crate::domain::hyperparams::TrainingConfig;
use crate::tasks::sft::{
    check_memory, decoder_for_job, decoder_memory, decoder_spec, fit_to_context, lm_spec, run_mode,
    Placement,
};
use crate::train::data::sequential_batches;
use crate::train::plan::{decoder_weights_per_token, training_flops_per_token, TrainingPlan};
use crate::train::runner::{EvalPoint, MicroBatch, TrainTask, Trainer};
use crate::train::setup::{check_loop_settings, run_task, RunSetup};
use crate::train::{
    results_csv, EventLevel, MetricNames, Metrics, MetricsRow, TrainError, TrainObserver,
    TrainOutcome, TrainSummary,
};
use crate::zoo::decoder::{DecoderConfig, DecoderSpec};

/// TRL's and OpenAI's names (`rewards/chosen` → `train_rewards_chosen`, …).
pub const DPO_METRICS: MetricNames = MetricNames {
    train: &[
        "train_loss",
        "train_rewards_chosen",
        "train_rewards_rejected",
        "train_reward_accuracy",
        "train_reward_margin",
    ],
    valid: &[
        "valid_loss",
        "valid_rewards_chosen",
        "valid_rewards_rejected",
        "valid_reward_accuracy",
        "valid_reward_margin",
    ],
    train_accuracy: Some("train_reward_accuracy"),
    default_best: "valid_loss",
    aliases: &[
        ("train_accuracy", "train_reward_accuracy"),
        ("valid_accuracy", "valid_reward_accuracy"),
        ("full_valid_loss", "valid_loss"),
    ],
};

pub struct DpoJob {
    /// The starting model: a base model directory, or the merged directory of a temper
    /// fine-tuned model (SFT then DPO). It is also the reference model.
    pub base_model_dir: PathBuf,
    /// How checkpoints name that base (`meta.json`).
    pub base_model: crate::artifacts::BaseLocation,
    pub train: Vec<PreferenceExample>,
    pub valid: Option<Vec<PreferenceExample>>,
    pub config: TrainingConfig,
    pub beta: f64,
    /// `checkpoints/step-N/` live here.
    pub work_dir: PathBuf,
    pub device: Device,
}

pub(crate) struct DpoTask {
    pub(crate) models: DpoModels,
    pub(crate) train: Vec<PreferencePair>,
    pub(crate) valid: Option<Vec<PreferencePair>>,
    valid_batches: Vec<Vec<usize>>,
    pad_id: u32,
    max_seq_len: usize,
    truncated_train: usize,
}

fn report_truncation(
    split: &str,
    set: &PreparedPairs,
    max_length: usize,
    observer: &mut dyn TrainObserver,
) {
    if set.prompts_cut > 0 {
        observer.on_event(
            EventLevel::Info,
            format!(
                "{} {split} prompts were longer than max_prompt_length: each kept its last max_prompt_length tokens",
                set.prompts_cut
            ),
        );
    }
    if set.truncated > 0 {
        observer.on_event(
            EventLevel::Warn,
            format!(
                "{} {split} pairs were longer than max_seq_len ({max_length}) tokens: their prompts were cut from the left (then their outputs from the right)",
                set.truncated
            ),
        );
    }
}

/// A DPO job's pairs as its trainer reads them, before the model loads: what the plan
/// counts and the trainer trains on.
struct DpoData {
    model_config: DecoderConfig,
    max_seq_len: usize,
    pad_id: u32,
    train: PreparedPairs,
    valid: Option<Vec<PreferencePair>>,
    spec: DecoderSpec,
}

impl DpoData {
    /// Tokenizes both files (truncations reported to `observer`).
    fn prepare(job: &DpoJob, observer: &mut dyn TrainObserver) -> Result<Self, TrainError> {
        let cfg = &job.config;
        check_loop_settings(cfg)?;
        if cfg.max_seq_len < 2 {
            return Err(TrainError::InvalidData(
                "`max_seq_len` must be at least 2".into(),
            ));
        }
        if !(job.beta.is_finite() && job.beta > 0.0) {
            return Err(TrainError::InvalidData(format!(
                "`beta` must be a positive number, got {}",
                job.beta
            )));
        }
        let (model_config, _) = DecoderConfig::from_dir(&job.base_model_dir)?;
        let max_seq_len = fit_to_context(
            cfg.max_seq_len,
            model_config.max_position_embeddings,
            observer,
        );
        let tokenizer =
            PreferenceTokenizer::from_dir(&job.base_model_dir, &model_config.eos_token_ids)?
                .with_max_prompt_length(cfg.task_options.max_prompt_length);
        let train = tokenizer.prepare(&job.train, max_seq_len)?;
        report_truncation("training", &train, max_seq_len, observer);
        if train.pairs.is_empty() {
            return Err(TrainError::InvalidData(
                "the training file has no preference pairs".into(),
            ));
        }
        let valid = match &job.valid {
            Some(valid) if !valid.is_empty() => {
                let set = tokenizer
                    .prepare(valid, max_seq_len)
                    .map_err(TrainError::in_validation_file)?;
                report_truncation("validation", &set, max_seq_len, observer);
                Some(set.pairs)
            }
            _ => None,
        };
        Ok(DpoData {
            spec: decoder_spec(&lm_spec(cfg))?,
            model_config,
            max_seq_len,
            pad_id: tokenizer.pad_id(),
            train,
            valid,
        })
    }

    /// A step reads both sequences of each pair; the completion positions of both go
    /// through the LM head (`completion_logps`).
    fn lengths(&self) -> Vec<(usize, usize)> {
        self.train
            .pairs
            .iter()
            .map(|p| {
                let completions = p.chosen.completion().len() + p.rejected.completion().len();
                (p.n_tokens(), completions)
            })
            .collect()
    }

    /// Full fine-tuning also holds the frozen reference copy.
    fn placement<'a>(&self, job: &'a DpoJob) -> Placement<'a> {
        let cfg = &job.config;
        let full = self.spec.lora.is_none();
        (
            &job.device,
            cfg.batch_size,
            full,
            run_mode(cfg, &job.device),
        )
    }
}

/// The job's plan (`train::plan`) from the preparation its trainer runs. Its FLOPs add
/// the reference model's forward pass (2 per weight and token) to the policy's training.
pub fn plan_dpo(
    job: &DpoJob,
    observer: &mut dyn TrainObserver,
) -> Result<TrainingPlan, TrainError> {
    let data = DpoData::prepare(job, observer)?;
    let placement = data.placement(job);
    let memory = decoder_memory(&data.model_config, &data.spec, &data.lengths(), placement);
    let tokens = data.train.pairs.iter().map(|p| p.n_tokens() as u64).sum();
    let completions = data.lengths().iter().map(|&(_, rows)| rows as u64).sum();
    let weights = decoder_weights_per_token(&data.model_config, tokens, completions);
    let flops = training_flops_per_token(weights, data.spec.lora.is_none()) + 2.0 * weights;
    let examples = (
        data.train.pairs.len(),
        data.valid.as_ref().map_or(0, Vec::len),
    );
    Ok(TrainingPlan::new(
        &job.config,
        examples,
        tokens,
        memory,
        Some(flops),
    ))
}

impl DpoTask {
    pub(crate) fn prepare(
        job: &DpoJob,
        observer: &mut dyn TrainObserver,
    ) -> Result<Self, TrainError> {
        let cfg = &job.config;
        let data = DpoData::prepare(job, observer)?;
        let placement = data.placement(job);
        check_memory(
            &data.model_config,
            &data.spec,
            &data.lengths(),
            placement,
            observer,
        )?;
        // A full fine-tune's frozen reference copy is never checkpointed (no graph).
        let policy = decoder_for_job(&job.base_model_dir, &data.spec, cfg, &job.device)?;
        let models = DpoModels::new(policy, job.beta)?;
        let valid_batches = data
            .valid
            .as_ref()
            .map_or_else(Vec::new, |v| sequential_batches(v.len(), cfg.batch_size));
        Ok(Self {
            models,
            truncated_train: data.train.truncated,
            train: data.train.pairs,
            valid: data.valid,
            valid_batches,
            pad_id: data.pad_id,
            max_seq_len: data.max_seq_len,
        })
    }

    /// Reward metrics over the whole validation set (None without one).
    pub(crate) fn validation(&self) -> Result<Option<RewardMeans>, TrainError> {
        let Some(valid) = &self.valid else {
            return Ok(None);
        };
        let totals = self
            .models
            .evaluate(valid, &self.valid_batches, self.pad_id)?;
        Ok(totals.means())
    }
}

impl TrainTask for DpoTask {
    fn n_train(&self) -> usize {
        self.train.len()
    }

    fn units(&self, indices: &[usize]) -> Result<usize, TrainError> {
        Ok(indices.len())
    }

    fn after_backward(&self, store: &mut GradStore) -> Result<(), TrainError> {
        Ok(self.models.policy.drain_recomputed_gradients(store)?)
    }

    fn forward_train(&self, indices: &[usize]) -> Result<MicroBatch, TrainError> {
        let out = self
            .models
            .batch_loss(&self.train, indices, self.pad_id, true)?;
        let totals = out.loss.totals;
        let mut extra = Metrics::default();
        if let Some(means) = totals.means() {
            extra.set("train_rewards_chosen", means.rewards_chosen);
            extra.set("train_rewards_rejected", means.rewards_rejected);
            extra.set("train_reward_margin", means.reward_margin);
        }
        Ok(MicroBatch {
            loss: out.loss.loss,
            units: totals.pairs,
            correct: totals.correct,
            tokens: out.tokens as u64,
            extra,
        })
    }

    fn evaluate(&self, at: &EvalPoint, row: &mut MetricsRow) -> Result<(), TrainError> {
        if !(at.eval_due || at.regular_save || at.epoch_end) {
            return Ok(());
        }
        if let Some(means) = self.validation()? {
            for (name, value) in means.named("valid") {
                row.set(&name, value);
            }
        }
        Ok(())
    }
}

/// Tunes a chat decoder on preference pairs; resumes from the newest complete checkpoint
/// in `work_dir` (exact: step, optimizer, data order).
pub fn run_dpo(job: &DpoJob, observer: &mut dyn TrainObserver) -> Result<TrainOutcome, TrainError> {
    let task = DpoTask::prepare(job, observer)?;
    let setup = RunSetup {
        config: &job.config,
        work_dir: &job.work_dir,
        device: &job.device,
        names: &DPO_METRICS,
        checkpoint: CheckpointTask::CausalLm {
            lm: lm_spec(&job.config),
        },
        base_model: job.base_model.clone(),
        max_seq_len: task.max_seq_len,
        new_head: &[],
        vars: task.models.policy.trainable_vars(),
        has_valid: task.valid.is_some(),
        buffers: Vec::new(),
        pretrained_lr_scale: 1.0,
    };
    run_task(setup, &task, observer, |trainer, observer| {
        summarize(trainer, &task, job, observer)
    })
}

/// Results CSV, checkpoints and a report: pair counts, `beta` and the best checkpoint's
/// validation rewards.
fn summarize(
    trainer: &Trainer,
    task: &DpoTask,
    job: &DpoJob,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary, TrainError> {
    let (best_step, best_dir) = trainer.best_checkpoint()?;
    let state = &trainer.state;
    let recorded = state
        .history
        .iter()
        .find(|r| r.step == best_step)
        .filter(|r| r.get("valid_loss").is_some())
        .map(|r| {
            DPO_METRICS
                .valid
                .iter()
                .map(|name| (name.to_string(), r.get(name).unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
        });
    let valid = match (recorded, &task.valid) {
        (Some(values), _) => Some(values),
        (None, Some(_)) => {
            trainer.load_best()?;
            task.validation()?.map(|m| m.named("valid"))
        }
        (None, None) => None,
    };
    let mut report = json!({
        "task": "dpo",
        "beta": job.beta,
        "best_step": best_step,
        "train_pairs": task.train.len(),
        "truncated_train_pairs": task.truncated_train,
        "valid_pairs": task.valid.as_ref().map_or(0, Vec::len),
        "trained_tokens": state.tokens_seen,
        "reference": match task.models.reference {
            super::Reference::AdaptersOff => "policy with adapters disabled",
            super::Reference::FrozenCopy(_) => "frozen copy of the starting model",
        },
    });
    if let Some(values) = &valid {
        for (name, value) in values {
            report[name.as_str()] = json!(value);
        }
        let get = |n: &str| {
            values
                .iter()
                .find(|(k, _)| k == n)
                .map_or(f64::NAN, |(_, v)| *v)
        };
        observer.on_event(
            EventLevel::Info,
            format!(
                "Best checkpoint: step {best_step} (validation loss {:.4}, reward accuracy {:.4}, reward margin {:.4})",
                get("valid_loss"),
                get("valid_reward_accuracy"),
                get("valid_reward_margin")
            ),
        );
    }
    Ok(TrainSummary {
        best_step,
        best_checkpoint: best_dir,
        trained_tokens: state.tokens_seen,
        results_csv: results_csv(&state.history, &DPO_METRICS),
        report,
        checkpoints: trainer.saved_checkpoints(),
    })
}
