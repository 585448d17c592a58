//! Text classification files: `{"text": …, "label": …}` JSONL, or CSV whose header row has
//! `text` and `label` columns (any case, any order, other columns ignored).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{json_type, jsonl_objects, looks_like_jsonl, strip_bom, DatasetError, ExampleAt};

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
    let examples = if looks_like_jsonl(bytes) {
        parse_jsonl(bytes)?
    } else {
        parse_csv(bytes)?
    };
    Ok(count_duplicates(examples))
}

/// The distinct labels, sorted: numerically when every label is an integer (`2` before `10`),
/// else lexicographically. A label's class id is its index here.
pub fn label_set(train: &[LabeledText]) -> Vec<String> {
    let mut labels: Vec<String> = train
        .iter()
        .map(|example| example.label.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let numeric: Option<Vec<i128>> = labels.iter().map(|label| label.parse().ok()).collect();
    match numeric {
        Some(_) => labels.sort_by_key(|label| label.parse::<i128>().unwrap_or_default()),
        None => labels.sort(),
    }
    labels
}

fn count_duplicates(examples: Vec<LabeledText>) -> ClassificationData {
    let mut labels_by_text: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut duplicates = 0;
    let mut conflicting_duplicates = 0;
    for example in &examples {
        let seen = labels_by_text.entry(example.text.as_str()).or_default();
        if seen.contains(example.label.as_str()) {
            duplicates += 1;
        } else {
            if !seen.is_empty() {
                conflicting_duplicates += 1;
            }
            seen.insert(example.label.as_str());
        }
    }
    ClassificationData {
        examples,
        duplicates,
        conflicting_duplicates,
    }
}

fn parse_jsonl(bytes: &[u8]) -> Result<Vec<LabeledText>, DatasetError> {
    jsonl_objects(bytes)
        .map(|record| {
            let (at, object) = record?;
            labeled_text_from_json(at, &object)
        })
        .collect()
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
                ": 'label' must be a string or an integer, got {other}."
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
    Ok(LabeledText { text, label })
}

/// Column positions of `text` and `label` in a CSV header, matched case-insensitively.
struct CsvColumns {
    text: usize,
    label: usize,
}

impl CsvColumns {
    fn find(header: &csv::StringRecord) -> Option<Self> {
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

fn csv_reader(bytes: &[u8]) -> csv::Reader<&[u8]> {
    // `flexible` so a short row reaches our own check, which names its line.
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(strip_bom(bytes))
}

/// True when the file parses as CSV with a `text` and a `label` column in its header.
pub(super) fn csv_has_text_label_header(bytes: &[u8]) -> bool {
    csv_reader(bytes)
        .headers()
        .is_ok_and(|header| CsvColumns::find(header).is_some())
}

/// Maps csv byte offsets to physical lines. The csv crate's own line count lags behind with CRLF
/// line ends and blank lines (a record's position is taken before the terminators in front of
/// it are consumed), so lines are counted here from the bytes.
struct LineIndex<'a> {
    data: &'a [u8],
    /// Byte offsets of every `\n`, ascending, so a lookup is a binary search.
    newlines: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(data: &'a [u8]) -> Self {
        let newlines = data
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .map(|(offset, _)| offset)
            .collect();
        Self { data, newlines }
    }

    /// 1-based line of the first byte at or after `offset` that is not a line terminator.
    fn line_at(&self, position: Option<&csv::Position>) -> usize {
        let offset = position.map_or(0, |p| usize::try_from(p.byte()).unwrap_or(usize::MAX));
        let rest = self.data.get(offset..).unwrap_or_default();
        let skipped = rest
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        let start = (offset + skipped).min(self.data.len());
        1 + self.newlines.partition_point(|&newline| newline < start)
    }

    fn csv_error(&self, error: &csv::Error) -> DatasetError {
        let line = self.line_at(error.position());
        let detail = match error.kind() {
            csv::ErrorKind::Utf8 { .. } => "is not valid UTF-8".to_string(),
            _ => format!("could not be read as CSV: {error}"),
        };
        DatasetError {
            line,
            message: format!("Invalid file format. Line {line} {detail}."),
        }
    }
}

fn parse_csv(bytes: &[u8]) -> Result<Vec<LabeledText>, DatasetError> {
    let lines = LineIndex::new(strip_bom(bytes));
    let mut reader = csv_reader(bytes);
    let header = reader.headers().map_err(|e| lines.csv_error(&e))?;
    let header_line = lines.line_at(header.position());
    let columns = CsvColumns::find(header).ok_or_else(|| DatasetError {
        line: header_line,
        message: "Invalid file format. A CSV training file needs a header row with `text` and \
                  `label` columns."
            .to_string(),
    })?;
    let needed = columns.text.max(columns.label) + 1;
    let mut examples = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| lines.csv_error(&e))?;
        if record.iter().all(|field| field.trim().is_empty()) {
            continue;
        }
        let at = ExampleAt {
            example: examples.len() + 1,
            line: lines.line_at(record.position()),
        };
        if record.len() < needed {
            return Err(at.error(format_args!(
                " has {} field(s), but the header needs at least {needed}.",
                record.len()
            )));
        }
        let text = record.get(columns.text).unwrap_or_default().to_string();
        let label = record
            .get(columns.label)
            .unwrap_or_default()
            .trim()
            .to_string();
        examples.push(checked(at, text, label)?);
    }
    Ok(examples)
}
