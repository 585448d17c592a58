//! Sequence-classification fine-tuning: the classifier as a [`TrainTask`] for the shared
//! loop in `train::runner` (cross-entropy over examples; the whole validation set at every
//! evaluation point).

use std::path::PathBuf;

use candle_core::backprop::GradStore;
use candle_core::Device;

use super::data::{encode_examples, make_batch, EncodedExample};
use super::evaluate::{evaluate, forward_batch, EvalSet, Evaluation};
use super::report::build_summary;
use crate::artifacts::checkpoint::CheckpointTask;
use crate::domain::dataset::LabeledText;
use crate::domain::hyperparams::TrainingConfig;
use crate::tasks::encoder_checkpoint::{encoder_for_job, encoder_plan};
use crate::train::named_metrics::{MetricNames, Metrics, MetricsRow};
use crate::train::plan::TrainingPlan;
use crate::train::runner::{EvalPoint, MicroBatch, TrainTask};
use crate::train::setup::{check_loop_settings, run_task, RunSetup};
use crate::train::{TrainError, TrainObserver, TrainOutcome};
use crate::zoo::{ClassifierSpec, SequenceClassifier, SequenceHead, TextTokenizer};

/// Accuracy over examples; every evaluation covers the whole validation set, so the
/// `full_valid_*` names OpenAI uses for chat models mean the `valid_*` values here.
pub const CLASSIFICATION_METRICS: MetricNames = MetricNames {
    train: &["train_loss", "train_accuracy"],
    valid: &["valid_loss", "valid_accuracy", "valid_f1"],
    train_accuracy: Some("train_accuracy"),
    default_best: "valid_accuracy",
    aliases: &[
        ("full_valid_loss", "valid_loss"),
        ("full_valid_accuracy", "valid_accuracy"),
        ("train_mean_token_accuracy", "train_accuracy"),
        ("valid_mean_token_accuracy", "valid_accuracy"),
        ("full_valid_mean_token_accuracy", "valid_accuracy"),
    ],
};

pub struct ClassificationJob {
    pub base_model_dir: PathBuf,
    /// How checkpoints name that base (`meta.json`).
    pub base_model: crate::artifacts::BaseLocation,
    pub train: Vec<LabeledText>,
    pub valid: Option<Vec<LabeledText>>,
    /// Label id = index in this list (`domain::dataset::label_set`).
    pub labels: Vec<String>,
    pub config: TrainingConfig,
    /// `checkpoints/step-N/` live here.
    pub work_dir: PathBuf,
    pub device: Device,
}

pub fn run_classification(
    job: &ClassificationJob,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome, TrainError> {
    validate(job)?;
    let task = ClassifyTask::prepare(job)?;
    let setup = RunSetup {
        config: &job.config,
        work_dir: &job.work_dir,
        device: &job.device,
        names: &CLASSIFICATION_METRICS,
        checkpoint: CheckpointTask::SequenceClassification {
            labels: job.labels.clone(),
            spec: task.spec.clone(),
        },
        base_model: job.base_model.clone(),
        max_seq_len: job.config.max_seq_len,
        new_head: &NEW_HEAD,
        vars: task.model.trainable_vars(),
        has_valid: task.valid.is_some(),
        buffers: Vec::new(),
        pretrained_lr_scale: 1.0,
    };
    run_task(setup, &task, observer, |trainer, observer| {
        build_summary(trainer, &task, observer)
    })
}

/// The head `SequenceClassifier` makes from scratch on top of the encoder (`classifier`, and
/// DistilBERT's `pre_classifier`): what `TrainingConfig::head_learning_rate` applies to.
const NEW_HEAD: [&str; 2] = ["classifier.", "pre_classifier."];

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
    check_loop_settings(&job.config)
}

/// The classifier, its tokenized data and how to train and evaluate it.
pub(crate) struct ClassifyTask<'a> {
    pub(crate) job: &'a ClassificationJob,
    pub(crate) model: SequenceClassifier,
    spec: ClassifierSpec,
    pub(crate) train: Vec<EncodedExample>,
    pub(crate) valid: Option<Vec<EncodedExample>>,
    pub(crate) pad_id: u32,
}

/// Both files tokenized, as the trainer reads them, and the tokenizer's padding id.
type EncodedSets = (Vec<EncodedExample>, Option<Vec<EncodedExample>>, u32);

fn encode_sets(job: &ClassificationJob) -> Result<EncodedSets, TrainError> {
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
    Ok((train, valid, tokenizer.pad_id()))
}

/// The job's plan (`train::plan`) from the tokenization its trainer runs.
pub fn plan_classification(job: &ClassificationJob) -> Result<TrainingPlan, TrainError> {
    validate(job)?;
    let (train, valid, _) = encode_sets(job)?;
    let lengths: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
    let sets = (lengths.as_slice(), valid.as_ref().map_or(0, Vec::len));
    let (base, device) = (&job.base_model_dir, &job.device);
    encoder_plan(base, &job.config, device, sets, job.labels.len())
}

impl<'a> ClassifyTask<'a> {
    fn prepare(job: &'a ClassificationJob) -> Result<Self, TrainError> {
        let cfg = &job.config;
        let (train, valid, pad_id) = encode_sets(job)?;
        let spec = ClassifierSpec {
            num_labels: job.labels.len(),
            lora: (cfg.lora.rank > 0).then(|| cfg.lora.clone()),
            classifier_dropout: None,
        };
        let lengths: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
        let (base, device) = (&job.base_model_dir, &job.device);
        crate::train::memory::check_encoder_job(base, cfg, spec.num_labels, &lengths, device)?;
        let model = encoder_for_job::<SequenceHead>(base, &spec, cfg, device)?;
        Ok(Self {
            job,
            model,
            spec,
            train,
            valid,
            pad_id,
        })
    }

    pub(crate) fn evaluate_set(
        &self,
        examples: &[EncodedExample],
    ) -> Result<Evaluation, TrainError> {
        let set = EvalSet {
            examples,
            n_labels: self.job.labels.len(),
            batch_size: self.job.config.batch_size,
            pad_id: self.pad_id,
        };
        evaluate(&self.model, &set, &self.job.device)
    }
}

impl TrainTask for ClassifyTask<'_> {
    fn n_train(&self) -> usize {
        self.train.len()
    }

    fn units(&self, indices: &[usize]) -> Result<usize, TrainError> {
        Ok(indices.len())
    }

    fn after_backward(&self, store: &mut GradStore) -> Result<(), TrainError> {
        Ok(self.model.drain_recomputed_gradients(store)?)
    }

    fn forward_train(&self, indices: &[usize]) -> Result<MicroBatch, TrainError> {
        let batch = make_batch(&self.train, indices, self.pad_id, &self.job.device)?;
        let out = forward_batch(&self.model, &batch, true)?;
        let correct = out
            .predictions
            .iter()
            .zip(&batch.label_ids)
            .filter(|(p, t)| p == t)
            .count();
        Ok(MicroBatch {
            loss: out.loss,
            units: batch.len(),
            correct,
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
            self.evaluate_set(valid)?.record_valid(row);
        }
        Ok(())
    }
}
