//! Token classification files: `{"tokens": [...], "tags": [...]}` JSONL, and CoNLL text
//! (`token<TAB or space>…<TAB or space>tag` per line, a blank line between sentences, the
//! last column is the tag, `-DOCSTART-` lines skipped as transformers' `conll2003` loader
//! skips them).
//!
//! Both are read one example (JSONL line, CoNLL sentence) at a time, so validating an upload
//! holds one example of at most [`MAX_RECORD_BYTES`] whatever the file's size.
//!
//! The label set is the tags of the training and validation files together, ordered by
//! [`tag_label_set`]. Data in IOB1 (an entity may start with `I-X`) is accepted but found by
//! [`Iob1Tally`], so that the job can say so in an event: entity metrics read tags as seqeval's
//! default (IOB2-lenient) mode does, where such an `I-X` starts a new entity.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::io::{BufRead, Read};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::lines::{for_each_object, record_limit_text, ScanError, MAX_RECORD_BYTES};
use super::{json_type, DatasetError, ExampleAt, UTF8_BOM};
use crate::domain::echo;

/// Token classification: one tag per token (integer tags are kept as their decimal string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenTagsExample {
    pub tokens: Vec<String>,
    pub tags: Vec<String>,
}

/// A parsed token-classification file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenTagsData {
    pub examples: Vec<TokenTagsExample>,
    /// Where the file looks like IOB1, for the job's event.
    pub iob1: Option<Iob1Finding>,
}

/// Parses a token-classification file, JSONL or CoNLL (told apart by the first non-blank
/// line: JSON starts with `{`).
pub fn parse_token_tags(bytes: &[u8]) -> Result<TokenTagsData, DatasetError> {
    let read = || -> Result<TokenTagsData, ScanError> {
        let conll = !super::lines::first_line_is_json(bytes)?;
        let mut data = TokenTagsData::default();
        let mut iob1 = Iob1Tally::default();
        for_each_token_tags(bytes, conll, |at, example| {
            iob1.add(at, &example.tags);
            data.examples.push(example);
            Ok(())
        })?;
        data.iob1 = iob1.finding();
        Ok(data)
    };
    read().map_err(ScanError::into_dataset_error)
}

/// Calls `each` with every example of a token-classification file, CoNLL (`conll`) or JSONL,
/// in order; stops at the first error.
pub(crate) fn for_each_token_tags<R: BufRead>(
    reader: R,
    conll: bool,
    mut each: impl FnMut(ExampleAt, TokenTagsExample) -> Result<(), DatasetError>,
) -> Result<(), ScanError> {
    if conll {
        let mut sentences = ConllSentences::new(reader);
        while let Some((at, example)) = sentences.next_sentence()? {
            each(at, example)?;
        }
        Ok(())
    } else {
        for_each_object(reader, |at, object| {
            each(at, token_tags_example(at, &object)?)
        })
    }
}

pub(super) fn token_tags_example(
    at: ExampleAt,
    object: &Map<String, Value>,
) -> Result<TokenTagsExample, DatasetError> {
    let tokens = string_list(at, object, "tokens", false)?;
    let tags = string_list(at, object, "tags", true)?;
    if let Some(extra) = object.keys().find(|key| *key != "tokens" && *key != "tags") {
        return Err(at.error(format_args!(" contains an extra \"{}\".", echo(extra))));
    }
    if tokens.is_empty() {
        return Err(at.error(": 'tokens' is empty."));
    }
    if tokens.len() != tags.len() {
        return Err(at.error(format_args!(
            " has {} token(s) but {} tag(s); they must match one to one.",
            tokens.len(),
            tags.len()
        )));
    }
    if let Some(position) = tags.iter().position(|tag| tag.trim().is_empty()) {
        return Err(at.error(format_args!(": tag {} is empty.", position + 1)));
    }
    Ok(TokenTagsExample { tokens, tags })
}

fn string_list(
    at: ExampleAt,
    object: &Map<String, Value>,
    key: &str,
    integers_allowed: bool,
) -> Result<Vec<String>, DatasetError> {
    let what = if integers_allowed {
        "strings or integers"
    } else {
        "strings"
    };
    let items = match object.get(key) {
        None | Some(Value::Null) => return Err(at.missing_key(key)),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(at.error(format_args!(
                ": '{key}' must be a list of {what}, got {}.",
                json_type(other)
            )))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) if integers_allowed && (n.is_i64() || n.is_u64()) => Ok(n.to_string()),
            other => Err(at.error(format_args!(
                ": '{key}' must be a list of {what}; item {} is {}.",
                i + 1,
                json_type(other)
            ))),
        })
        .collect()
}

