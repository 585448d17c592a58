//! Token-classification fine-tuning: the [`TokenClassifier`] as a [`TrainTask`] for the
//! shared loop in `train::runner` (cross-entropy over the labelled sub-words; the whole
//! validation set, seqeval metrics included, at every evaluation point), and the final
//! per-entity-type report.

use std::path::PathBuf;

use candle_core::backprop::GradStore;
use candle_core::Device;
use serde_json::{json, Value};

use super::align::{collate_tagged, AlignOptions, AlignedExample, TagAligner};
use super::evaluate::{evaluate_tags, TagEvaluation, TaggedSet};
use super::head::{token_cross_entropy, TokenClassifier, TokenHead};
use crate::artifacts::checkpoint::CheckpointTask;
use crate::domain::dataset::TokenTagsExample;
use crate::domain::hyperparams::TrainingConfig;
use crate::tasks::encoder_checkpoint::{encoder_for_job, encoder_plan};
use crate::train::named_metrics::{MetricNames, Metrics, MetricsRow};
use crate::train::plan::TrainingPlan;
use crate::train::runner::{EvalPoint, MicroBatch, TrainTask, Trainer};
use crate::train::setup::{check_loop_settings, run_task, RunSetup};
use crate::train::summary::results_csv;
use crate::train::{EventLevel, TrainError, TrainObserver, TrainOutcome, TrainSummary};
use crate::zoo::{ClassifierSpec, TextTokenizer};

/// Token accuracy over labelled sub-words while training; entity precision/recall/F1
/// (seqeval, micro) and token accuracy over the validation set. The best checkpoint is the
/// one with the highest `valid_entity_f1` (transformers' `run_ner` reports the same
/// `overall_f1`).
pub const TOKEN_CLASSIFICATION_METRICS: MetricNames = MetricNames {
    train: &["train_loss", "train_token_accuracy"],
    valid: &[
        "valid_loss",
        "valid_entity_precision",
        "valid_entity_recall",
        "valid_entity_f1",
        "valid_token_accuracy",
    ],
    train_accuracy: Some("train_token_accuracy"),
    default_best: "valid_entity_f1",
    aliases: &[
        ("full_valid_loss", "valid_loss"),
        ("valid_f1", "valid_entity_f1"),
        ("valid_accuracy", "valid_token_accuracy"),
    ],
};

pub struct TokenClassificationJob {
    pub base_model_dir: PathBuf,
    /// How checkpoints name that base (`meta.json`).
    pub base_model: crate::artifacts::BaseLocation,
    pub train: Vec<TokenTagsExample>,
    pub valid: Option<Vec<TokenTagsExample>>,
    /// Label id = index (`domain::dataset::tag_label_set` over train + validation).
    pub labels: Vec<String>,
    pub config: TrainingConfig,
    /// `checkpoints/step-N/` live here.
    pub work_dir: PathBuf,
    pub device: Device,
}

pub fn run_token_classification(
    job: &TokenClassificationJob,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome, TrainError> {
    check_job(job)?;
    let task = TagTask::prepare(job)?;
    let setup = RunSetup {
        config: &job.config,
        work_dir: &job.work_dir,
        device: &job.device,
        names: &TOKEN_CLASSIFICATION_METRICS,
        checkpoint: CheckpointTask::TokenClassification {
            labels: job.labels.clone(),
            spec: task.spec.clone(),
        },
        base_model: job.base_model.clone(),
        max_seq_len: job.config.max_seq_len,
        // The per-token `classifier` is made from scratch on top of the encoder.
        new_head: &["classifier."],
        vars: task.model.trainable_vars(),
        has_valid: task.valid.is_some(),
        buffers: Vec::new(),
        pretrained_lr_scale: 1.0,
    };
    run_task(setup, &task, observer, |trainer, observer| {
        build_summary(trainer, &task, observer)
    })
}

/// The model, its tokenized data and how to train and evaluate it.
struct TagTask<'a> {
    job: &'a TokenClassificationJob,
    model: TokenClassifier,
    spec: ClassifierSpec,
    train: Vec<AlignedExample>,
    valid: Option<Vec<AlignedExample>>,
    pad_id: u32,
}

fn check_job(job: &TokenClassificationJob) -> Result<(), TrainError> {
    if job.train.is_empty() || job.labels.is_empty() {
        return Err(TrainError::InvalidData(
            "the training file has no tagged sentences".into(),
        ));
    }
    check_loop_settings(&job.config)
}

/// Both files aligned to sub-words, as the trainer reads them, and the padding id.
type AlignedSets = (Vec<AlignedExample>, Option<Vec<AlignedExample>>, u32);

fn align_sets(job: &TokenClassificationJob) -> Result<AlignedSets, TrainError> {
    let tokenizer = TextTokenizer::from_dir(&job.base_model_dir)?;
    let options = AlignOptions::for_training(&job.config);
    let aligner = TagAligner::new(tokenizer.inner(), &job.labels, options)?;
    let align_all = |examples: &[TokenTagsExample]| {
        examples
            .iter()
            .enumerate()
            .map(|(i, example)| aligner.align(i + 1, example))
            .collect::<Result<Vec<_>, TrainError>>()
    };
    let train = align_all(&job.train)?;
    let valid = match job.valid.as_deref() {
        Some(valid) if !valid.is_empty() => Some(align_all(valid)?),
        _ => None,
    };
    Ok((train, valid, tokenizer.pad_id()))
}

