//! What a job trains, in one place: the task (decided by its data, DESIGN.md decision 7)
//! and what follows from it — the name stored on the job row, the base model it needs,
//! the words messages use for it, how its result is served and which hyperparameter
//! defaults it starts from.

use serde::{Deserialize, Serialize};

/// A fine-tuning task. Every task has a folder under `src/tasks/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Text (or text pair) → one label: `AutoModelForSequenceClassification`.
    SequenceClassification,
    /// Words → one tag each (NER): `AutoModelForTokenClassification`.
    TokenClassification,
    /// Question + context → answer span: `AutoModelForQuestionAnswering`.
    QuestionAnswering,
    /// Chat messages → assistant turns (OpenAI's supervised method on chat data).
    ChatSft,
    /// Prompt → completion (OpenAI's legacy prompt/completion data).
    CompletionSft,
    /// Preference pairs (OpenAI's `dpo` method).
    Dpo,
    /// Image → one label, by transfer learning on a pretrained CNN (timm layout).
    ImageClassification,
}

/// The base model family a task fine-tunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// BERT-family encoders.
    Encoder,
    /// Causal language models.
    Decoder,
    /// Convolutional image backbones in timm's layout.
    Vision,
}

/// How a trained model is served; stored as the `kind` of its model rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServedKind {
    /// `/v1/classifications`.
    Classifier,
    /// `/v1/token_classifications`.
    TokenClassifier,
    /// `/v1/question_answering`.
    QuestionAnswerer,
    /// `/v1/chat/completions` and `/v1/completions`.
    CausalLm,
    /// `/v1/classifications` with image inputs.
    ImageClassifier,
    /// A base encoder loaded once and shared by its LoRA classifiers, which name it; never
    /// the kind of a model row.
    SharedEncoder,
}

/// Which hyperparameter defaults a task starts from (`domain::hyperparams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultsKey {
    /// The BERT recipe: full fine-tuning, lr 2e-5, batch 16.
    EncoderFineTune,
    /// peft's decoder recipe: LoRA r=8, lr 2e-4, batch 4.
    DecoderLora,
    /// The torchvision transfer-learning recipe: frozen backbone, new head, lr 1e-3,
    /// batch 32.
    ImageTransfer,
}

pub const ALL_TASKS: [Task; 7] = [
    Task::SequenceClassification,
    Task::TokenClassification,
    Task::QuestionAnswering,
    Task::ChatSft,
    Task::CompletionSft,
    Task::Dpo,
    Task::ImageClassification,
];

impl Task {
    /// The name stored on the job row (`jobs.task`).
    pub fn stored_name(self) -> &'static str {
        match self {
            Task::SequenceClassification => "classification",
            Task::TokenClassification => "token_classification",
            Task::QuestionAnswering => "question_answering",
            Task::ChatSft => "chat",
            Task::CompletionSft => "completion",
            Task::Dpo => "dpo",
            Task::ImageClassification => "image_classification",
        }
    }

    pub fn from_stored_name(name: &str) -> Option<Self> {
        ALL_TASKS.into_iter().find(|t| t.stored_name() == name)
    }

    pub fn architecture(self) -> Architecture {
        match self {
            Task::SequenceClassification | Task::TokenClassification | Task::QuestionAnswering => {
                Architecture::Encoder
            }
            Task::ChatSft | Task::CompletionSft | Task::Dpo => Architecture::Decoder,
            Task::ImageClassification => Architecture::Vision,
        }
    }

    /// The task in user-facing messages.
    pub fn label(self) -> &'static str {
        match self {
            Task::SequenceClassification => "text classification",
            Task::TokenClassification => "token classification",
            Task::QuestionAnswering => "question answering",
            Task::ChatSft => "chat",
            Task::CompletionSft => "prompt/completion",
            Task::Dpo => "preference (DPO)",
            Task::ImageClassification => "image classification",
        }
    }

    /// How the trained model is served (DPO results are chat models).
    pub fn served_as(self) -> ServedKind {
        match self {
            Task::SequenceClassification => ServedKind::Classifier,
            Task::TokenClassification => ServedKind::TokenClassifier,
            Task::QuestionAnswering => ServedKind::QuestionAnswerer,
            Task::ChatSft | Task::CompletionSft | Task::Dpo => ServedKind::CausalLm,
            Task::ImageClassification => ServedKind::ImageClassifier,
        }
    }

    pub fn defaults_key(self) -> DefaultsKey {
        match self.architecture() {
            Architecture::Encoder => DefaultsKey::EncoderFineTune,
            Architecture::Decoder => DefaultsKey::DecoderLora,
            Architecture::Vision => DefaultsKey::ImageTransfer,
        }
    }
}

impl ServedKind {
    /// The `kind` column of model rows.
    pub fn as_str(self) -> &'static str {
        match self {
            ServedKind::Classifier => "classifier",
            ServedKind::TokenClassifier => "token_classifier",
            ServedKind::QuestionAnswerer => "question_answerer",
            ServedKind::CausalLm => "causal_lm",
            ServedKind::ImageClassifier => "image_classifier",
            ServedKind::SharedEncoder => "shared_encoder",
        }
    }

    /// `None` for a kind this build does not know (a row from a newer version), and for
    /// kinds no row has.
    pub fn from_stored(kind: &str) -> Option<Self> {
        [
            ServedKind::Classifier,
            ServedKind::TokenClassifier,
            ServedKind::QuestionAnswerer,
            ServedKind::CausalLm,
            ServedKind::ImageClassifier,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_are_the_ones_job_rows_already_hold() {
        assert_eq!(Task::SequenceClassification.stored_name(), "classification");
        assert_eq!(Task::ChatSft.stored_name(), "chat");
        assert_eq!(Task::CompletionSft.stored_name(), "completion");
        for task in ALL_TASKS {
            assert_eq!(Task::from_stored_name(task.stored_name()), Some(task));
        }
        assert_eq!(Task::from_stored_name("regression"), None);
    }

    #[test]
    fn served_kinds_keep_model_row_strings() {
        assert_eq!(ServedKind::Classifier.as_str(), "classifier");
        assert_eq!(ServedKind::CausalLm.as_str(), "causal_lm");
        assert_eq!(
            ServedKind::from_stored("causal_lm"),
            Some(ServedKind::CausalLm)
        );
        assert_eq!(ServedKind::from_stored("x"), None);
        assert_eq!(Task::Dpo.served_as(), ServedKind::CausalLm);
        assert_eq!(
            Task::TokenClassification.served_as(),
            ServedKind::TokenClassifier
        );
    }

    #[test]
    fn architecture_defaults_and_missing_trainers() {
        assert_eq!(
            Task::QuestionAnswering.architecture(),
            Architecture::Encoder
        );
        assert_eq!(Task::Dpo.architecture(), Architecture::Decoder);
        assert_eq!(Task::ChatSft.defaults_key(), DefaultsKey::DecoderLora);
        assert_eq!(
            Task::SequenceClassification.defaults_key(),
            DefaultsKey::EncoderFineTune
        );
    }
}
