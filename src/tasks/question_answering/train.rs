//! Extractive QA fine-tuning: the QA model as a [`TrainTask`] for the shared loop in
//! `train::runner`. As run_qa, training covers windows (a long context gives several),
//! each labelled with its answer's tokens or CLS; every evaluation runs the whole
//! validation set, aggregates windows into answers and scores them with SQuAD's EM/F1.

use std::path::PathBuf;

use candle_core::backprop::GradStore;
use candle_core::Device;

use super::evaluate::{evaluate, labelled_windows, LabelledWindows, QaEvaluation};
use super::head::{collate_windows, QaHead, QaModelSpec, QuestionAnsweringModel};
use super::postprocess::AnswerSettings;
use super::report::build_summary;
use super::windows::{QaTokenizer, QaWindow, WindowSettings};
use crate::artifacts::checkpoint::CheckpointTask;
use crate::domain::dataset::QaExample;
use crate::domain::hyperparams::TrainingConfig;
use crate::tasks::encoder_checkpoint::{encoder_for_job, encoder_plan};
use crate::train::named_metrics::{MetricNames, Metrics, MetricsRow};
use crate::train::plan::TrainingPlan;
use crate::train::runner::{EvalPoint, MicroBatch, TrainTask};
use crate::train::setup::{check_loop_settings, run_task, RunSetup};
use crate::train::{TrainError, TrainObserver, TrainOutcome};
use crate::zoo::config::EncoderConfig;
use crate::zoo::TextTokenizer;

/// SQuAD's exact match and F1 (percentages, as the official script reports them).
pub const QA_METRICS: MetricNames = MetricNames {
    train: &["train_loss"],
    valid: &["valid_loss", "valid_exact_match", "valid_f1"],
    train_accuracy: None,
    default_best: "valid_f1",
    aliases: &[
        ("exact_match", "valid_exact_match"),
        ("f1", "valid_f1"),
        ("full_valid_loss", "valid_loss"),
    ],
};

pub struct QuestionAnsweringJob {
    pub base_model_dir: PathBuf,
    /// How checkpoints name that base (`meta.json`).
    pub base_model: crate::artifacts::BaseLocation,
    pub train: Vec<QaExample>,
    pub valid: Option<Vec<QaExample>>,
    /// Its `task_options` hold run_qa's `doc_stride` and `max_answer_length`.
    pub config: TrainingConfig,
    /// `checkpoints/step-N/` live here.
    pub work_dir: PathBuf,
    pub device: Device,
}

pub fn run_question_answering(
    job: &QuestionAnsweringJob,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome, TrainError> {
    check_job(job)?;
    let task = QaTask::prepare(job)?;
    let settings = task.tokenizer.settings();
    let setup = RunSetup {
        config: &job.config,
        work_dir: &job.work_dir,
        device: &job.device,
        names: &QA_METRICS,
        checkpoint: CheckpointTask::QuestionAnswering {
            lora: task.spec.lora.clone(),
            doc_stride: settings.doc_stride,
            max_answer_length: task.answers.max_answer_length,
            allow_no_answer: task.answers.allow_no_answer,
        },
        base_model: job.base_model.clone(),
        max_seq_len: settings.max_seq_len,
        // `qa_outputs` is made from scratch on top of the encoder.
        new_head: &["qa_outputs."],
        vars: task.model.trainable_vars(),
        has_valid: task.valid.is_some(),
        buffers: Vec::new(),
        pretrained_lr_scale: 1.0,
    };
    run_task(setup, &task, observer, |trainer, observer| {
        build_summary(trainer, &task, observer)
    })
}

/// The model, the windows of both sets and how to train and evaluate.
pub(crate) struct QaTask<'a> {
    pub(crate) job: &'a QuestionAnsweringJob,
    pub(crate) model: QuestionAnsweringModel,
    spec: QaModelSpec,
    tokenizer: QaTokenizer,
    pub(crate) answers: AnswerSettings,
    pub(crate) train: LabelledWindows,
    /// The validation questions and their windows.
    pub(crate) valid: Option<(&'a [QaExample], LabelledWindows)>,
    pad_id: u32,
}

/// run_qa trains a model for v2 data (`--version_2_with_negative`) when the data has
/// unanswerable questions; here the data says so.
fn has_unanswerable(job: &QuestionAnsweringJob) -> bool {
    let mut all = job.train.iter().chain(job.valid.iter().flatten());
    all.any(|example| !example.is_answerable())
}

fn check_job(job: &QuestionAnsweringJob) -> Result<(), TrainError> {
    if job.train.is_empty() {
        return Err(TrainError::InvalidData(
            "the training file has no examples".into(),
        ));
    }
    check_loop_settings(&job.config)
}

/// Both files cut into labelled windows, as the trainer reads them.
struct QaWindows<'a> {
    text_tokenizer: TextTokenizer,
    tokenizer: QaTokenizer,
    train: LabelledWindows,
    valid: Option<(&'a [QaExample], LabelledWindows)>,
}

fn window_sets(job: &QuestionAnsweringJob) -> Result<QaWindows<'_>, TrainError> {
    let cfg = &job.config;
    let text_tokenizer = TextTokenizer::from_dir(&job.base_model_dir)?;
    // Windows fit the model's positions; a stride given is used as given.
    let (encoder, _) = EncoderConfig::from_dir(&job.base_model_dir)?;
    let max_seq_len = cfg.max_seq_len.min(encoder.max_position_embeddings);
    let settings = WindowSettings {
        max_seq_len,
        doc_stride: cfg.task_options.doc_stride_for(max_seq_len),
    };
    let tokenizer = QaTokenizer::new(text_tokenizer.inner(), settings)?;
    let invalid = |which: &str, e: crate::zoo::ZooError| {
        TrainError::InvalidData(format!("{which} file, {e}"))
    };
    let train = labelled_windows(&tokenizer, &job.train).map_err(|e| invalid("training", e))?;
    let valid = match job.valid.as_deref() {
        Some(valid) if !valid.is_empty() => Some((
            valid,
            labelled_windows(&tokenizer, valid).map_err(|e| invalid("validation", e))?,
        )),
        _ => None,
    };
    Ok(QaWindows {
        text_tokenizer,
        tokenizer,
        train,
        valid,
    })
}

