//! Words → sub-words, as transformers' `run_ner.py` `tokenize_and_align_labels` does: the
//! sentence goes to the tokenizer pre-tokenized (`is_split_into_words=True`), and the
//! encoding's word ids say which word each sub-word came from. A word's tag goes on its first
//! sub-word; the other sub-words and the special tokens get no label (transformers' `-100`,
//! here `None`), unless `label_all_tokens`, which labels every sub-word, a `B-X` word's later
//! sub-words with `I-X` as transformers does. The tokenizer truncates to `max_seq_len`,
//! keeping its final `[SEP]`; words past the cut are not trained or scored, as in
//! transformers. Batches are padded to their longest sequence ([`collate_tagged`]).

use std::collections::HashMap;

use candle_core::Device;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::domain::dataset::TokenTagsExample;
use crate::domain::hyperparams::TrainingConfig;
use crate::train::TrainError;
use crate::zoo::{collate, EncodedBatch, ZooError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlignOptions {
    /// Longest encoding, special tokens included.
    pub max_seq_len: usize,
    /// Label every sub-word, not only a word's first.
    pub label_all_tokens: bool,
}

impl AlignOptions {
    /// What a job's settings ask for: its `max_seq_len` and `label_all_tokens`.
    pub fn for_training(config: &TrainingConfig) -> Self {
        Self {
            max_seq_len: config.max_seq_len,
            label_all_tokens: config.task_options.label_all_tokens(),
        }
    }
}

/// One sentence, tokenized: the token ids and, per token, its label id (`None`: not trained,
/// not scored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlignedExample {
    pub ids: Vec<u32>,
    pub labels: Vec<Option<u32>>,
}

impl AlignedExample {
    pub fn labelled(&self) -> usize {
        self.labels.iter().flatten().count()
    }
}

/// Tokenizes tagged sentences for one label set.
pub struct TagAligner {
    tokenizer: Tokenizer,
    label_ids: HashMap<String, u32>,
    /// `B-X`'s id → `I-X`'s id (when the label set has `I-X`), every other id to itself: the
    /// label of a word's later sub-words under `label_all_tokens`.
    continuation: Vec<u32>,
    options: AlignOptions,
}

impl TagAligner {
    /// `tokenizer` as loaded (its baked-in padding is turned off here, its truncation set to
    /// `max_seq_len`); `labels`: label id = index.
    pub fn new(
        tokenizer: &Tokenizer,
        labels: &[String],
        options: AlignOptions,
    ) -> Result<Self, TrainError> {
        if options.max_seq_len < 3 {
            return Err(TrainError::InvalidData(format!(
                "`max_seq_len` {} leaves no room for a word between the special tokens",
                options.max_seq_len
            )));
        }
        let mut tokenizer = tokenizer.clone();
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: options.max_seq_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| ZooError::Tokenizer(e.to_string()))?;
        let label_ids: HashMap<String, u32> = labels
            .iter()
            .enumerate()
            .map(|(id, label)| (label.clone(), id as u32))
            .collect();
        let continuation = labels
            .iter()
            .enumerate()
            .map(|(id, label)| {
                label
                    .strip_prefix("B-")
                    .and_then(|kind| label_ids.get(&format!("I-{kind}")).copied())
                    .unwrap_or(id as u32)
            })
            .collect();
        Ok(Self {
            tokenizer,
            label_ids,
            continuation,
            options,
        })
    }

    /// Aligns one sentence; `number` (1-based) names it in errors. A tag outside the label set
    /// is an error, and so is a sentence left with no labelled token (every word tokenized to
    /// nothing).
    pub fn align(
        &self,
        number: usize,
        example: &TokenTagsExample,
    ) -> Result<AlignedExample, TrainError> {
        let tags = example
            .tags
            .iter()
            .map(|tag| {
                self.label_ids.get(tag).copied().ok_or_else(|| {
                    TrainError::InvalidData(format!(
                        "Example {number}: tag `{}` is not one of the training tags",
                        crate::domain::echo(tag)
                    ))
                })
            })
            .collect::<Result<Vec<u32>, TrainError>>()?;
        let encoding = self
            .tokenizer
            .encode(example.tokens.as_slice(), true)
            .map_err(|e| ZooError::Tokenizer(e.to_string()))?;
        let mut previous_word = None;
        let labels = encoding
            .get_word_ids()
            .iter()
            .map(|word| {
                let word = (*word)?;
                let tag = tags.get(word as usize).copied()?;
                let first = previous_word != Some(word);
                previous_word = Some(word);
                if first {
                    Some(tag)
                } else if self.options.label_all_tokens {
                    self.continuation.get(tag as usize).copied()
                } else {
                    None
                }
            })
            .collect();
        let aligned = AlignedExample {
            ids: encoding.get_ids().to_vec(),
            labels,
        };
        if aligned.labelled() == 0 {
            return Err(TrainError::InvalidData(format!(
                "Example {number}: no word of the sentence gives the tokenizer a token to label"
            )));
        }
        Ok(aligned)
    }
}

/// A padded batch of aligned sentences.
#[derive(Debug, Clone)]
pub struct TaggedBatch {
    pub inputs: EncodedBatch,
    /// `B × T` row-major, `None` at unlabelled and padding positions.
    pub labels: Vec<Option<u32>>,
}

impl TaggedBatch {
    pub fn labelled(&self) -> usize {
        self.labels.iter().flatten().count()
    }
}

/// Pads `indices` of `examples` to the batch's longest sequence (dynamic padding, as
/// `DataCollatorForTokenClassification`); padding positions carry no label.
pub fn collate_tagged(
    examples: &[AlignedExample],
    indices: &[usize],
    pad_id: u32,
    device: &Device,
) -> Result<TaggedBatch, TrainError> {
    let chosen = indices
        .iter()
        .map(|&i| {
            examples.get(i).ok_or_else(|| {
                TrainError::InvalidData(format!("example index {i} is out of range"))
            })
        })
        .collect::<Result<Vec<&AlignedExample>, TrainError>>()?;
    let seqs: Vec<&[u32]> = chosen.iter().map(|e| e.ids.as_slice()).collect();
    let inputs = collate(&seqs, pad_id, device)?;
    let width = inputs.input_ids.dim(1)?;
    let mut labels = Vec::with_capacity(chosen.len() * width);
    for example in chosen {
        labels.extend_from_slice(&example.labels);
        labels.extend(std::iter::repeat_n(None, width - example.labels.len()));
    }
    Ok(TaggedBatch { inputs, labels })
}

#[cfg(test)]
#[path = "align_tests.rs"]
mod tests;
