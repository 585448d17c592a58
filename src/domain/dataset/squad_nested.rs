//! The nested SQuAD JSON file (`{"data": [{"paragraphs": [{"context", "qas"}]}]}`), read
//! with serde visitors that hold one paragraph at a time: SQuAD's train file is a single
//! 40 MB line, which the JSONL reader would refuse and a whole-document `Value` would
//! hold several times over.

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufRead, Read};
use std::rc::Rc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::super::lines::ScanError;
use super::super::{DatasetError, ExampleAt};
use super::{qa_example, skip_bom, Place, QaExample};

/// Whether the file is one SQuAD JSON document: its first value is an object with a `data`
/// key. Reads only up to that key (other values are skipped without being kept).
pub(crate) fn is_nested_squad<R: BufRead>(mut reader: R) -> Result<bool, io::Error> {
    skip_bom(&mut reader)?;
    let found = Cell::new(false);
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    match deserializer.deserialize_map(DataKeyProbe(&found)) {
        Err(error) if error.is_io() => Err(error.into()),
        _ => Ok(found.get()),
    }
}

/// Walks the top-level object's keys; stops (with an error serde discards) at `data`.
struct DataKeyProbe<'a>(&'a Cell<bool>);

impl<'de> Visitor<'de> for DataKeyProbe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "data" {
                self.0.set(true);
                return Err(de::Error::custom("found `data`"));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// Reads a nested SQuAD file one paragraph at a time.
pub(super) fn for_each_nested<R: BufRead>(
    mut reader: R,
    each: &mut dyn FnMut(QaExample) -> Result<(), DatasetError>,
) -> Result<(), ScanError> {
    skip_bom(&mut reader)?;
    let lines = Rc::new(Cell::new(1));
    let counting = LineCounting {
        inner: reader,
        lines: Rc::clone(&lines),
    };
    let mut walk = Walk {
        each,
        lines,
        examples: 0,
        article: 0,
        failure: None,
    };
    let mut deserializer = serde_json::Deserializer::from_reader(counting);
    let result = deserializer
        .deserialize_map(TopLevel(&mut walk))
        .and_then(|()| deserializer.end());
    if let Some(failure) = walk.failure {
        return Err(failure.into());
    }
    match result {
        Ok(()) => Ok(()),
        Err(error) if error.is_io() => Err(ScanError::Io(error.into())),
        Err(error) => Err(DatasetError {
            line: error.line(),
            message: format!("Invalid file format. The SQuAD JSON file is not valid: {error}."),
        }
        .into()),
    }
}

/// A reader that counts the newlines it has handed out (serde_json reads byte by byte).
struct LineCounting<R> {
    inner: R,
    lines: Rc<Cell<usize>>,
}

impl<R: Read> Read for LineCounting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let newlines = buf[..n].iter().filter(|&&b| b == b'\n').count();
        self.lines.set(self.lines.get() + newlines);
        Ok(n)
    }
}

/// The state of one pass over a nested file.
struct Walk<'a> {
    each: &'a mut dyn FnMut(QaExample) -> Result<(), DatasetError>,
    lines: Rc<Cell<usize>>,
    examples: usize,
    article: usize,
    /// Our own error, which stopped the deserializer (serde's error only says "stopped").
    failure: Option<DatasetError>,
}

#[derive(Deserialize)]
struct RawParagraph {
    context: String,
    qas: Vec<Map<String, Value>>,
}

impl Walk<'_> {
    fn paragraph(&mut self, paragraph: usize, raw: RawParagraph) -> Result<(), DatasetError> {
        for (question, object) in raw.qas.iter().enumerate() {
            self.examples += 1;
            let place = Place::Nested {
                at: ExampleAt {
                    example: self.examples,
                    line: self.lines.get(),
                },
                article: self.article,
                paragraph,
                question,
            };
            if raw.context.trim().is_empty() {
                return Err(place.error(None, ": the paragraph's 'context' is empty."));
            }
            let example = qa_example(&place, Some(raw.context.clone()), object, false)?;
            (self.each)(example)?;
        }
        Ok(())
    }

    fn stop<E: de::Error>(&mut self, failure: DatasetError) -> E {
        self.failure = Some(failure);
        E::custom("stopped at an invalid example")
    }
}

struct TopLevel<'w, 'a>(&'w mut Walk<'a>);

impl<'de> Visitor<'de> for TopLevel<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with a `data` list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "data" {
                map.next_value_seed(Articles(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct Articles<'w, 'a>(&'w mut Walk<'a>);

impl<'de> DeserializeSeed<'de> for Articles<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Articles<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`data`: a list of articles")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Article(&mut *self.0))?.is_some() {
            self.0.article += 1;
        }
        Ok(())
    }
}

struct Article<'w, 'a>(&'w mut Walk<'a>);

impl<'de> DeserializeSeed<'de> for Article<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Article<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an article object with `paragraphs`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "paragraphs" {
                map.next_value_seed(Paragraphs(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct Paragraphs<'w, 'a>(&'w mut Walk<'a>);

impl<'de> DeserializeSeed<'de> for Paragraphs<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Paragraphs<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`paragraphs`: a list of {\"context\", \"qas\"} objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(raw) = seq.next_element::<RawParagraph>()? {
            if let Err(failure) = self.0.paragraph(index, raw) {
                return Err(self.0.stop(failure));
            }
            index += 1;
        }
        Ok(())
    }
}
