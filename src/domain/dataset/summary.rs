//! Validating a whole training file in one streaming pass, with bounded state: what an upload
//! reports (format, example count, duplicates, labels) without holding the examples.
//!
//! Memory while validating is fixed, whatever the file's size:
//! - one record: at most [`super::MAX_RECORD_BYTES`] (4 MiB) and its parsed JSON (≤ ~64 MiB);
//! - duplicate detection: 8-byte fingerprints of at most [`DUPLICATE_TRACKING_LIMIT`] distinct
//!   examples per table, two tables for classification (≈ 19 MiB each when full);
//! - classification labels (token tags): at most [`MAX_LABELS`] of at most [`MAX_LABEL_BYTES`]
//!   (≤ 10 MiB); one CoNLL sentence at most [`super::MAX_RECORD_BYTES`], like a JSONL line.
//!
//! That is under 150 MB in the worst case; the e2e suite holds a real upload to 200 MB.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{self, BufRead, BufReader, Read, Seek};
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use super::chat::chat_example;
use super::classification::{for_each_labeled_text, sorted_labels, LabeledText};
use super::images::{scan_images, ImageContainer};
use super::lines::{for_each_object, ScanError};
use super::other::{preference_example, prompt_completion};
use super::squad::for_each_qa_example;
use super::token_tags::{for_each_token_tags, sorted_tags};
use super::{detect, empty_file, DataFormat, DatasetError, ExampleAt};

/// Distinct examples remembered for duplicate counting. Past this many, later examples are
/// still compared with the remembered ones but not remembered themselves, so on larger files
/// the duplicate counts are lower bounds. 2^20 fingerprints of 8 bytes: ≈ 19 MiB per table.
pub const DUPLICATE_TRACKING_LIMIT: usize = 1 << 20;

/// Distinct labels a classification file may have; more is not a classification task a
/// head can learn (and would make the label set unbounded).
pub const MAX_LABELS: usize = 10_000;

/// Longest label, in bytes: labels are class names.
pub const MAX_LABEL_BYTES: usize = 1024;

const READ_BUFFER_BYTES: usize = 64 * 1024;

/// What validating a training file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    pub format: DataFormat,
    pub examples: usize,
    /// Examples identical to an earlier one (for classification: same text and label).
    pub duplicates: usize,
    /// Classification only: examples whose text came earlier with another label.
    pub conflicting_duplicates: usize,
    /// Classification: the distinct labels, in [`super::label_set`]'s order; token tags: the
    /// distinct tags, in [`super::tag_label_set`]'s order.
    pub labels: Vec<String>,
}

/// Validates the training file at `path` in one streaming pass.
pub fn validate_training_file(path: &Path) -> Result<FileSummary, ScanError> {
    scan(File::open(path)?)
}

/// Validates a training file read from `reader`: its format from the first record, then every
/// example, stopping at the first error.
pub fn scan<R: Read + Seek>(mut reader: R) -> Result<FileSummary, ScanError> {
    let detected = detect(&mut reader)?;
    reader.rewind()?;
    if detected.format == DataFormat::Images {
        let container = detected.images.unwrap_or(ImageContainer::Jsonl);
        let images = scan_images(reader, container)?;
        // ImageFolder's class order (alphabetical), which timm's exports follow too.
        return Ok(FileSummary {
            format: DataFormat::Images,
            examples: images.examples,
            duplicates: 0,
            conflicting_duplicates: 0,
            labels: images.classes.into_keys().collect(),
        });
    }
    let buffered = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let mut summary = FileSummary {
        format: detected.format,
        examples: 0,
        duplicates: 0,
        conflicting_duplicates: 0,
        labels: Vec::new(),
    };
    match detected.format {
        DataFormat::Classification => {
            let mut tally = ClassificationTally::default();
            for_each_labeled_text(buffered, detected.csv, |at, example| {
                tally.add(at, &example)
            })?;
            summary.examples = tally.examples;
            summary.duplicates = tally.duplicates;
            summary.conflicting_duplicates = tally.conflicting_duplicates;
            summary.labels = sorted_labels(tally.labels.into_iter().collect());
        }
        DataFormat::Chat => {
            (summary.examples, summary.duplicates) =
                count_jsonl(buffered, |at, object| chat_example(at, object, ""))?;
        }
        DataFormat::PromptCompletion => {
            (summary.examples, summary.duplicates) = count_jsonl(buffered, prompt_completion)?;
        }
        DataFormat::Preference => {
            (summary.examples, summary.duplicates) = count_jsonl(buffered, preference_example)?;
        }
        DataFormat::TokenTags => {
            let mut seen = Fingerprints::default();
            let mut labels = HashSet::new();
            for_each_token_tags(buffered, detected.conll, |at, example| {
                summary.examples += 1;
                if seen.insert(seen.of_json(&example)) {
                    summary.duplicates += 1;
                }
                add_tags(&mut labels, at, example.tags)
            })?;
            summary.labels = sorted_tags(labels.into_iter().collect());
        }
        // Scanned above, before the text readers are set up.
        DataFormat::Images => {}
        DataFormat::QuestionAnswering => {
            let mut seen = Fingerprints::default();
            for_each_qa_example(buffered, |example| {
                summary.examples += 1;
                if seen.insert(seen.of_json(&example)) {
                    summary.duplicates += 1;
                }
                Ok(())
            })?;
        }
    }
    if summary.examples == 0 {
        return Err(empty_file().into());
    }
    Ok(summary)
}

