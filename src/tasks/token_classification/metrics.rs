//! NER metrics as transformers' `run_ner.py` reports them through `evaluate`'s `seqeval`:
//! entity-level precision/recall/F1 with seqeval's default mode (IOB2 read leniently, an
//! entity counts only when its type and both ends match exactly), micro-averaged over entity
//! types, and token accuracy over the labelled tokens (`O` included). Undefined ratios are
//! 0 (seqeval's `zero_division` warning case).
//!
//! Entities are extracted exactly as `seqeval.metrics.sequence_labeling.get_entities` does:
//! the sentences joined with an `O` between them; a tag's first character is its chunk
//! prefix and the rest after the first `-` its type. So an `I-X` after `O` (or after another
//! type) starts a new entity, and a type change splits a span.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

/// One entity: its type and the first and last token (inclusive), in the joined sequence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entity {
    pub kind: String,
    pub start: usize,
    pub end: usize,
}

/// Precision, recall, F1 and support (true entities) of one entity type or an average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntityScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

impl EntityScores {
    fn from_counts(correct: usize, predicted: usize, support: usize) -> Self {
        let precision = ratio(correct, predicted);
        let recall = ratio(correct, support);
        Self {
            precision,
            recall,
            f1: f1(precision, recall),
            support,
        }
    }

    fn json(&self) -> Value {
        json!({
            "precision": self.precision,
            "recall": self.recall,
            "f1-score": self.f1,
            "support": self.support,
        })
    }
}

fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

fn f1(precision: f64, recall: f64) -> f64 {
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

/// An evaluation's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct TagMetrics {
    /// Micro average over entity types.
    pub micro: EntityScores,
    /// Labelled tokens whose predicted tag equals the gold one.
    pub accuracy: f64,
    /// Per entity type, by type name.
    pub per_type: BTreeMap<String, EntityScores>,
}

impl TagMetrics {
    /// Scores `predicted` against `gold`: the same sentences, each as its labelled tokens'
    /// tags in order (a sentence pair of unequal lengths is scored over the shorter).
    pub fn compute<S: AsRef<str>>(gold: &[Vec<S>], predicted: &[Vec<S>]) -> Self {
        let pairs: Vec<(&[S], &[S])> = gold
            .iter()
            .zip(predicted)
            .map(|(g, p)| {
                let n = g.len().min(p.len());
                (&g[..n], &p[..n])
            })
            .collect();
        let tokens: usize = pairs.iter().map(|(g, _)| g.len()).sum();
        let correct_tokens = pairs
            .iter()
            .flat_map(|(g, p)| g.iter().zip(p.iter()))
            .filter(|(g, p)| g.as_ref() == p.as_ref())
            .count();
        let true_entities = by_type(entities(pairs.iter().map(|(g, _)| *g)));
        let predicted_entities = by_type(entities(pairs.iter().map(|(_, p)| *p)));
        let kinds: BTreeSet<&String> = true_entities
            .keys()
            .chain(predicted_entities.keys())
            .collect();
        let empty = BTreeSet::new();
        let (mut correct_all, mut predicted_all, mut support_all) = (0, 0, 0);
        let mut per_type = BTreeMap::new();
        for kind in kinds {
            let truth = true_entities.get(kind).unwrap_or(&empty);
            let guessed = predicted_entities.get(kind).unwrap_or(&empty);
            let correct = truth.intersection(guessed).count();
            correct_all += correct;
            predicted_all += guessed.len();
            support_all += truth.len();
            per_type.insert(
                kind.clone(),
                EntityScores::from_counts(correct, guessed.len(), truth.len()),
            );
        }
        Self {
            micro: EntityScores::from_counts(correct_all, predicted_all, support_all),
            accuracy: ratio(correct_tokens, tokens),
            per_type,
        }
    }