/// The job's plan (`train::plan`) from the windows its trainer reads: its examples are
/// windows (a context longer than `max_seq_len` makes several).
pub fn plan_question_answering(job: &QuestionAnsweringJob) -> Result<TrainingPlan, TrainError> {
    check_job(job)?;
    let windows = window_sets(job)?;
    let lengths: Vec<usize> = windows
        .train
        .windows
        .iter()
        .map(|w| w.input_ids.len())
        .collect();
    let valid = windows
        .valid
        .as_ref()
        .map_or(0, |(_, windows)| windows.len());
    let (base, device) = (&job.base_model_dir, &job.device);
    encoder_plan(base, &job.config, device, (&lengths, valid), 2)
}

impl<'a> QaTask<'a> {
    fn prepare(job: &'a QuestionAnsweringJob) -> Result<Self, TrainError> {
        let cfg = &job.config;
        let QaWindows {
            text_tokenizer,
            tokenizer,
            train,
            valid,
        } = window_sets(job)?;
        let spec = QaModelSpec {
            lora: (cfg.lora.rank > 0).then(|| cfg.lora.clone()),
        };
        let lengths: Vec<usize> = train.windows.iter().map(|w| w.input_ids.len()).collect();
        let (base, device) = (&job.base_model_dir, &job.device);
        crate::train::memory::check_encoder_job(base, cfg, 2, &lengths, device)?;
        let model = encoder_for_job::<QaHead>(base, &spec, cfg, device)?;
        let answers = AnswerSettings {
            max_answer_length: cfg.task_options.max_answer_length(),
            allow_no_answer: has_unanswerable(job),
            ..AnswerSettings::default()
        };
        Ok(Self {
            job,
            model,
            spec,
            tokenizer,
            answers,
            train,
            valid,
            pad_id: text_tokenizer.pad_id(),
        })
    }

    /// The model's loss, answers and scores on `examples`.
    pub(crate) fn evaluate_set(
        &self,
        examples: &[QaExample],
        windows: &LabelledWindows,
    ) -> Result<QaEvaluation, TrainError> {
        Ok(evaluate(
            &self.model,
            examples,
            windows,
            &self.answers,
            self.job.config.batch_size,
            self.pad_id,
            &self.job.device,
        )?)
    }
}

impl TrainTask for QaTask<'_> {
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
        let windows: Vec<&QaWindow> = indices.iter().map(|&i| &self.train.windows[i]).collect();
        let labels: Vec<_> = indices.iter().map(|&i| self.train.labels[i]).collect();
        let batch = collate_windows(&windows, self.pad_id, &self.job.device)?;
        let logits = self.model.forward(&batch, true)?;
        let loss = QuestionAnsweringModel::loss(&logits, &batch, &labels)?;
        Ok(MicroBatch {
            loss,
            units: indices.len(),
            correct: 0,
            tokens: batch.inputs.n_tokens as u64,
            extra: Metrics::default(),
        })
    }

    /// The whole validation set at every evaluation point.
    fn evaluate(&self, at: &EvalPoint, row: &mut MetricsRow) -> Result<(), TrainError> {
        let Some((examples, windows)) = &self.valid else {
            return Ok(());
        };
        if at.epoch_end || at.eval_due || at.regular_save {
            let evaluation = self.evaluate_set(examples, windows)?;
            row.set("valid_loss", evaluation.loss);
            row.set("valid_exact_match", evaluation.scores.all.exact);
            row.set("valid_f1", evaluation.scores.all.f1);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "train_tests.rs"]
mod tests;