/// A CoNLL line that only skips or separates: transformers' loader treats `-DOCSTART-` lines
/// like blank ones.
fn is_separator(line: &str) -> bool {
    line.trim().is_empty() || line.starts_with("-DOCSTART-")
}

/// Whether the first non-blank line of a file that is not JSON reads as CoNLL: a
/// `-DOCSTART-` line, or a token followed by a tag in a known scheme (`O`, `B-X`, `I-X`,
/// `E-X`, `S-X`, `L-X`, `U-X`) or an integer tag. Later lines may carry any tag; only the
/// first decides, so that prose (`just some prose`) is not taken for tokens and tags.
pub(crate) fn looks_like_conll(first_line: &[u8]) -> bool {
    let Ok(line) = std::str::from_utf8(first_line) else {
        return false;
    };
    let line = line.strip_prefix('\u{feff}').unwrap_or(line).trim();
    if line.starts_with("-DOCSTART-") {
        return true;
    }
    let columns: Vec<&str> = line.split_whitespace().collect();
    match columns.as_slice() {
        [_, .., tag] => {
            *tag == "O"
                || tag.parse::<u64>().is_ok()
                || split_tag(tag).is_some_and(|(_, kind)| !kind.is_empty())
        }
        _ => false,
    }
}

/// `B-PER` → `('B', "PER")`, for the prefixes of the IOB/BIOES/BILOU schemes; `None` for
/// other tags.
fn split_tag(tag: &str) -> Option<(char, &str)> {
    let mut chars = tag.chars();
    let prefix = chars.next()?;
    let kind = chars.as_str().strip_prefix('-')?;
    matches!(prefix, 'B' | 'I' | 'E' | 'S' | 'L' | 'U').then_some((prefix, kind))
}

/// The sentences of a CoNLL file with their number and the physical line of their first
/// token; a sentence may take at most [`MAX_RECORD_BYTES`].
struct ConllSentences<R> {
    reader: R,
    buffer: Vec<u8>,
    lines_read: usize,
    sentences: usize,
}

impl<R: BufRead> ConllSentences<R> {
    fn new(reader: R) -> Self {
        Self {
            reader,
            buffer: Vec::new(),
            lines_read: 0,
            sentences: 0,
        }
    }

    fn next_sentence(&mut self) -> Result<Option<(ExampleAt, TokenTagsExample)>, ScanError> {
        let mut example = TokenTagsExample {
            tokens: Vec::new(),
            tags: Vec::new(),
        };
        let mut at = ExampleAt {
            example: self.sentences + 1,
            line: 0,
        };
        let mut bytes = 0;
        while let Some((number, line)) = self.next_line(at)? {
            if is_separator(line) {
                if example.tokens.is_empty() {
                    continue;
                }
                break;
            }
            if example.tokens.is_empty() {
                at.line = number;
            }
            bytes += line.len();
            if bytes > MAX_RECORD_BYTES {
                return Err(sentence_error(
                    at,
                    format_args!(
                        " is longer than {}, the most one example may take.",
                        record_limit_text()
                    ),
                )
                .into());
            }
            let mut columns = line.split_whitespace();
            let (Some(token), Some(tag)) = (columns.next(), columns.next_back()) else {
                let here = ExampleAt { line: number, ..at };
                return Err(sentence_error(
                    here,
                    ": expected `token<TAB or space>tag`, found one column.",
                )
                .into());
            };
            example.tokens.push(token.to_string());
            example.tags.push(tag.to_string());
        }
        if example.tokens.is_empty() {
            return Ok(None);
        }
        self.sentences += 1;
        Ok(Some((at, example)))
    }

    /// The next physical line's number and text, without its line end; `None` at the end of
    /// the file.
    fn next_line(&mut self, sentence: ExampleAt) -> Result<Option<(usize, &str)>, ScanError> {
        self.buffer.clear();
        let limit = u64::try_from(MAX_RECORD_BYTES + 1).unwrap_or(u64::MAX);
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buffer)?;
        if read == 0 {
            return Ok(None);
        }
        self.lines_read += 1;
        let here = ExampleAt {
            line: self.lines_read,
            ..sentence
        };
        if self.buffer.len() > MAX_RECORD_BYTES && self.buffer.last() != Some(&b'\n') {
            return Err(sentence_error(
                here,
                format_args!(": the line is longer than {}.", record_limit_text()),
            )
            .into());
        }
        let bom = if self.lines_read == 1 && self.buffer.starts_with(UTF8_BOM) {
            UTF8_BOM.len()
        } else {
            0
        };
        let text = std::str::from_utf8(&self.buffer[bom..])
            .map_err(|_| sentence_error(here, ": the line is not valid UTF-8."))?;
        Ok(Some((self.lines_read, text.trim_end_matches(['\n', '\r']))))
    }
}

