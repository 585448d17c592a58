//! Extractive question answering files in SQuAD's layouts:
//! - JSONL, one question a line, as Hugging Face's `squad` / `squad_v2` datasets store it:
//!   `{"id"?, "title"?, "context", "question", "answers": {"text": [...], "answer_start": [...]},
//!   "is_impossible"?}` (`answers` may also be SQuAD's list of `{"text", "answer_start"}`);
//! - the nested SQuAD JSON file, `{"version"?, "data": [{"title", "paragraphs": [{"context",
//!   "qas": [{"id", "question", "answers": [...], "is_impossible"?}]}]}]}`. SQuAD's train file
//!   is one 40 MB line, so it is read with a streaming serde visitor that holds one paragraph
//!   at a time, never the whole document.
//!
//! SQuAD v2 unanswerable questions have no answers (`answers.text == []`, or
//! `is_impossible: true`). `answer_start` counts characters (Unicode scalar values, as Python
//! indexes strings), and must point at its `text` inside the context.

use std::fmt;
use std::io::{self, BufRead, Seek};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::lines::{for_each_object, ScanError};
use super::{json_type, DatasetError, ExampleAt, UTF8_BOM};

#[path = "squad_nested.rs"]
mod nested;

use nested::for_each_nested;
pub(crate) use nested::is_nested_squad;

/// One gold answer: its text and where it starts in the context, in characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QaAnswer {
    pub text: String,
    pub answer_start: usize,
}

impl QaAnswer {
    /// The character offset just past the answer.
    pub fn answer_end(&self) -> usize {
        self.answer_start + self.text.chars().count()
    }
}

/// One question about one context; no answers means unanswerable (SQuAD v2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QaExample {
    /// The file's `id`, if it has one.
    pub id: Option<String>,
    pub question: String,
    pub context: String,
    pub answers: Vec<QaAnswer>,
}

impl QaExample {
    pub fn is_answerable(&self) -> bool {
        !self.answers.is_empty()
    }
}

/// Keys a JSONL question may have (`title` is carried by Hugging Face's SQuAD exports).
const JSONL_KEYS: [&str; 6] = [
    "id",
    "title",
    "context",
    "question",
    "answers",
    "is_impossible",
];

/// Parses a QA file (JSONL or nested SQuAD JSON) held in memory.
pub fn parse_squad(bytes: &[u8]) -> Result<Vec<QaExample>, DatasetError> {
    let mut examples = Vec::new();
    for_each_qa_example(io::Cursor::new(bytes), |example| {
        examples.push(example);
        Ok(())
    })
    .map_err(ScanError::into_dataset_error)?;
    Ok(examples)
}

/// Calls `each` with every question of a QA file, in order, reading it once from the start
/// with bounded memory; stops at the first error.
pub(crate) fn for_each_qa_example<R: BufRead + Seek>(
    mut reader: R,
    mut each: impl FnMut(QaExample) -> Result<(), DatasetError>,
) -> Result<(), ScanError> {
    reader.rewind()?;
    let nested = is_nested_squad(&mut reader)?;
    reader.rewind()?;
    if nested {
        return for_each_nested(reader, &mut each);
    }
    for_each_object(reader, |at, object| {
        each(qa_example(&Place::Line(at), None, &object, true)?)
    })
}

fn skip_bom<R: BufRead>(reader: &mut R) -> Result<(), io::Error> {
    if reader.fill_buf()?.starts_with(UTF8_BOM) {
        reader.consume(UTF8_BOM.len());
    }
    Ok(())
}

/// Where a question sits, for error messages.
enum Place {
    Line(ExampleAt),
    Nested {
        /// The example number, and the line on which its paragraph ends.
        at: ExampleAt,
        article: usize,
        paragraph: usize,
        question: usize,
    },
}

impl Place {
    fn error(&self, id: Option<&str>, rest: impl fmt::Display) -> DatasetError {
        let id = id.map(|id| format!(" (id '{id}')")).unwrap_or_default();
        match self {
            Place::Line(at) => at.error(format_args!("{id}{rest}")),
            Place::Nested {
                at,
                article,
                paragraph,
                question,
            } => DatasetError {
                line: at.line,
                message: format!(
                    "Invalid file format. Example {} (data[{article}].paragraphs[{paragraph}]\
                     .qas[{question}]{id}, in the paragraph ending on line {}){rest}",
                    at.example, at.line
                ),
            },
        }
    }
}