/// The job's plan (`train::plan`) from the alignment its trainer runs.
pub fn plan_token_classification(job: &TokenClassificationJob) -> Result<TrainingPlan, TrainError> {
    check_job(job)?;
    let (train, valid, _) = align_sets(job)?;
    let lengths: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
    let sets = (lengths.as_slice(), valid.as_ref().map_or(0, Vec::len));
    let (base, device) = (&job.base_model_dir, &job.device);
    encoder_plan(base, &job.config, device, sets, job.labels.len())
}

impl<'a> TagTask<'a> {
    fn prepare(job: &'a TokenClassificationJob) -> Result<Self, TrainError> {
        let cfg = &job.config;
        let (train, valid, pad_id) = align_sets(job)?;
        let spec = ClassifierSpec {
            num_labels: job.labels.len(),
            lora: (cfg.lora.rank > 0).then(|| cfg.lora.clone()),
            classifier_dropout: None,
        };
        let lengths: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
        let (base, device) = (&job.base_model_dir, &job.device);
        crate::train::memory::check_encoder_job(base, cfg, spec.num_labels, &lengths, device)?;
        let model = encoder_for_job::<TokenHead>(base, &spec, cfg, device)?;
        Ok(Self {
            job,
            model,
            spec,
            train,
            valid,
            pad_id,
        })
    }

    fn evaluate_set(&self, examples: &[AlignedExample]) -> Result<TagEvaluation, TrainError> {
        let set = TaggedSet {
            examples,
            batch_size: self.job.config.batch_size,
            pad_id: self.pad_id,
        };
        evaluate_tags(&self.model, &set, &self.job.labels, &self.job.device)
    }
}

impl TrainTask for TagTask<'_> {
    fn n_train(&self) -> usize {
        self.train.len()
    }

    /// Labelled sub-words: the step's mean loss is over tokens, as transformers' loss.
    fn units(&self, indices: &[usize]) -> Result<usize, TrainError> {
        indices
            .iter()
            .map(|&i| {
                self.train
                    .get(i)
                    .map(AlignedExample::labelled)
                    .ok_or_else(|| {
                        TrainError::InvalidData(format!("example index {i} is out of range"))
                    })
            })
            .sum()
    }

    fn after_backward(&self, store: &mut GradStore) -> Result<(), TrainError> {
        Ok(self.model.drain_recomputed_gradients(store)?)
    }

    fn forward_train(&self, indices: &[usize]) -> Result<MicroBatch, TrainError> {
        let batch = collate_tagged(&self.train, indices, self.pad_id, &self.job.device)?;
        let logits = self.model.forward(&batch.inputs, true)?;
        let out = token_cross_entropy(&logits, &batch.labels)?;
        Ok(MicroBatch {
            units: out.positions.len(),
            correct: out.correct(),
            loss: out.loss,
            tokens: batch.inputs.n_tokens as u64,
            extra: Metrics::default(),
        })
    }

    /// The whole validation set at every evaluation point.
    fn evaluate(&self, at: &EvalPoint, row: &mut MetricsRow) -> Result<(), TrainError> {
        let Some(valid) = self.valid.as_deref() else {
            return Ok(());
        };
        if at.epoch_end || at.eval_due || at.regular_save {
            let evaluation = self.evaluate_set(valid)?;
            let micro = evaluation.metrics.micro;
            row.set("valid_loss", evaluation.loss);
            row.set("valid_entity_precision", micro.precision);
            row.set("valid_entity_recall", micro.recall);
            row.set("valid_entity_f1", micro.f1);
            row.set("valid_token_accuracy", evaluation.metrics.accuracy);
        }
        Ok(())
    }
}

/// Loads the best checkpoint's weights and reports per entity type on the validation set
/// (the training set when there is none).
fn build_summary(
    trainer: &Trainer,
    task: &TagTask,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary, TrainError> {
    let (best_step, best_dir) = trainer.load_best()?;
    let (split, examples) = match task.valid.as_deref() {
        Some(valid) => ("validation", valid),
        None => ("train", task.train.as_slice()),
    };
    let evaluation = task.evaluate_set(examples)?;
    let mut report = evaluation.metrics.report();
    if let Value::Object(map) = &mut report {
        map.insert("labels".into(), json!(task.job.labels));
        map.insert("split".into(), json!(split));
        map.insert("loss".into(), json!(evaluation.loss));
        map.insert("step".into(), json!(best_step));
    }
    observer.on_event(
        EventLevel::Info,
        format!(
            "Best checkpoint: step {best_step} ({split} entity F1 {:.4}, token accuracy {:.4})",
            evaluation.metrics.micro.f1, evaluation.metrics.accuracy
        ),
    );
    Ok(TrainSummary {
        best_step,
        best_checkpoint: best_dir,
        trained_tokens: trainer.state.tokens_seen,
        results_csv: results_csv(&trainer.state.history, &TOKEN_CLASSIFICATION_METRICS),
        report,
        checkpoints: trainer.saved_checkpoints(),
    })
}

#[cfg(test)]
#[path = "train_tests.rs"]
mod tests;
