//! One job's trainer input, by task: the validated data, the resolved settings and the
//! base model become the job struct of the task's trainer (`src/tasks/<name>/`), and the
//! base model's architecture must fit the task.

use std::path::PathBuf;

use candle_core::Device;

use super::validate::TrainingData;
use super::JobFailure;
use crate::artifacts::BaseLocation;
use crate::basemodels::BaseModelKind;
use crate::domain::hyperparams::TrainingConfig;
use crate::domain::job_spec::{JobSpec, AUTO_DPO_BETA};
use crate::domain::task::{Architecture, Task};
use crate::tasks::dpo::{plan_dpo, run_dpo, DpoJob};
use crate::tasks::image_classification::{
    plan_image_classification, run_image_classification, ImageClassificationJob,
};
use crate::tasks::question_answering::{
    plan_question_answering, run_question_answering, QuestionAnsweringJob,
};
use crate::tasks::sequence_classification::{
    plan_classification, run_classification, ClassificationJob,
};
use crate::tasks::sft::{plan_sft, run_sft, SftExamples, SftJob};
use crate::tasks::token_classification::{
    plan_token_classification, run_token_classification, TokenClassificationJob,
};
use crate::train::plan::{PlanNotes, TrainingPlan};
use crate::train::{TrainError, TrainObserver, TrainOutcome};

/// One job's trainer input, by task.
pub(super) enum Training {
    Classification(ClassificationJob),
    Sft(SftJob),
    Dpo(DpoJob),
    TokenClassification(TokenClassificationJob),
    QuestionAnswering(QuestionAnsweringJob),
    ImageClassification(ImageClassificationJob),
}

/// The resolved numbers a trainer runs with.
pub(super) struct TrainSettings {
    pub config: TrainingConfig,
    /// DPO's `beta` (`None` for supervised jobs).
    pub beta: Option<f64>,
}

impl Training {
    pub(super) fn new(
        data: TrainingData,
        base_model_dir: PathBuf,
        base_model: BaseLocation,
        settings: TrainSettings,
        work_dir: PathBuf,
        device: Device,
    ) -> Self {
        let TrainSettings { config, beta } = settings;
        match data {
            TrainingData::Classification {
                train,
                valid,
                labels,
            } => Training::Classification(ClassificationJob {
                base_model_dir,
                base_model,
                train,
                valid,
                labels,
                config,
                work_dir,
                device,
            }),
            TrainingData::TokenClassification {
                train,
                valid,
                labels,
                iob1: _,
            } => Training::TokenClassification(TokenClassificationJob {
                base_model_dir,
                base_model,
                train,
                valid,
                labels,
                config,
                work_dir,
                device,
            }),
            TrainingData::Chat { train, valid } => Training::Sft(SftJob {
                base_model_dir,
                base_model,
                train: SftExamples::Chat(train),
                valid: valid.map(SftExamples::Chat),
                config,
                work_dir,
                device,
            }),
            TrainingData::PromptCompletion { train, valid } => Training::Sft(SftJob {
                base_model_dir,
                base_model,
                train: SftExamples::PromptCompletion(train),
                valid: valid.map(SftExamples::PromptCompletion),
                config,
                work_dir,
                device,
            }),
            TrainingData::Preference { train, valid } => Training::Dpo(DpoJob {
                base_model_dir,
                base_model,
                train,
                valid,
                config,
                beta: beta.unwrap_or(AUTO_DPO_BETA),
                work_dir,
                device,
            }),
            TrainingData::Images {
                train,
                valid,
                labels,
            } => Training::ImageClassification(ImageClassificationJob {
                base_model_dir,
                base_model,
                train,
                valid,
                labels,
                config,
                work_dir,
                device,
            }),
            TrainingData::QuestionAnswering { train, valid } => {
                Training::QuestionAnswering(QuestionAnsweringJob {
                    base_model_dir,
                    base_model,
                    train,
                    valid,
                    config,
                    work_dir,
                    device,
                })
            }
        }
    }

    /// What the job will do (`train::plan`), from the preparation its trainer runs; what
    /// that preparation would warn of goes to `notes`.
    pub(super) fn plan(&self, notes: &mut PlanNotes) -> Result<TrainingPlan, TrainError> {
        match self {
            Training::Classification(job) => plan_classification(job),
            Training::Sft(job) => plan_sft(job, notes),
            Training::Dpo(job) => plan_dpo(job, notes),
            Training::TokenClassification(job) => plan_token_classification(job),
            Training::QuestionAnswering(job) => plan_question_answering(job),
            Training::ImageClassification(job) => plan_image_classification(job),
        }
    }

    pub(super) fn run(&self, observer: &mut dyn TrainObserver) -> Result<TrainOutcome, TrainError> {
        match self {
            Training::Classification(job) => run_classification(job, observer),
            Training::Sft(job) => run_sft(job, observer),
            Training::Dpo(job) => run_dpo(job, observer),
            Training::TokenClassification(job) => run_token_classification(job, observer),
            Training::QuestionAnswering(job) => run_question_answering(job, observer),
            Training::ImageClassification(job) => run_image_classification(job, observer),
        }
    }
}

/// The job's hyperparameters fit its task (creation checks this when the training file's
/// format is on record; a job whose file predates that is checked here, before it trains).
pub(super) fn check_options_fit_task(spec: &JobSpec, task: Task) -> Result<(), JobFailure> {
    spec.check_task(task).map_err(|error| {
        JobFailure::fatal("invalid_hyperparameters", error.message, Some(&error.param))
    })
}

/// Encoders fine-tune for encoder tasks, decoders for decoder tasks.
pub(super) fn check_model_fits_task(
    model: &str,
    kind: BaseModelKind,
    task: Task,
) -> Result<(), JobFailure> {
    let architecture = match kind {
        BaseModelKind::Encoder => Architecture::Encoder,
        BaseModelKind::Decoder => Architecture::Decoder,
        BaseModelKind::Vision => Architecture::Vision,
    };
    if task.architecture() == architecture {
        return Ok(());
    }
    let message = match kind {
        BaseModelKind::Encoder if task == Task::ImageClassification => format!(
            "The model `{model}` is a text encoder; image classification needs an image model in timm's layout (e.g. `timm/efficientnet_lite0`)."
        ),
        BaseModelKind::Decoder if task == Task::ImageClassification => format!(
            "The model `{model}` is a language model; image classification needs an image model in timm's layout (e.g. `timm/efficientnet_lite0`)."
        ),
        BaseModelKind::Encoder => format!(
            "The model `{model}` is an encoder and can only be fine-tuned for text classification (text/label data), token classification (tokens/tags data) or extractive question answering (SQuAD data); chat, prompt-completion and preference data need a decoder model."
        ),
        BaseModelKind::Decoder => format!(
            "The model `{model}` cannot be fine-tuned for {}; use an encoder (BERT-family) model, or chat / prompt-completion data.",
            task.label()
        ),
        BaseModelKind::Vision => format!(
            "The model `{model}` is an image model and can only be fine-tuned for image classification (a zip or tar archive of class folders, or image/label JSONL); {} needs a text model.",
            task.label()
        ),
    };
    Err(JobFailure::fatal("invalid_model", message, Some("model")))
}