/// Checks every line of a JSONL file with `example`; the number of examples and of duplicates
/// among them (equal parsed examples, compared by their JSON form as the job does).
fn count_jsonl<R: BufRead, T: Serialize>(
    reader: R,
    example: impl Fn(ExampleAt, &Map<String, Value>) -> Result<T, DatasetError>,
) -> Result<(usize, usize), ScanError> {
    let mut seen = Fingerprints::default();
    let (mut examples, mut duplicates) = (0, 0);
    for_each_object(reader, |at, object| {
        let parsed = example(at, &object)?;
        examples += 1;
        if seen.insert(seen.of_json(&parsed)) {
            duplicates += 1;
        }
        Ok(())
    })?;
    Ok((examples, duplicates))
}

/// Adds a token-classification example's tags to `labels`; fails past [`MAX_LABELS`] distinct
/// tags (the head has one output per tag).
fn add_tags(
    labels: &mut HashSet<String>,
    at: ExampleAt,
    tags: Vec<String>,
) -> Result<(), DatasetError> {
    for tag in tags {
        if labels.contains(&tag) {
            continue;
        }
        if labels.len() == MAX_LABELS {
            return Err(at.error(format_args!(
                " brings tag number {}; a token classification file may have at most \
                 {MAX_LABELS} distinct tags.",
                MAX_LABELS + 1
            )));
        }
        if tag.len() > MAX_LABEL_BYTES {
            return Err(at.error(format_args!(
                " has a tag longer than {MAX_LABEL_BYTES} bytes."
            )));
        }
        labels.insert(tag);
    }
    Ok(())
}

/// Duplicate and label bookkeeping for classification examples, in bounded memory.
#[derive(Default)]
pub(crate) struct ClassificationTally {
    pub examples: usize,
    pub duplicates: usize,
    pub conflicting_duplicates: usize,
    pub labels: HashSet<String>,
    pairs: Fingerprints,
    texts: Fingerprints,
}

impl ClassificationTally {
    /// Counts `example` (at `at`): a duplicate when its text and label came before, a
    /// conflicting duplicate when only its text did. Fails past [`MAX_LABELS`] labels.
    pub fn add(&mut self, at: ExampleAt, example: &LabeledText) -> Result<(), DatasetError> {
        self.examples += 1;
        let pair_seen = self
            .pairs
            .insert(self.pairs.of(&(&example.text, &example.label)));
        let text_seen = self.texts.insert(self.texts.of(&example.text));
        if pair_seen {
            self.duplicates += 1;
        } else if text_seen {
            self.conflicting_duplicates += 1;
        }
        if !self.labels.contains(&example.label) {
            if self.labels.len() == MAX_LABELS {
                return Err(at.error(format_args!(
                    " brings label number {}; a classification file may have at most \
                     {MAX_LABELS} distinct labels.",
                    MAX_LABELS + 1
                )));
            }
            self.labels.insert(example.label.clone());
        }
        Ok(())
    }
}

/// 8-byte fingerprints of the examples seen, at most [`DUPLICATE_TRACKING_LIMIT`] of them.
/// Keys are random per table, so nobody can craft collisions; at a million examples the chance
/// of any collision is about 10^-7.
#[derive(Default)]
struct Fingerprints {
    keys: RandomState,
    seen: HashSet<u64>,
}

impl Fingerprints {
    fn of(&self, value: &impl Hash) -> u64 {
        self.keys.hash_one(value)
    }

    /// The fingerprint of `value`'s JSON form, streamed into the hasher.
    fn of_json(&self, value: &impl Serialize) -> u64 {
        let mut hasher = HashWriter(self.keys.build_hasher());
        // Writing into a hasher cannot fail, and our example types always serialize.
        let _ = serde_json::to_writer(&mut hasher, value);
        hasher.0.finish()
    }

    /// Whether `fingerprint` was seen before; remembers it while there is room.
    fn insert(&mut self, fingerprint: u64) -> bool {
        if self.seen.contains(&fingerprint) {
            return true;
        }
        if self.seen.len() < DUPLICATE_TRACKING_LIMIT {
            self.seen.insert(fingerprint);
        }
        false
    }
}

struct HashWriter<H>(H);

impl<H: Hasher> io::Write for HashWriter<H> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
