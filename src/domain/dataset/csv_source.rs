//! CSV records read one at a time with their physical line numbers, never buffering more than
//! one record of at most [`MAX_RECORD_BYTES`].
//!
//! The csv crate's own line count lags behind with CRLF line ends and blank lines (a record's
//! position is taken before the terminators in front of it are consumed), so lines are
//! counted here, from the bytes the csv reader pulls through a [`LineTracker`]. The tracker
//! keeps only the bytes past the end of the last record read, which is also how it notices a
//! record too long to hold.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};

use csv::StringRecord;

use super::lines::{record_limit_text, ScanError, MAX_RECORD_BYTES};
use super::{DatasetError, UTF8_BOM};

/// The csv reader's own read-ahead buffer.
const CSV_BUFFER_BYTES: usize = 64 * 1024;

/// The error a [`LineTracker`] reads with once a record outgrows [`MAX_RECORD_BYTES`].
#[derive(Debug, thiserror::Error)]
#[error("a CSV record is longer than the limit")]
struct RecordTooLong;

/// Counts the lines of what passes through it, keeping the bytes after the last released
/// offset (the record being parsed and the csv reader's read-ahead) to place records on them.
struct LineTracker<R> {
    inner: R,
    window: VecDeque<u8>,
    /// Offset in the stream (after any BOM) of `window[0]`.
    window_start: u64,
    /// `\n`s before `window_start`.
    lines_before: usize,
}

impl<R: Read> Read for LineTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.window.len() > MAX_RECORD_BYTES + CSV_BUFFER_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, RecordTooLong));
        }
        let read = self.inner.read(buf)?;
        self.window.extend(&buf[..read]);
        Ok(read)
    }
}

impl<R> LineTracker<R> {
    /// Forgets the bytes before `offset` (offsets only grow), counting their lines.
    fn release(&mut self, offset: u64) {
        let available = u64::try_from(self.window.len()).unwrap_or(u64::MAX);
        let count = offset.saturating_sub(self.window_start).min(available);
        let newlines = self
            .window
            .drain(..usize::try_from(count).unwrap_or(usize::MAX))
            .filter(|&b| b == b'\n')
            .count();
        self.lines_before += newlines;
        self.window_start += count;
    }

    /// 1-based line of the first byte at or after `offset` that is not a line terminator.
    fn line_at(&mut self, offset: u64) -> usize {
        self.release(offset);
        let skipped_newlines = self
            .window
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .filter(|&&b| b == b'\n')
            .count();
        1 + self.lines_before + skipped_newlines
    }
}

/// The records of a CSV file, the header included, with the line each starts on.
pub(crate) struct CsvSource<R> {
    csv: csv::Reader<LineTracker<BufReader<R>>>,
}

impl<R: Read> CsvSource<R> {
    pub fn new(reader: R) -> Result<Self, ScanError> {
        let mut buffered = BufReader::new(reader);
        if buffered.fill_buf()?.starts_with(UTF8_BOM) {
            buffered.consume(UTF8_BOM.len());
        }
        let tracker = LineTracker {
            inner: buffered,
            window: VecDeque::new(),
            window_start: 0,
            lines_before: 0,
        };
        // `flexible` so a short row reaches our own check, which names its line.
        let csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(CSV_BUFFER_BYTES)
            .from_reader(tracker);
        Ok(CsvSource { csv })
    }

    /// Reads the next record into `record` and returns its line; `None` at the end.
    pub fn next_record(&mut self, record: &mut StringRecord) -> Result<Option<usize>, ScanError> {
        match self.csv.read_record(record) {
            Ok(false) => Ok(None),
            Ok(true) => {
                let start = record.position().map_or(0, csv::Position::byte);
                let line = self.csv.get_mut().line_at(start);
                let end = self.csv.position().byte();
                self.csv.get_mut().release(end);
                // The tracker stops a record only somewhat past the limit; this is exact.
                if end.saturating_sub(start) > u64::try_from(MAX_RECORD_BYTES).unwrap_or(u64::MAX) {
                    return Err(too_long(line).into());
                }
                Ok(Some(line))
            }
            Err(error) => Err(self.error(error)),
        }
    }

    fn error(&mut self, error: csv::Error) -> ScanError {
        // Read errors have no position: they concern the record after the last one read.
        let offset = error.position().map_or(0, csv::Position::byte);
        let line = self.csv.get_mut().line_at(offset);
        let detail = match error.kind() {
            csv::ErrorKind::Utf8 { .. } => "is not valid UTF-8".to_string(),
            csv::ErrorKind::Io(io) if io.get_ref().is_some_and(|e| e.is::<RecordTooLong>()) => {
                return too_long(line).into();
            }
            csv::ErrorKind::Io(_) => return ScanError::Io(io::Error::from(error)),
            _ => format!("could not be read as CSV: {error}"),
        };
        ScanError::Invalid(DatasetError {
            line,
            message: format!("Invalid file format. Line {line} {detail}."),
        })
    }
}

fn too_long(line: usize) -> DatasetError {
    DatasetError {
        line,
        message: format!(
            "Invalid file format. Line {line} starts a record longer than {}, the most one \
             example may take.",
            record_limit_text()
        ),
    }
}
