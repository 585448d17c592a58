//! The job's first phase: read and parse its files, with OpenAI's error codes and phrasing.
//! Runs on every claim (the parsed examples are what training needs), but only a job still
//! in `validating_files` emits the validation events.

use std::collections::HashSet;

use crate::blobs::Blobs;
use crate::domain::dataset::images::{image_container, read_images, LabeledImage};
use crate::domain::dataset::{
    detect_format, label_set, parse_chat, parse_classification, parse_preference,
    parse_prompt_completion, parse_squad, parse_token_tags, tag_label_set, ChatExample, DataFormat,
    DatasetError, Iob1Finding, LabeledText, PreferenceExample, PromptCompletion, QaExample,
    TokenTagsExample,
};
use crate::domain::job_spec::Method;
use crate::domain::task::Task;

use super::JobFailure;

/// OpenAI's documented minimum.
pub const MIN_EXAMPLES: usize = 10;

/// The examples of one job, by the task its training file's format implies.
#[derive(Debug, Clone)]
pub enum TrainingData {
    Classification {
        train: Vec<LabeledText>,
        valid: Option<Vec<LabeledText>>,
        /// Sorted; class id = index.
        labels: Vec<String>,
    },
    Chat {
        train: Vec<ChatExample>,
        valid: Option<Vec<ChatExample>>,
    },
    PromptCompletion {
        train: Vec<PromptCompletion>,
        valid: Option<Vec<PromptCompletion>>,
    },
    Preference {
        train: Vec<PreferenceExample>,
        valid: Option<Vec<PreferenceExample>>,
    },
    TokenClassification {
        train: Vec<TokenTagsExample>,
        valid: Option<Vec<TokenTagsExample>>,
        /// Tags of both files, `tag_label_set`'s order; label id = index.
        labels: Vec<String>,
        /// Entities opened by `I-` in the training file (IOB1 data), for an event.
        iob1: Option<Iob1Finding>,
    },
    QuestionAnswering {
        train: Vec<QaExample>,
        valid: Option<Vec<QaExample>>,
    },
    Images {
        train: Vec<LabeledImage>,
        valid: Option<Vec<LabeledImage>>,
        /// The training file's classes, alphabetical (ImageFolder's order); class id = index.
        labels: Vec<String>,
    },
}

impl TrainingData {
    pub fn n_train(&self) -> usize {
        match self {
            TrainingData::Classification { train, .. } => train.len(),
            TrainingData::Chat { train, .. } => train.len(),
            TrainingData::PromptCompletion { train, .. } => train.len(),
            TrainingData::Preference { train, .. } => train.len(),
            TrainingData::TokenClassification { train, .. } => train.len(),
            TrainingData::QuestionAnswering { train, .. } => train.len(),
            TrainingData::Images { train, .. } => train.len(),
        }
    }

    /// The task this data trains (DESIGN.md decision 7: the task comes from the data).
    pub fn task(&self) -> Task {
        match self {
            TrainingData::Classification { .. } => Task::SequenceClassification,
            TrainingData::Chat { .. } => Task::ChatSft,
            TrainingData::PromptCompletion { .. } => Task::CompletionSft,
            TrainingData::Preference { .. } => Task::Dpo,
            TrainingData::TokenClassification { .. } => Task::TokenClassification,
            TrainingData::QuestionAnswering { .. } => Task::QuestionAnswering,
            TrainingData::Images { .. } => Task::ImageClassification,
        }
    }
}

/// Parsed, checked data of one job.
#[derive(Debug, Clone)]
pub struct ValidatedData {
    pub data: TrainingData,
    /// Training examples identical to an earlier one (kept, reported as a warning).
    pub duplicates: usize,
}

/// Which of the job's files a failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Training,
    Validation,
}

impl Which {
    fn code(self) -> &'static str {
        match self {
            Which::Training => "invalid_training_file",
            Which::Validation => "invalid_validation_file",
        }
    }

    fn param(self) -> &'static str {
        match self {
            Which::Training => "training_file",
            Which::Validation => "validation_file",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Which::Training => "training",
            Which::Validation => "validation",
        }
    }

    /// `The job failed due to an invalid training file. <detail>`.
    fn failure(self, detail: impl std::fmt::Display) -> JobFailure {
        JobFailure::fatal(
            self.code(),
            format!(
                "The job failed due to an invalid {} file. {detail}",
                self.noun()
            ),
            Some(self.param()),
        )
    }
}

/// `Validating training file: file-… [and validation file: file-…]`.
pub fn validating_message(training_file: &str, validation_file: Option<&str>) -> String {
    match validation_file {
        Some(valid) => {
            format!("Validating training file: {training_file} and validation file: {valid}")
        }
        None => format!("Validating training file: {training_file}"),
    }
}