fn required_text(
    place: &Place,
    id: Option<&str>,
    object: &Map<String, Value>,
    key: &str,
) -> Result<String, DatasetError> {
    match object.get(key) {
        None | Some(Value::Null) => Err(place.error(id, format_args!(" is missing key '{key}'."))),
        Some(Value::String(text)) if text.trim().is_empty() => {
            Err(place.error(id, format_args!(": '{key}' is empty.")))
        }
        Some(Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(place.error(
            id,
            format_args!(": '{key}' must be a string, got {}.", json_type(other)),
        )),
    }
}

/// One question object: a JSONL line (`paragraph_context` `None`: the line has its own
/// `context`) or an entry of a nested paragraph's `qas`.
fn qa_example(
    place: &Place,
    paragraph_context: Option<String>,
    object: &Map<String, Value>,
    reject_extra_keys: bool,
) -> Result<QaExample, DatasetError> {
    let id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        Some(other) => {
            return Err(place.error(
                None,
                format_args!(": 'id' must be a string, got {}.", json_type(other)),
            ))
        }
    };
    let id_ref = id.as_deref();
    if reject_extra_keys {
        if let Some(extra) = object.keys().find(|k| !JSONL_KEYS.contains(&k.as_str())) {
            return Err(place.error(id_ref, format_args!(" contains an extra \"{extra}\".")));
        }
    }
    let context = match paragraph_context {
        Some(context) => context,
        None => required_text(place, id_ref, object, "context")?,
    };
    let question = required_text(place, id_ref, object, "question")?;
    let impossible = match object.get("is_impossible") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(other) => {
            return Err(place.error(
                id_ref,
                format_args!(
                    ": 'is_impossible' must be a boolean, got {}.",
                    json_type(other)
                ),
            ))
        }
    };
    let answers = match object.get("answers") {
        None | Some(Value::Null) if impossible => Vec::new(),
        None | Some(Value::Null) => {
            return Err(place.error(id_ref, " is missing key 'answers'."));
        }
        Some(value) => answers(place, id_ref, value)?,
    };
    if impossible && !answers.is_empty() {
        return Err(place.error(
            id_ref,
            ": 'is_impossible' is true but 'answers' is not empty.",
        ));
    }
    for (i, answer) in answers.iter().enumerate() {
        check_answer_in_context(place, id_ref, i + 1, answer, &context)?;
    }
    Ok(QaExample {
        id,
        question,
        context,
        answers,
    })
}

/// `{"text": [...], "answer_start": [...]}` or `[{"text", "answer_start"}, …]`.
fn answers(place: &Place, id: Option<&str>, value: &Value) -> Result<Vec<QaAnswer>, DatasetError> {
    let shape = || {
        place.error(
            id,
            ": 'answers' must be {\"text\": [...], \"answer_start\": [...]} or a list of \
             {\"text\", \"answer_start\"} objects.",
        )
    };
    let answer = |text: &Value, start: &Value, n: usize| -> Result<QaAnswer, DatasetError> {
        let Value::String(text) = text else {
            return Err(place.error(id, format_args!(": answer {n}: 'text' must be a string.")));
        };
        let Some(start) = start.as_u64().and_then(|s| usize::try_from(s).ok()) else {
            return Err(place.error(
                id,
                format_args!(": answer {n}: 'answer_start' must be a non-negative integer."),
            ));
        };
        if text.is_empty() {
            return Err(place.error(id, format_args!(": answer {n}: 'text' is empty.")));
        }
        Ok(QaAnswer {
            text: text.clone(),
            answer_start: start,
        })
    };
    match value {
        Value::Object(columns) => {
            let (Some(Value::Array(texts)), Some(Value::Array(starts))) =
                (columns.get("text"), columns.get("answer_start"))
            else {
                return Err(shape());
            };
            if texts.len() != starts.len() {
                return Err(place.error(
                    id,
                    format_args!(
                        ": 'answers' has {} text(s) but {} answer_start(s); they must match \
                         one to one.",
                        texts.len(),
                        starts.len()
                    ),
                ));
            }
            let pairs = texts.iter().zip(starts);
            pairs
                .enumerate()
                .map(|(i, (text, start))| answer(text, start, i + 1))
                .collect()
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(pair) => answer(
                    pair.get("text").unwrap_or(&Value::Null),
                    pair.get("answer_start").unwrap_or(&Value::Null),
                    i + 1,
                ),
                _ => Err(shape()),
            })
            .collect(),
        _ => Err(shape()),
    }
}

/// The context's characters `[answer_start, answer_start + len(text))` must be `text`.
fn check_answer_in_context(
    place: &Place,
    id: Option<&str>,
    n: usize,
    answer: &QaAnswer,
    context: &str,
) -> Result<(), DatasetError> {
    let found: String = context
        .chars()
        .skip(answer.answer_start)
        .take(answer.text.chars().count())
        .collect();
    if found == answer.text {
        return Ok(());
    }
    let context_chars = context.chars().count();
    let why = if answer.answer_start >= context_chars {
        format!("is past the context's end ({context_chars} characters)")
    } else {
        format!("points at {found:?}")
    };
    Err(place.error(
        id,
        format_args!(
            ": answer {n} {:?} is not in the context at answer_start {}: that offset {why}.",
            answer.text, answer.answer_start
        ),
    ))
}
