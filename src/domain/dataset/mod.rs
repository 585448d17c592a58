//! Training files: which format a file is in, and parsing each format into examples.
//!
//! Everything here works on the bytes of an uploaded file; nothing reads disk. Errors name the
//! first bad example the way OpenAI does (`Invalid file format. Example 3, message 2: …`), with
//! the physical line number in the file kept in [`DatasetError::line`] and added to the message
//! when it differs from the example number (CSV headers, blank lines, multi-line CSV records).
//!
//! # Layout
//! - `mod.rs`: shared types, the JSONL line reader, format detection, upload validation.
//! - `classification.rs`: `{"text","label"}` JSONL and `text,label` CSV.
//! - `chat.rs`: `{"messages": […]}` chat examples and the message checks shared with DPO.
//! - `other.rs`: prompt/completion, preference (DPO) and token-tagging files.

mod chat;
mod classification;
mod other;

pub use chat::{parse_chat, ChatExample, ChatMessage, ChatRole};
pub use classification::{label_set, parse_classification, ClassificationData, LabeledText};
pub use other::{
    parse_preference, parse_prompt_completion, parse_token_tags, PreferenceExample,
    PromptCompletion, TokenTagsExample,
};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::hyperparams::TaskKind;

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
    /// `{"tokens","tags"}` (token classification).
    TokenTags,
}

impl DataFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DataFormat::Classification => "classification",
            DataFormat::Chat => "chat",
            DataFormat::PromptCompletion => "prompt_completion",
            DataFormat::Preference => "preference",
            DataFormat::TokenTags => "token_tags",
        }
    }

    /// The task a supervised job on this format trains; `None` for formats no trainer takes
    /// yet (preference pairs, token tags).
    pub fn task_kind(self) -> Option<TaskKind> {
        match self {
            DataFormat::Classification => Some(TaskKind::SequenceClassification),
            DataFormat::Chat => Some(TaskKind::ChatCompletion),
            DataFormat::PromptCompletion => Some(TaskKind::PromptCompletion),
            DataFormat::Preference | DataFormat::TokenTags => None,
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
prompt/completion pairs, preference pairs (input/preferred_output/non_preferred_output) or \
token tags (tokens/tags).";

/// Where an example sits in its file: its 1-based number among the examples and its 1-based
/// physical line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExampleAt {
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

pub(crate) fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes)
}

/// Non-blank lines of a JSONL file with their 1-based physical line numbers. Handles a BOM,
/// CRLF line ends and blank lines (skipped, but counted for line numbers).
pub(crate) fn non_blank_lines(bytes: &[u8]) -> impl Iterator<Item = (ExampleAt, &[u8])> {
    strip_bom(bytes)
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim_ascii()))
        .filter(|(_, line)| !line.is_empty())
        .enumerate()
        .map(|(index, (line, text))| {
            let at = ExampleAt {
                example: index + 1,
                line,
            };
            (at, text)
        })
}

/// Parses one JSONL line into an object, or names the example that is not one.
pub(crate) fn parse_object(at: ExampleAt, text: &[u8]) -> Result<Map<String, Value>, DatasetError> {
    let value: Value = serde_json::from_slice(text)
        .map_err(|e| at.error(format_args!(" is not valid JSON: {e}.")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(at.error(format_args!(
            " must be a JSON object, got {}.",
            json_type(&other)
        ))),
    }
}

/// Every line of a JSONL file as an object; stops at the first line that is not one.
pub(crate) fn jsonl_objects(
    bytes: &[u8],
) -> impl Iterator<Item = Result<(ExampleAt, Map<String, Value>), DatasetError>> + '_ {
    non_blank_lines(bytes).map(|(at, text)| parse_object(at, text).map(|map| (at, map)))
}

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

/// True when the first non-blank line looks like JSON rather than a CSV header.
pub(crate) fn looks_like_jsonl(bytes: &[u8]) -> bool {
    non_blank_lines(bytes)
        .next()
        .is_some_and(|(_, text)| text.starts_with(b"{") || text.starts_with(b"["))
}

/// Decides the format from the first record. A record that only has some of a format's keys is
/// still given that format, so that parsing names the missing key instead of calling the whole
/// file unrecognisable.
pub fn detect_format(bytes: &[u8]) -> Result<DataFormat, DatasetError> {
    let Some((at, text)) = non_blank_lines(bytes).next() else {
        return Err(empty_file());
    };
    if !looks_like_jsonl(bytes) {
        return if classification::csv_has_text_label_header(bytes) {
            Ok(DataFormat::Classification)
        } else {
            Err(unexpected_format(at.line))
        };
    }
    let record = parse_object(at, text)?;
    let has = |key: &str| record.contains_key(key);
    let format = if has("messages") {
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
    } else if has("prompt") || has("completion") {
        DataFormat::PromptCompletion
    } else if has("text") || has("label") {
        DataFormat::Classification
    } else {
        return Err(unexpected_format(at.line));
    };
    Ok(format)
}

fn unexpected_format(line: usize) -> DatasetError {
    DatasetError {
        line,
        message: UNEXPECTED_FORMAT.to_string(),
    }
}

fn empty_file() -> DatasetError {
    DatasetError {
        line: 0,
        message: "Invalid file format. The file contains no examples.".to_string(),
    }
}

/// Checks a file uploaded with purpose `fine-tune`: its format and the number of examples, or
/// the first error. The minimum number of examples is checked when a job starts, not here.
pub fn validate_upload(bytes: &[u8]) -> Result<(DataFormat, usize), DatasetError> {
    let format = detect_format(bytes)?;
    let count = match format {
        DataFormat::Classification => parse_classification(bytes)?.examples.len(),
        DataFormat::Chat => parse_chat(bytes)?.len(),
        DataFormat::PromptCompletion => parse_prompt_completion(bytes)?.len(),
        DataFormat::Preference => parse_preference(bytes)?.len(),
        DataFormat::TokenTags => parse_token_tags(bytes)?.len(),
    };
    if count == 0 {
        return Err(empty_file());
    }
    Ok((format, count))
}

#[cfg(test)]
mod tests;