/// The name OpenAI gives a training file's format in its method-mismatch errors
/// (`fine-tune-chat` is observed; the others follow it).
fn openai_format_name(format: DataFormat) -> &'static str {
    match format {
        DataFormat::Classification => "fine-tune-classification",
        DataFormat::Chat => "fine-tune-chat",
        DataFormat::PromptCompletion => "fine-tune-completion",
        DataFormat::Preference => "fine-tune-preference",
        DataFormat::TokenTags => "fine-tune-token-classification",
        DataFormat::QuestionAnswering => "fine-tune-question-answering",
        DataFormat::Images => "fine-tune-images",
    }
}

/// Preference pairs train only with `dpo`, and `dpo` trains only on preference pairs; any
/// other pairing fails the job as OpenAI does (`invalid_training_file`).
fn check_format_fits_method(
    format: DataFormat,
    method: &Method,
    training_file: &str,
) -> Result<(), JobFailure> {
    let expected = match (method, format) {
        (Method::Supervised { .. }, DataFormat::Preference) => "dpo",
        (Method::Dpo { .. }, format) if format != DataFormat::Preference => "supervised",
        _ => return Ok(()),
    };
    Err(Which::Training.failure(format!(
        "Input file {training_file} is in the {} format, but the specified fine-tuning job is not using '{expected}' as the training method (provided method={}).",
        openai_format_name(format),
        method.name()
    )))
}

/// Reads and checks both files: a supported format that fits the job's method, at least
/// [`MIN_EXAMPLES`] training examples, a validation file in the training file's format.
pub async fn load_and_validate(
    blobs: &Blobs,
    training_file: &str,
    validation_file: Option<&str>,
    method: &Method,
) -> Result<ValidatedData, JobFailure> {
    let train_bytes = read_file(blobs, training_file, Which::Training).await?;
    let format = file_format(&train_bytes, Which::Training)?;
    check_format_fits_method(format, method, training_file)?;
    let valid_bytes = match validation_file {
        Some(id) => {
            let bytes = read_file(blobs, id, Which::Validation).await?;
            let valid_format = file_format(&bytes, Which::Validation)?;
            if valid_format != format {
                return Err(Which::Validation.failure(format!(
                    "The validation file is in the {} format but the training file is in the {} format.",
                    valid_format.as_str(),
                    format.as_str()
                )));
            }
            Some(bytes)
        }
        None => None,
    };
    let valid = valid_bytes.as_deref();
    let (data, duplicates) = match format {
        DataFormat::Classification => classification(&train_bytes, valid)?,
        DataFormat::Chat => {
            let train = parse_chat(&train_bytes).map_err(|e| Which::Training.failure(e.message))?;
            let duplicates = count_duplicates(&train);
            let valid = valid
                .map(|bytes| parse_chat(bytes).map_err(|e| Which::Validation.failure(e.message)))
                .transpose()?;
            (TrainingData::Chat { train, valid }, duplicates)
        }
        DataFormat::PromptCompletion => {
            let train = parse_prompt_completion(&train_bytes)
                .map_err(|e| Which::Training.failure(e.message))?;
            let duplicates = count_duplicates(&train);
            let valid = valid
                .map(|bytes| {
                    parse_prompt_completion(bytes).map_err(|e| Which::Validation.failure(e.message))
                })
                .transpose()?;
            (TrainingData::PromptCompletion { train, valid }, duplicates)
        }
        DataFormat::Preference => {
            let train =
                parse_preference(&train_bytes).map_err(|e| Which::Training.failure(e.message))?;
            let duplicates = count_duplicates(&train);
            let valid = valid
                .map(|bytes| {
                    parse_preference(bytes).map_err(|e| Which::Validation.failure(e.message))
                })
                .transpose()?;
            (TrainingData::Preference { train, valid }, duplicates)
        }
        DataFormat::QuestionAnswering => {
            let train =
                parse_squad(&train_bytes).map_err(|e| Which::Training.failure(e.message))?;
            let duplicates = count_duplicates(&train);
            let valid = valid
                .map(|bytes| parse_squad(bytes).map_err(|e| Which::Validation.failure(e.message)))
                .transpose()?;
            (TrainingData::QuestionAnswering { train, valid }, duplicates)
        }
        DataFormat::TokenTags => token_classification(&train_bytes, valid)?,
        DataFormat::Images => (images(&train_bytes, valid)?, 0),
    };
    if data.n_train() < MIN_EXAMPLES {
        return Err(JobFailure::fatal(
            "invalid_n_examples",
            format!(
                "Training file has {} example(s), but must have at least {MIN_EXAMPLES} examples",
                data.n_train()
            ),
            Some("training_file"),
        ));
    }
    Ok(ValidatedData { data, duplicates })
}