    /// The per-entity-type report (seqeval's `classification_report`, plus token accuracy):
    /// `entity_types`, `per_type` (`precision`, `recall`, `f1-score`, `support`),
    /// `micro_avg`, `macro_avg`, `weighted_avg` (by support) and `accuracy`.
    pub fn report(&self) -> Value {
        let n = self.per_type.len().max(1) as f64;
        let scores: Vec<&EntityScores> = self.per_type.values().collect();
        let support = self.micro.support;
        let mean =
            |field: fn(&EntityScores) -> f64| scores.iter().map(|s| field(s)).sum::<f64>() / n;
        let weighted = |field: fn(&EntityScores) -> f64| {
            if support == 0 {
                0.0
            } else {
                scores
                    .iter()
                    .map(|s| field(s) * s.support as f64)
                    .sum::<f64>()
                    / support as f64
            }
        };
        let average = |combine: &dyn Fn(fn(&EntityScores) -> f64) -> f64| EntityScores {
            precision: combine(|s| s.precision),
            recall: combine(|s| s.recall),
            f1: combine(|s| s.f1),
            support,
        };
        let per_type: serde_json::Map<String, Value> = self
            .per_type
            .iter()
            .map(|(kind, s)| (kind.clone(), s.json()))
            .collect();
        json!({
            "entity_types": self.per_type.keys().collect::<Vec<_>>(),
            "per_type": per_type,
            "micro_avg": self.micro.json(),
            "macro_avg": average(&mean).json(),
            "weighted_avg": average(&weighted).json(),
            "accuracy": self.accuracy,
        })
    }
}

fn by_type(entities: Vec<Entity>) -> BTreeMap<String, BTreeSet<(usize, usize)>> {
    let mut out: BTreeMap<String, BTreeSet<(usize, usize)>> = BTreeMap::new();
    for entity in entities {
        out.entry(entity.kind)
            .or_default()
            .insert((entity.start, entity.end));
    }
    out
}

/// seqeval's `get_entities` over `sentences` joined with an `O` after each; positions count
/// the separators.
pub fn entities<'a, S: AsRef<str> + 'a>(
    sentences: impl IntoIterator<Item = &'a [S]>,
) -> Vec<Entity> {
    let mut chunks = Vec::new();
    let mut previous = ChunkTag::outside();
    let mut begin = 0;
    let tags = sentences
        .into_iter()
        .flat_map(|sentence| sentence.iter().map(|t| t.as_ref()).chain(["O"]));
    for (position, tag) in tags.enumerate() {
        let current = ChunkTag::parse(tag);
        if end_of_chunk(&previous, &current) {
            chunks.push(Entity {
                kind: previous.kind.clone(),
                start: begin,
                end: position.max(1) - 1,
            });
        }
        if start_of_chunk(&previous, &current) {
            begin = position;
        }
        previous = current;
    }
    chunks
}

/// A tag as seqeval splits it: the first character, and the type after the first `-` of
/// the rest (`_` when there is none).
struct ChunkTag {
    prefix: char,
    kind: String,
}

impl ChunkTag {
    fn outside() -> Self {
        Self {
            prefix: 'O',
            kind: String::new(),
        }
    }

    fn parse(tag: &str) -> Self {
        let mut chars = tag.chars();
        let prefix = chars.next().unwrap_or('O');
        let rest = chars.as_str();
        // Python's `rest.split('-', maxsplit=1)[-1] or '_'`.
        let kind = rest.split_once('-').map_or(rest, |(_, after)| after);
        Self {
            prefix,
            kind: if kind.is_empty() { "_" } else { kind }.to_string(),
        }
    }
}

/// seqeval's `end_of_chunk`.
fn end_of_chunk(previous: &ChunkTag, current: &ChunkTag) -> bool {
    let (p, c) = (previous.prefix, current.prefix);
    matches!(p, 'E' | 'S')
        || (matches!(p, 'B' | 'I') && matches!(c, 'B' | 'S' | 'O'))
        || (p != 'O' && p != '.' && previous.kind != current.kind)
}

/// seqeval's `start_of_chunk`.
fn start_of_chunk(previous: &ChunkTag, current: &ChunkTag) -> bool {
    let (p, c) = (previous.prefix, current.prefix);
    matches!(c, 'B' | 'S')
        || (matches!(p, 'E' | 'S' | 'O') && matches!(c, 'E' | 'I'))
        || (c != 'O' && c != '.' && previous.kind != current.kind)
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
