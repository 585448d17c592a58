//! Serving: raw text in, entities out, as transformers' `TokenClassificationPipeline`
//! post-processes (`aggregation_strategy` `none` and `simple`, `ignore_labels=["O"]`).
//!
//! The raw text is tokenized as it is (the tokenizer's normalizer and pre-tokenizer split it
//! into words, as they split every training word), with character offsets into the original
//! text; a text longer than the model takes is truncated to its first `max_len` tokens
//! (special tokens included), so later words get no entities. Per sub-word token, special
//! tokens skipped: the softmax scores and their arg-max.
//! - `none`: one entity per token whose label is not `O`: `entity` (the label), `score`,
//!   `index` (the token's position in the model's input, `[CLS]` = 0), `word` (the token,
//!   `##` included; the text itself for an unknown token), `start`, `end`.
//! - `simple`: consecutive tokens grouped as the pipeline's `group_entities` does (a `B-`
//!   token or a change of type starts a group; a label without a `B-`/`I-` prefix continues
//!   a group of the same label), `O` groups dropped; `entity_group` (the label after its
//!   first `-`), the mean score, the tokens decoded back into a `word` by the tokenizer's
//!   decoder, the first token's `start` and the last one's `end`.

use serde::{Deserialize, Serialize};
use tokenizers::{Decoder, Tokenizer, TruncationParams};

/// How tokens become entities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// One entity per token.
    None,
    /// Tokens grouped into entity spans (the pipeline's `simple`).
    #[default]
    Simple,
}

/// One entity: `label` is the `entity` (`none`) or the `entity_group` (`simple`); `start` and
/// `end` are character offsets into the input text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenEntity {
    pub label: String,
    pub score: f32,
    /// `none` only: the token's position in the model's input (the pipeline's `index`).
    pub index: Option<usize>,
    pub word: String,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PipelineError {
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("the model returned {got} logits for {tokens} tokens and {labels} labels")]
    LogitShape {
        got: usize,
        tokens: usize,
        labels: usize,
    },
}

/// A text as the model sees it, with what post-processing needs per token.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedText {
    pub ids: Vec<u32>,
    tokens: Vec<String>,
    /// Character offsets into the text.
    offsets: Vec<(usize, usize)>,
    special: Vec<bool>,
}

/// Tokenizes texts for a token classifier and turns its logits into entities.
pub struct EntityTagger {
    tokenizer: Tokenizer,
    labels: Vec<String>,
    unk_id: Option<u32>,
}

impl EntityTagger {
    /// `labels`: the model's labels, id = index; `max_len`: the most tokens (special ones
    /// included) the model takes; longer texts are truncated to it.
    pub fn new(tokenizer: &Tokenizer, labels: Vec<String>, max_len: usize) -> Self {
        let mut tokenizer = tokenizer.clone();
        tokenizer.with_padding(None);
        // Room for [CLS], one token and [SEP]. Only a stride at least as long as the
        // length makes `with_truncation` fail, and the stride is 0 < max_len.
        let max_len = max_len.max(3);
        let _ = tokenizer.with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..TruncationParams::default()
        }));
        let unk_id = ["[UNK]", "<unk>"]
            .iter()
            .find_map(|token| tokenizer.token_to_id(token));
        Self {
            tokenizer,
            labels,
            unk_id,
        }
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn encode(&self, text: &str) -> Result<EncodedText, PipelineError> {
        let encoding = self
            .tokenizer
            .encode_char_offsets(text, true)
            .map_err(|e| PipelineError::Tokenizer(e.to_string()))?;
        Ok(EncodedText {
            ids: encoding.get_ids().to_vec(),
            tokens: encoding.get_tokens().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
            special: encoding
                .get_special_tokens_mask()
                .iter()
                .map(|&m| m != 0)
                .collect(),
        })
    }

    /// The entities of `text`, from `logits` (row-major `tokens × labels`, as `encoded`).
    pub fn entities(
        &self,
        text: &str,
        encoded: &EncodedText,
        logits: &[f32],
        aggregation: Aggregation,
    ) -> Result<Vec<TokenEntity>, PipelineError> {
        let n_labels = self.labels.len();
        if n_labels == 0 || logits.len() != encoded.ids.len() * n_labels {
            return Err(PipelineError::LogitShape {
                got: logits.len(),
                tokens: encoded.ids.len(),
                labels: n_labels,
            });
        }
        let mut tokens = Vec::new();
        for (i, row) in logits.chunks(n_labels).enumerate() {
            if encoded.special[i] {
                continue;
            }
            let (best, score) = best_label(row);
            let (start, end) = encoded.offsets[i];
            let word = if Some(encoded.ids[i]) == self.unk_id {
                text.chars().skip(start).take(end - start).collect()
            } else {
                encoded.tokens[i].clone()
            };
            tokens.push(TokenEntity {
                label: self.labels[best].clone(),
                score,
                index: Some(i),
                word,
                start,
                end,
            });
        }
        let entities = match aggregation {
            Aggregation::None => tokens,
            Aggregation::Simple => self.group(tokens)?,
        };
        Ok(entities
            .into_iter()
            .filter(|entity| entity.label != "O")
            .collect())
    }

    /// The pipeline's `group_entities`.
    fn group(&self, tokens: Vec<TokenEntity>) -> Result<Vec<TokenEntity>, PipelineError> {
        let mut groups = Vec::new();
        let mut current: Vec<TokenEntity> = Vec::new();
        for token in tokens {
            if let Some(last) = current.last() {
                let (prefix, kind) = bio_tag(&token.label);
                let (_, last_kind) = bio_tag(&last.label);
                if kind != last_kind || prefix == 'B' {
                    groups.push(self.merge(std::mem::take(&mut current))?);
                }
            }
            current.push(token);
        }
        if !current.is_empty() {
            groups.push(self.merge(current)?);
        }
        Ok(groups)
    }

    /// The pipeline's `group_sub_entities`: one entity for a run of tokens.
    fn merge(&self, tokens: Vec<TokenEntity>) -> Result<TokenEntity, PipelineError> {
        let label = tokens
            .first()
            .map(|t| t.label.split_once('-').map_or(&*t.label, |(_, kind)| kind))
            .unwrap_or_default()
            .to_string();
        let score = tokens.iter().map(|t| f64::from(t.score)).sum::<f64>() / tokens.len() as f64;
        let start = tokens.first().map_or(0, |t| t.start);
        let end = tokens.last().map_or(0, |t| t.end);
        let pieces: Vec<String> = tokens.into_iter().map(|t| t.word).collect();
        let word = match self.tokenizer.get_decoder() {
            Some(decoder) => decoder
                .decode(pieces)
                .map_err(|e| PipelineError::Tokenizer(e.to_string()))?,
            None => pieces.join(" "),
        };
        Ok(TokenEntity {
            label,
            score: score as f32,
            index: None,
            word,
            start,
            end,
        })
    }
}

/// The pipeline's `get_tag`: `B-X` → (`B`, `X`), `I-X` → (`I`, `X`), anything else is a
/// continuation of itself.
fn bio_tag(label: &str) -> (char, &str) {
    if let Some(kind) = label.strip_prefix("B-") {
        ('B', kind)
    } else if let Some(kind) = label.strip_prefix("I-") {
        ('I', kind)
    } else {
        ('I', label)
    }
}

/// Arg-max of a row of logits and its softmax probability (max-shifted, as the pipeline).
fn best_label(row: &[f32]) -> (usize, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    let (best, exp) = exps
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        });
    (best, exp / total)
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