fn classification(
    train_bytes: &[u8],
    valid: Option<&[u8]>,
) -> Result<(TrainingData, usize), JobFailure> {
    let parsed =
        parse_classification(train_bytes).map_err(|e| Which::Training.failure(e.message))?;
    let labels = label_set(&parsed.examples);
    if parsed.examples.len() >= MIN_EXAMPLES && labels.len() < 2 {
        return Err(Which::Training.failure(format!(
            "Classification needs at least 2 distinct labels, found {}.",
            labels.len()
        )));
    }
    let valid = match valid {
        None => None,
        Some(bytes) => {
            let examples = parse_classification(bytes)
                .map_err(|e| Which::Validation.failure(e.message))?
                .examples;
            check_labels_known(&examples, &labels)?;
            Some(examples)
        }
    };
    let data = TrainingData::Classification {
        train: parsed.examples,
        valid,
        labels,
    };
    Ok((data, parsed.duplicates))
}

/// Labelled images (an archive of class folders, or JSONL); every validation image's class
/// must be one the training file has.
fn images(train_bytes: &[u8], valid: Option<&[u8]>) -> Result<TrainingData, JobFailure> {
    let read = |bytes: &[u8], which: Which| {
        let mut cursor = std::io::Cursor::new(bytes);
        let container = image_container(&mut cursor).map_err(|e| which.failure(e))?;
        read_images(cursor, container).map_err(|e| which.failure(e.into_dataset_error().message))
    };
    let train = read(train_bytes, Which::Training)?;
    let labels: Vec<String> = train
        .iter()
        .map(|image| image.label.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if train.len() >= MIN_EXAMPLES && labels.len() < 2 {
        return Err(Which::Training.failure(format!(
            "Image classification needs at least 2 classes, found {}.",
            labels.len()
        )));
    }
    let valid = valid
        .map(|bytes| read(bytes, Which::Validation))
        .transpose()?;
    if let Some(unknown) = valid
        .iter()
        .flatten()
        .find(|image| labels.binary_search(&image.label).is_err())
    {
        return Err(Which::Validation.failure(unknown.at.error(format_args!(
            " has class '{}', which does not appear in the training file.",
            unknown.label
        ))));
    }
    Ok(TrainingData::Images {
        train,
        valid,
        labels,
    })
}

/// Tagged sentences (JSONL or CoNLL); the label set comes from both files, so a tag seen
/// only in validation still has an output.
fn token_classification(
    train_bytes: &[u8],
    valid: Option<&[u8]>,
) -> Result<(TrainingData, usize), JobFailure> {
    let train = parse_token_tags(train_bytes).map_err(|e| Which::Training.failure(e.message))?;
    let valid = valid
        .map(|bytes| {
            parse_token_tags(bytes)
                .map(|data| data.examples)
                .map_err(|e| Which::Validation.failure(e.message))
        })
        .transpose()?;
    let labels = tag_label_set(train.examples.iter().chain(valid.iter().flatten()));
    let duplicates = count_duplicates(&train.examples);
    let data = TrainingData::TokenClassification {
        train: train.examples,
        valid,
        labels,
        iob1: train.iob1,
    };
    Ok((data, duplicates))
}

/// Examples equal to an earlier one (compared by their JSON form).
fn count_duplicates<T: serde::Serialize>(examples: &[T]) -> usize {
    let mut seen = HashSet::new();
    examples
        .iter()
        .filter(|example| {
            let key = serde_json::to_string(example).unwrap_or_default();
            !seen.insert(key)
        })
        .count()
}

async fn read_file(blobs: &Blobs, file_id: &str, which: Which) -> Result<Vec<u8>, JobFailure> {
    blobs
        .read(&Blobs::file_rel(file_id))
        .await
        .map_err(|_| which.failure(format!("File {file_id} could not be read.")))
}

fn file_format(bytes: &[u8], which: Which) -> Result<DataFormat, JobFailure> {
    detect_format(bytes).map_err(|e: DatasetError| which.failure(e.message))
}

/// A validation label the classifier never saw would have no output class.
fn check_labels_known(examples: &[LabeledText], labels: &[String]) -> Result<(), JobFailure> {
    let known: HashSet<&str> = labels.iter().map(String::as_str).collect();
    match examples
        .iter()
        .position(|example| !known.contains(example.label.as_str()))
    {
        None => Ok(()),
        Some(index) => Err(Which::Validation.failure(format!(
            "Example {} has label '{}', which does not appear in the training file.",
            index + 1,
            examples[index].label
        ))),
    }
}
