//! Training files: which format a file is in, and parsing each format into examples.
//!
//! Files are read one record at a time from any reader (a file on disk, or bytes in memory),
//! so validating an upload takes the same bounded memory for any size (see `summary.rs` for
//! the bound). Errors name the
//! first bad example the way OpenAI does (`Invalid file format. Example 3, message 2: …`), with
//! the physical line number in the file kept in [`DatasetError::line`] and added to the message
//! when it differs from the example number (CSV headers, blank lines, multi-line CSV records).
//!
//! # Layout
//! - `mod.rs`: shared types, format detection.
//! - `lines.rs`: the JSONL line reader and the per-record size limit.
//! - `csv_source.rs`: the CSV record reader, with physical line numbers.
//! - `summary.rs`: one streaming pass over a whole file (upload validation), bounded state.
//! - `classification.rs`: `{"text","label"}` JSONL and `text,label` CSV.
//! - `chat.rs`: `{"messages": […]}` chat examples and the message checks shared with DPO.
//! - `other.rs`: prompt/completion and preference (DPO) files.
//! - `token_tags.rs`: token classification, `{"tokens","tags"}` JSONL and CoNLL text.
//! - `squad.rs`: extractive question answering (SQuAD JSONL and nested JSON, v1 and v2).

mod chat;
mod classification;
mod csv_source;
pub mod images;
mod lines;
mod other;
mod squad;
mod summary;
mod token_tags;

pub use chat::{parse_chat, ChatExample, ChatMessage, ChatRole};
pub use classification::{label_set, parse_classification, ClassificationData, LabeledText};
pub use lines::{ScanError, MAX_RECORD_BYTES};
pub use other::{parse_preference, parse_prompt_completion, PreferenceExample, PromptCompletion};
pub use squad::{parse_squad, QaAnswer, QaExample};
pub use summary::{
    scan, validate_training_file, FileSummary, DUPLICATE_TRACKING_LIMIT, MAX_LABELS,
    MAX_LABEL_BYTES,
};
pub use token_tags::{
    parse_token_tags, tag_label_set, Iob1Finding, Iob1Tally, TokenTagsData, TokenTagsExample,
};

use std::io::{BufReader, Read, Seek};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use lines::{parse_object, JsonlLines};

use super::task::Task;

/// The shape of a training file, decided from its first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// `{"text","label"}` JSONL, or CSV whose header has `text` and `label` columns.
    Classification,
    /// `{"messages": […]}` (OpenAI chat SFT).
    Chat,
    /// `{"prompt","completion"}` (OpenAI legacy completions).
    PromptCompletion,
    /// `{"input","preferred_output","non_preferred_output"}` (OpenAI DPO).
    Preference,
    /// `{"tokens","tags"}` JSONL or CoNLL text (token classification).
    TokenTags,
    /// `{"context","question","answers"}` JSONL or a nested SQuAD JSON file (extractive QA).
    QuestionAnswering,
    /// A zip or tar archive of class folders, or `{"image","label"}` JSONL (image
    /// classification).
    Images,
}

impl DataFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DataFormat::Classification => "classification",
            DataFormat::Chat => "chat",
            DataFormat::PromptCompletion => "prompt_completion",
            DataFormat::Preference => "preference",
            DataFormat::TokenTags => "token_tags",
            DataFormat::QuestionAnswering => "question_answering",
            DataFormat::Images => "images",
        }
    }

    /// The format a file row's `format` column names (`None`: not one this build writes).
    pub fn from_stored(name: &str) -> Option<Self> {
        [
            DataFormat::Classification,
            DataFormat::Chat,
            DataFormat::PromptCompletion,
            DataFormat::Preference,
            DataFormat::TokenTags,
            DataFormat::QuestionAnswering,
            DataFormat::Images,
        ]
        .into_iter()
        .find(|format| format.as_str() == name)
    }

    /// The task a supervised job on this format trains; `None` for formats no supervised
    /// trainer takes (preference pairs).
    pub fn task_kind(self) -> Option<Task> {
        match self {
            DataFormat::Classification => Some(Task::SequenceClassification),
            DataFormat::Chat => Some(Task::ChatSft),
            DataFormat::PromptCompletion => Some(Task::CompletionSft),
            DataFormat::TokenTags => Some(Task::TokenClassification),
            DataFormat::QuestionAnswering => Some(Task::QuestionAnswering),
            DataFormat::Images => Some(Task::ImageClassification),
            DataFormat::Preference => None,
        }
    }
}

/// The first problem found in a training file.
///
/// `message` is the complete user-facing text in OpenAI's phrasing; the job layer prefixes it
/// with `The job failed due to an invalid training file.`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DatasetError {
    /// 1-based physical line of the offending record in the file; 0 when the problem concerns
    /// the whole file (it is empty).
    pub line: usize,
    pub message: String,
}

/// Message for a file whose first record matches none of our formats.
pub const UNEXPECTED_FORMAT: &str = "Unexpected file format, expected either text/label \
classification examples (JSONL, or CSV with a `text,label` header), chat messages, \
prompt/completion pairs, preference pairs (input/preferred_output/non_preferred_output), \
token tags (tokens/tags JSONL, or CoNLL `token<TAB>tag` lines), extractive QA \
(context/question/answers, or a SQuAD JSON file) or labelled images (a zip or tar archive of \
class folders, or image/label JSONL).";

