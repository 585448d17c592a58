//! Reading a training file one record at a time, so that validating it takes the same memory
//! for 1 KiB as for 1 GiB: one JSONL line (or CSV record, see `csv_source.rs`) of at most
//! [`MAX_RECORD_BYTES`] is in memory at once, with its parsed form.

use std::io::{self, BufRead, Read};

use serde_json::{Map, Value};

use super::{json_type, DatasetError, ExampleAt, UTF8_BOM};

/// The longest JSONL line or CSV record a training file may have. Far past what any model's
/// context holds (about a million tokens), and it bounds what one record costs in memory:
/// its bytes plus its parsed JSON, at most about 16 bytes per input byte (`[0,0,…]`).
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// Why reading a training file stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The content is invalid: the uploader's error, reported on the file.
    #[error(transparent)]
    Invalid(#[from] DatasetError),
    /// The file could not be read: ours.
    #[error("reading the training file failed: {0}")]
    Io(#[from] io::Error),
}

impl ScanError {
    /// For files already in memory, whose reads cannot fail.
    pub(crate) fn into_dataset_error(self) -> DatasetError {
        match self {
            ScanError::Invalid(error) => error,
            ScanError::Io(error) => DatasetError {
                line: 0,
                message: format!("The file could not be read: {error}."),
            },
        }
    }
}

/// `4 MiB`, for messages.
pub(crate) fn record_limit_text() -> String {
    format!("{} MiB", MAX_RECORD_BYTES / (1024 * 1024))
}

/// The non-blank lines of a JSONL file, trimmed, with their example and 1-based physical line
/// numbers. Handles a BOM, CRLF line ends and blank lines (skipped, but counted as lines).
pub(crate) struct JsonlLines<R> {
    reader: R,
    buffer: Vec<u8>,
    lines_read: usize,
    examples: usize,
}

impl<R: BufRead> JsonlLines<R> {
    pub fn new(reader: R) -> Self {
        JsonlLines {
            reader,
            buffer: Vec::new(),
            lines_read: 0,
            examples: 0,
        }
    }

    /// The next non-blank line; `None` at the end of the file.
    pub fn next_line(&mut self) -> Result<Option<(ExampleAt, &[u8])>, ScanError> {
        let range = loop {
            self.buffer.clear();
            let limit = u64::try_from(MAX_RECORD_BYTES + 1).unwrap_or(u64::MAX);
            let read = (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut self.buffer)?;
            if read == 0 {
                return Ok(None);
            }
            self.lines_read += 1;
            if self.buffer.len() > MAX_RECORD_BYTES && self.buffer.last() != Some(&b'\n') {
                return Err(self
                    .next_at()
                    .error(format_args!(
                        " is longer than {}, the most one example may take.",
                        record_limit_text()
                    ))
                    .into());
            }
            let bom = if self.lines_read == 1 && self.buffer.starts_with(UTF8_BOM) {
                UTF8_BOM.len()
            } else {
                0
            };
            let line = &self.buffer[bom..];
            let leading = line.iter().take_while(|b| b.is_ascii_whitespace()).count();
            let trailing = line[leading..]
                .iter()
                .rev()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            if leading < line.len() {
                break bom + leading..self.buffer.len() - trailing;
            }
        };
        let at = self.next_at();
        self.examples += 1;
        Ok(Some((at, &self.buffer[range])))
    }

    /// Where the example being read sits.
    fn next_at(&self) -> ExampleAt {
        ExampleAt {
            example: self.examples + 1,
            line: self.lines_read,
        }
    }
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

/// Calls `each` with every object of a JSONL file, in order; stops at the first error.
pub(crate) fn for_each_object<R: BufRead>(
    reader: R,
    mut each: impl FnMut(ExampleAt, Map<String, Value>) -> Result<(), DatasetError>,
) -> Result<(), ScanError> {
    let mut lines = JsonlLines::new(reader);
    while let Some((at, text)) = lines.next_line()? {
        let object = parse_object(at, text)?;
        each(at, object)?;
    }
    Ok(())
}

/// Every example of an in-memory JSONL file, converted by `example`.
pub(crate) fn collect_objects<T>(
    bytes: &[u8],
    mut example: impl FnMut(ExampleAt, &Map<String, Value>) -> Result<T, DatasetError>,
) -> Result<Vec<T>, DatasetError> {
    let mut examples = Vec::new();
    for_each_object(bytes, |at, object| {
        examples.push(example(at, &object)?);
        Ok(())
    })
    .map_err(ScanError::into_dataset_error)?;
    Ok(examples)
}

/// Whether the first non-blank line looks like JSON rather than a CSV header (a file without
/// one, or whose first line is too long, does not).
pub(crate) fn first_line_is_json<R: BufRead>(reader: R) -> Result<bool, ScanError> {
    match JsonlLines::new(reader).next_line() {
        Ok(Some((_, text))) => Ok(text.starts_with(b"{") || text.starts_with(b"[")),
        Ok(None) | Err(ScanError::Invalid(_)) => Ok(false),
        Err(error) => Err(error),
    }
}
