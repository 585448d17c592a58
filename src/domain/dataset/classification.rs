//! Text classification files: `{"text": …, "label": …}` JSONL, or CSV whose header row has
//! `text` and `label` columns (any case, any order, other columns ignored).

use std::collections::HashSet;
use std::io::{BufRead, Read};

use csv::StringRecord;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::csv_source::CsvSource;
use super::lines::{first_line_is_json, for_each_object, ScanError};
use super::summary::{ClassificationTally, MAX_LABEL_BYTES};
use super::{json_type, DatasetError, ExampleAt};
use crate::domain::echo;

/// One training example. Integer labels are kept as their decimal string (`1` → `"1"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LabeledText {
    pub text: String,
    pub label: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassificationData {
    pub examples: Vec<LabeledText>,
    /// Examples identical (text and label) to an earlier one. They are kept; the job reports
    /// the count in an event.
    pub duplicates: usize,
    /// Examples whose text appeared earlier with a different label.
    pub conflicting_duplicates: usize,
}

/// Parses a classification file, JSONL or CSV (told apart by the first non-blank line).
/// Labels are trimmed; texts are kept as written but must not be blank.
pub fn parse_classification(bytes: &[u8]) -> Result<ClassificationData, DatasetError> {
    let read = || -> Result<ClassificationData, ScanError> {
        let csv = !first_line_is_json(bytes)?;
        let mut tally = ClassificationTally::default();
        let mut examples = Vec::new();
        for_each_labeled_text(bytes, csv, |at, example| {
            tally.add(at, &example)?;
            examples.push(example);
            Ok(())
        })?;
        Ok(ClassificationData {
            examples,
            duplicates: tally.duplicates,
            conflicting_duplicates: tally.conflicting_duplicates,
        })
    };
    read().map_err(ScanError::into_dataset_error)
}

/// The distinct labels, sorted: numerically when every label is an integer (`2` before `10`),
/// else lexicographically. A label's class id is its index here.
pub fn label_set(train: &[LabeledText]) -> Vec<String> {
    let distinct: HashSet<&str> = train.iter().map(|example| example.label.as_str()).collect();
    sorted_labels(distinct.into_iter().map(str::to_string).collect())
}

/// `labels` (distinct) in [`label_set`]'s order.
pub(crate) fn sorted_labels(mut labels: Vec<String>) -> Vec<String> {
    let numeric: Option<Vec<i128>> = labels.iter().map(|label| label.parse().ok()).collect();
    match numeric {
        Some(_) => labels.sort_by_key(|label| label.parse::<i128>().unwrap_or_default()),
        None => labels.sort(),
    }
    labels
}

/// Calls `each` with every example of a classification file, CSV (`csv`) or JSONL, in order;
/// stops at the first error.
pub(crate) fn for_each_labeled_text<R: BufRead>(
    reader: R,
    csv: bool,
    mut each: impl FnMut(ExampleAt, LabeledText) -> Result<(), DatasetError>,
) -> Result<(), ScanError> {
    if csv {
        for_each_csv_example(reader, each)
    } else {
        for_each_object(reader, |at, object| {
            each(at, labeled_text_from_json(at, &object)?)
        })
    }
}

fn labeled_text_from_json(
    at: ExampleAt,
    object: &Map<String, Value>,
) -> Result<LabeledText, DatasetError> {
    let text = match object.get("text") {
        None => return Err(at.missing_key("text")),
        Some(Value::String(text)) => text,
        Some(other) => {
            return Err(at.error(format_args!(
                ": 'text' must be a string, got {}.",
                json_type(other)
            )))
        }
    };
    let label = match object.get("label") {
        None | Some(Value::Null) => return Err(at.missing_key("label")),
        Some(Value::String(label)) => label.trim().to_string(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(other) => {
            return Err(at.error(format_args!(
                ": 'label' must be a string or an integer, got {}.",
                echo(&other.to_string())
            )))
        }
    };
    checked(at, text.clone(), label)
}

fn checked(at: ExampleAt, text: String, label: String) -> Result<LabeledText, DatasetError> {
    if text.trim().is_empty() {
        return Err(at.error(": 'text' is empty."));
    }
    if label.is_empty() {
        return Err(at.error(": 'label' is empty."));
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(at.error(format_args!(
            ": 'label' is {} bytes long; a label is a class name of at most {MAX_LABEL_BYTES} bytes.",
            label.len()
        )));
    }
    Ok(LabeledText { text, label })
}

/// Column positions of `text` and `label` in a CSV header, matched case-insensitively.
struct CsvColumns {
    text: usize,
    label: usize,
}

impl CsvColumns {
    fn find(header: &StringRecord) -> Option<Self> {
        let position = |name: &str| {
            header
                .iter()
                .position(|column| column.trim().eq_ignore_ascii_case(name))
        };
        Some(Self {
            text: position("text")?,
            label: position("label")?,
        })
    }
}

/// True when the file parses as CSV with a `text` and a `label` column in its header.
pub(super) fn csv_has_text_label_header<R: Read>(reader: R) -> Result<bool, ScanError> {
    let mut header = StringRecord::new();
    match CsvSource::new(reader)?.next_record(&mut header) {
        Ok(Some(_)) => Ok(CsvColumns::find(&header).is_some()),
        Ok(None) | Err(ScanError::Invalid(_)) => Ok(false),
        Err(error) => Err(error),
    }
}

fn for_each_csv_example<R: Read>(
    reader: R,
    mut each: impl FnMut(ExampleAt, LabeledText) -> Result<(), DatasetError>,
) -> Result<(), ScanError> {
    let mut source = CsvSource::new(reader)?;
    let mut record = StringRecord::new();
    let header_line = source.next_record(&mut record)?.unwrap_or(1);
    let columns = CsvColumns::find(&record).ok_or_else(|| DatasetError {
        line: header_line,
        message: "Invalid file format. A CSV training file needs a header row with `text` and \
                  `label` columns."
            .to_string(),
    })?;
    let needed = columns.text.max(columns.label) + 1;
    let mut examples = 0;
    while let Some(line) = source.next_record(&mut record)? {
        if record.iter().all(|field| field.trim().is_empty()) {
            continue;
        }
        examples += 1;
        let at = ExampleAt {
            example: examples,
            line,
        };
        if record.len() < needed {
            return Err(at
                .error(format_args!(
                    " has {} field(s), but the header needs at least {needed}.",
                    record.len()
                ))
                .into());
        }
        let text = record.get(columns.text).unwrap_or_default().to_string();
        let label = record
            .get(columns.label)
            .unwrap_or_default()
            .trim()
            .to_string();
        each(at, checked(at, text, label)?)?;
    }
    Ok(())
}
