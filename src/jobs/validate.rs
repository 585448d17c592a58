//! The job's first phase: read and parse its files, with OpenAI's error codes and phrasing.
//! Runs on every claim (the parsed examples are what training needs), but only a job still
//! in `validating_files` emits the validation events.

use std::collections::HashSet;

use crate::blobs::Blobs;
use crate::domain::dataset::{
    detect_format, label_set, parse_classification, DataFormat, DatasetError, LabeledText,
};

use super::JobFailure;

/// OpenAI's documented minimum.
pub const MIN_EXAMPLES: usize = 10;

/// Parsed, checked data of one job.
#[derive(Debug, Clone)]
pub struct ValidatedData {
    pub train: Vec<LabeledText>,
    pub valid: Option<Vec<LabeledText>>,
    /// Sorted; class id = index.
    pub labels: Vec<String>,
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

/// Reads and checks both files.
pub async fn load_and_validate(
    blobs: &Blobs,
    training_file: &str,
    validation_file: Option<&str>,
) -> Result<ValidatedData, JobFailure> {
    let train_bytes = read_file(blobs, training_file, Which::Training).await?;
    let parsed = parse(&train_bytes, Which::Training)?;
    if parsed.examples.len() < MIN_EXAMPLES {
        return Err(JobFailure::fatal(
            "invalid_n_examples",
            format!(
                "Training file has {} example(s), but must have at least {MIN_EXAMPLES} examples",
                parsed.examples.len()
            ),
            Some("training_file"),
        ));
    }
    let labels = label_set(&parsed.examples);
    if labels.len() < 2 {
        return Err(Which::Training.failure(format!(
            "Classification needs at least 2 distinct labels, found {}.",
            labels.len()
        )));
    }
    let valid = match validation_file {
        None => None,
        Some(id) => {
            let bytes = read_file(blobs, id, Which::Validation).await?;
            let examples = parse(&bytes, Which::Validation)?.examples;
            check_labels_known(&examples, &labels)?;
            Some(examples)
        }
    };
    Ok(ValidatedData {
        train: parsed.examples,
        valid,
        labels,
        duplicates: parsed.duplicates,
    })
}

async fn read_file(blobs: &Blobs, file_id: &str, which: Which) -> Result<Vec<u8>, JobFailure> {
    blobs
        .read(&Blobs::file_rel(file_id))
        .await
        .map_err(|_| which.failure(format!("File {file_id} could not be read.")))
}

fn parse(
    bytes: &[u8],
    which: Which,
) -> Result<crate::domain::dataset::ClassificationData, JobFailure> {
    let format = detect_format(bytes).map_err(|e: DatasetError| which.failure(e.message))?;
    if format != DataFormat::Classification {
        return Err(which.failure(format!(
            "The file is in the {} format; temper fine-tunes text/label classification data.",
            format.as_str()
        )));
    }
    parse_classification(bytes).map_err(|e| which.failure(e.message))
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