/// Where an example sits in its file: its 1-based number among the examples and its 1-based
/// physical line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExampleAt {
    pub example: usize,
    pub line: usize,
}

impl ExampleAt {
    /// `Example 3`, or `Example 3 (line 5)` when the two numbers differ.
    pub fn label(self) -> String {
        if self.example == self.line {
            format!("Example {}", self.example)
        } else {
            format!("Example {} (line {})", self.example, self.line)
        }
    }

    /// An error whose text continues right after the example label, e.g.
    /// `" is missing key 'text'."` or `", message 2: unrecognized role 'bot'."`.
    pub fn error(self, rest: impl std::fmt::Display) -> DatasetError {
        DatasetError {
            line: self.line,
            message: format!("Invalid file format. {}{rest}", self.label()),
        }
    }

    pub fn missing_key(self, key: &str) -> DatasetError {
        self.error(format_args!(" is missing key '{key}'."))
    }
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// `a string`, `an array`… for error messages.
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Decides the format from the first record. A record that only has some of a format's keys is
/// still given that format, so that parsing names the missing key instead of calling the whole
/// file unrecognisable.
pub fn detect_format(bytes: &[u8]) -> Result<DataFormat, DatasetError> {
    detect(std::io::Cursor::new(bytes))
        .map(|detected| detected.format)
        .map_err(ScanError::into_dataset_error)
}

/// A file's format, and whether it is a CSV file (classification only) or CoNLL text (token
/// tags only), or how its images are packed.
struct Detected {
    format: DataFormat,
    csv: bool,
    conll: bool,
    images: Option<images::ImageContainer>,
}

/// Reads the first record of `reader` (from its start) to decide the file's format.
fn detect<R: Read + Seek>(mut reader: R) -> Result<Detected, ScanError> {
    if let Some(container) = images::archive_kind(&mut reader)? {
        return Ok(Detected {
            format: DataFormat::Images,
            csv: false,
            conll: false,
            images: Some(container),
        });
    }
    reader.rewind()?;
    // A nested SQuAD file is one JSON document (SQuAD's train set: a 40 MB line), not JSONL.
    if squad::is_nested_squad(BufReader::new(&mut reader))? {
        return Ok(Detected {
            format: DataFormat::QuestionAnswering,
            csv: false,
            conll: false,
            images: None,
        });
    }
    reader.rewind()?;
    let mut lines = JsonlLines::new(BufReader::new(&mut reader));
    let Some((at, text)) = lines.next_line()? else {
        return Err(empty_file().into());
    };
    if !(text.starts_with(b"{") || text.starts_with(b"[")) {
        if token_tags::looks_like_conll(text) {
            return Ok(Detected {
                format: DataFormat::TokenTags,
                csv: false,
                conll: true,
                images: None,
            });
        }
        drop(lines);
        reader.rewind()?;
        return if classification::csv_has_text_label_header(reader)? {
            Ok(Detected {
                format: DataFormat::Classification,
                csv: true,
                conll: false,
                images: None,
            })
        } else {
            Err(unexpected_format(at.line).into())
        };
    }
    let record = parse_object(at, text)?;
    let has = |key: &str| record.contains_key(key);
    let format = if images::is_image_record(&record) {
        return Ok(Detected {
            format: DataFormat::Images,
            csv: false,
            conll: false,
            images: Some(images::ImageContainer::Jsonl),
        });
    } else if has("messages") {
        DataFormat::Chat
    } else if has("input")
        || has("preferred_output")
        || has("non_preferred_output")
        || has("preferred_completion")
        || has("non_preferred_completion")
    {
        DataFormat::Preference
    } else if has("tokens") || has("tags") {
        DataFormat::TokenTags
    } else if has("question") || has("context") || has("answers") {
        DataFormat::QuestionAnswering
    } else if has("prompt") || has("completion") {
        DataFormat::PromptCompletion
    } else if has("text") || has("label") {
        DataFormat::Classification
    } else {
        return Err(unexpected_format(at.line).into());
    };
    Ok(Detected {
        format,
        csv: false,
        conll: false,
        images: None,
    })
}

fn unexpected_format(line: usize) -> DatasetError {
    DatasetError {
        line,
        message: UNEXPECTED_FORMAT.to_string(),
    }
}

pub(crate) fn empty_file() -> DatasetError {
    DatasetError {
        line: 0,
        message: "Invalid file format. The file contains no examples.".to_string(),
    }
}

/// Checks an in-memory training file: its format and the number of examples, or the first
/// error. The minimum number of examples is checked when a job starts, not here.
pub fn validate_upload(bytes: &[u8]) -> Result<(DataFormat, usize), DatasetError> {
    scan(std::io::Cursor::new(bytes))
        .map(|summary| (summary.format, summary.examples))
        .map_err(ScanError::into_dataset_error)
}

#[cfg(test)]
mod tests;