/// A CoNLL error: `Sentence 3 (line 17)…`, the line always named (sentences span lines).
fn sentence_error(at: ExampleAt, rest: impl std::fmt::Display) -> DatasetError {
    DatasetError {
        line: at.line,
        message: format!(
            "Invalid file format. Sentence {} (line {}){rest}",
            at.example, at.line
        ),
    }
}

/// The first `I-X` that follows neither `B-X` nor `I-X`: IOB2 never has one, IOB1 does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iob1Finding {
    /// Example (JSONL line or CoNLL sentence number) and physical line of the first one.
    pub example: usize,
    pub line: usize,
    pub tag: String,
    /// How many such tags the file has.
    pub count: usize,
}

impl Iob1Finding {
    /// The event text.
    pub fn message(&self) -> String {
        format!(
            "{} tag(s) begin an entity with `I-` (first: `{}` in example {}, line {}), as IOB1 \
             data does. Training goes on; entity metrics read each such tag as the start of a \
             new entity (seqeval's default mode).",
            self.count,
            echo(&self.tag),
            self.example,
            self.line
        )
    }
}

/// Counts IOB1-style entity starts over a file's examples.
#[derive(Debug, Default)]
pub struct Iob1Tally {
    first: Option<Iob1Finding>,
    count: usize,
}

impl Iob1Tally {
    pub(crate) fn add(&mut self, at: ExampleAt, tags: &[String]) {
        let mut previous: Option<&str> = None;
        for tag in tags {
            if let Some(('I', kind)) = split_tag(tag) {
                let continues = previous
                    .and_then(split_tag)
                    .is_some_and(|(prefix, last)| matches!(prefix, 'B' | 'I') && last == kind);
                if !continues {
                    self.count += 1;
                    self.first.get_or_insert_with(|| Iob1Finding {
                        example: at.example,
                        line: at.line,
                        tag: tag.clone(),
                        count: 0,
                    });
                }
            }
            previous = Some(tag);
        }
    }

    pub fn finding(&self) -> Option<Iob1Finding> {
        self.first.clone().map(|first| Iob1Finding {
            count: self.count,
            ..first
        })
    }
}

/// The label set of a token-classification job: the distinct tags of `examples` (training and
/// validation together), label id = index.
pub fn tag_label_set<'a>(examples: impl IntoIterator<Item = &'a TokenTagsExample>) -> Vec<String> {
    let distinct: HashSet<&str> = examples
        .into_iter()
        .flat_map(|example| example.tags.iter().map(String::as_str))
        .collect();
    sorted_tags(distinct.into_iter().map(str::to_string).collect())
}

/// `tags` (distinct) in label order. All integers: numeric (the tags are ids already).
/// Otherwise `O` first, then grouped by entity type in alphabetical order, `B-` before `I-`
/// (then `E-`, `S-`, `L-`, `U-`) within a type: `O, B-LOC, I-LOC, B-PER, I-PER`. A tag with
/// no scheme prefix sorts as its own type. The order only names the head's outputs; any
/// order trains the same.
pub(crate) fn sorted_tags(mut tags: Vec<String>) -> Vec<String> {
    if tags.iter().all(|tag| tag.parse::<i128>().is_ok()) {
        tags.sort_by_key(|tag| tag.parse::<i128>().unwrap_or_default());
        return tags;
    }
    let key = |tag: &str| -> (bool, String, usize) {
        match split_tag(tag) {
            Some((prefix, kind)) => {
                let rank = ['B', 'I', 'E', 'S', 'L', 'U']
                    .iter()
                    .position(|p| *p == prefix)
                    .unwrap_or(6);
                (true, kind.to_string(), rank)
            }
            None => (tag != "O", tag.to_string(), 0),
        }
    };
    tags.sort_by(|a, b| match key(a).cmp(&key(b)) {
        Ordering::Equal => a.cmp(b),
        other => other,
    });
    tags
}
