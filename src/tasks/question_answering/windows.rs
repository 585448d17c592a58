//! Question + context pairs as model inputs: the `tokenizers` crate truncates the context
//! only (`OnlySecond`) to `max_seq_len` tokens and returns the rest as overflowing windows
//! that overlap by `doc_stride` tokens, with character offsets and sequence ids, exactly as
//! transformers' fast tokenizers do for `run_qa.py`. Training labels follow run_qa's
//! `prepare_train_features`.
//!
//! The pair is encoded without truncation, then truncated and post-processed with the
//! crate's own `truncate_encodings` and post-processor: with truncation set on the
//! tokenizer, tokenizers 0.23 stops tokenizing the context after `max_length` tokens (an
//! early exit that ignores overflow), and every window past the first ones is lost.

use serde::{Deserialize, Serialize};
use tokenizers::utils::truncation::truncate_encodings;
use tokenizers::{
    Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::domain::dataset::QaAnswer;
use crate::zoo::ZooError;

/// How contexts are cut into windows (run_qa's `max_seq_length` and `doc_stride`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSettings {
    pub max_seq_len: usize,
    /// Tokens of context shared by consecutive windows.
    pub doc_stride: usize,
}

impl Default for WindowSettings {
    fn default() -> Self {
        Self {
            max_seq_len: 384,
            doc_stride: 128,
        }
    }
}

/// One window: `[CLS] question [SEP] part of the context [SEP]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaWindow {
    pub input_ids: Vec<u32>,
    /// BERT segment ids: 0 for the question part, 1 for the context part.
    pub type_ids: Vec<u32>,
    /// Character offsets of every token in its own text ((0, 0) for special tokens).
    pub offsets: Vec<(usize, usize)>,
    /// 0 for question tokens, 1 for context tokens, `None` for special tokens.
    pub sequence_ids: Vec<Option<usize>>,
    /// Where the CLS token is: the label of a window without the answer.
    pub cls_index: usize,
}

impl QaWindow {
    /// The character span in the context of token `i`, if it is a context token.
    pub fn context_span(&self, i: usize) -> Option<(usize, usize)> {
        match self.sequence_ids.get(i) {
            Some(Some(1)) => self.offsets.get(i).copied(),
            _ => None,
        }
    }

    /// First and last token of the context part.
    fn context_range(&self) -> Option<(usize, usize)> {
        let first = self.sequence_ids.iter().position(|s| *s == Some(1))?;
        let last = self.sequence_ids.iter().rposition(|s| *s == Some(1))?;
        Some((first, last))
    }

    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// Start and end token of the answer in a window (both the CLS index when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanLabel {
    pub start: usize,
    pub end: usize,
}

/// A tokenizer set up to cut question + context pairs into windows.
pub struct QaTokenizer {
    /// Without padding or truncation.
    inner: Tokenizer,
    settings: WindowSettings,
    cls_id: Option<u32>,
    /// Special tokens a pair gets (3 for BERT: CLS, SEP, SEP).
    pair_special_tokens: usize,
}

impl QaTokenizer {
    /// `tokenizer`'s own padding and truncation are dropped: batches pad dynamically, and
    /// [`Self::windows`] truncates.
    pub fn new(tokenizer: &Tokenizer, settings: WindowSettings) -> Result<Self, ZooError> {
        let mut inner = tokenizer.clone();
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ZooError::Tokenizer(e.to_string()))?;
        let cls_id = ["[CLS]", "<s>", "<cls>"]
            .iter()
            .find_map(|token| inner.token_to_id(token));
        let pair_special_tokens = inner
            .get_post_processor()
            .map_or(0, |processor| processor.added_tokens(true));
        Ok(Self {
            inner,
            settings,
            cls_id,
            pair_special_tokens,
        })
    }

    pub fn settings(&self) -> WindowSettings {
        self.settings
    }

    /// Every window of `context` for `question`, whose leading whitespace is stripped as
    /// run_qa does. Fails when the question leaves no room for a context window larger than
    /// `doc_stride` (the tokenizers crate would panic; transformers raises).
    pub fn windows(&self, question: &str, context: &str) -> Result<Vec<QaWindow>, ZooError> {
        let question = question.trim_start();
        let question = self
            .inner
            .encode_char_offsets(question, false)
            .map_err(|e| ZooError::Tokenizer(e.to_string()))?;
        let question_tokens = question.len();
        let budget = self
            .settings
            .max_seq_len
            .saturating_sub(question_tokens + self.pair_special_tokens);
        if budget <= self.settings.doc_stride {
            return Err(ZooError::Unsupported(format!(
                "the question has {question_tokens} tokens, which leaves {budget} of \
                 max_seq_len {} for the context; that must be more than doc_stride {}",
                self.settings.max_seq_len, self.settings.doc_stride
            )));
        }
        let encoding = self.encode_pair(question, context)?;
        // The post-processor gives the context its segment id (1 for BERT) in the first
        // window only: the overflowing windows keep the id the context was encoded with
        // (0). transformers' windows all carry the template's id, so copy it over.
        let context_type_id = encoding
            .get_sequence_ids()
            .iter()
            .position(|sequence| *sequence == Some(1))
            .and_then(|first| encoding.get_type_ids().get(first).copied());
        let windows = std::iter::once(&encoding).chain(encoding.get_overflowing());
        Ok(windows.map(|e| self.window(e, context_type_id)).collect())
    }

    /// What `Tokenizer::encode_char_offsets((question, context), true)` with `OnlySecond`
    /// truncation computes, minus its early exit (see the module docs), for a question
    /// already encoded (`windows` needs its length first).
    fn encode_pair(&self, question: Encoding, context: &str) -> Result<Encoding, ZooError> {
        let tokenizer_error = |e: tokenizers::Error| ZooError::Tokenizer(e.to_string());
        let context = self
            .inner
            .encode_char_offsets(context, false)
            .map_err(tokenizer_error)?;
        let params = TruncationParams {
            max_length: self.settings.max_seq_len - self.pair_special_tokens,
            strategy: TruncationStrategy::OnlySecond,
            stride: self.settings.doc_stride,
            direction: TruncationDirection::Right,
        };
        let (question, context) =
            truncate_encodings(question, Some(context), &params).map_err(tokenizer_error)?;
        let processor = self.inner.get_post_processor().ok_or_else(|| {
            ZooError::Tokenizer("the tokenizer has no post-processor for pairs".into())
        })?;
        processor
            .process(question, context, true)
            .map_err(tokenizer_error)
    }

    fn window(&self, encoding: &Encoding, context_type_id: Option<u32>) -> QaWindow {
        let input_ids = encoding.get_ids().to_vec();
        let sequence_ids = encoding.get_sequence_ids();
        let type_ids = encoding
            .get_type_ids()
            .iter()
            .zip(&sequence_ids)
            .map(|(&type_id, sequence)| match (sequence, context_type_id) {
                (Some(1), Some(context)) => context,
                _ => type_id,
            })
            .collect();
        // run_qa: the CLS token's index, or 0 for tokenizers without one.
        let cls_index = self
            .cls_id
            .and_then(|cls| input_ids.iter().position(|&id| id == cls))
            .unwrap_or(0);
        QaWindow {
            type_ids,
            offsets: encoding.get_offsets().to_vec(),
            sequence_ids,
            cls_index,
            input_ids,
        }
    }
}

/// The training label of a window, as run_qa's `prepare_train_features` computes it: the
/// tokens holding the first gold answer's first and last characters when the window's
/// context part covers the whole answer, else the CLS token (also for unanswerable
/// questions).
///
/// One deliberate difference: run_qa's start scan does not stop at the context's end, so
/// an answer starting in a window's last context token gets its start on the `[SEP]` or on
/// padding after it (which one depends on the padding). Here the scan stops at the context's
/// last token, which is where that answer starts.
pub fn span_label(window: &QaWindow, answer: Option<&QaAnswer>) -> SpanLabel {
    let at_cls = SpanLabel {
        start: window.cls_index,
        end: window.cls_index,
    };
    let (Some(answer), Some((first, last))) = (answer, window.context_range()) else {
        return at_cls;
    };
    let start_char = answer.answer_start;
    let end_char = answer.answer_end();
    let offsets = &window.offsets;
    if !(offsets[first].0 <= start_char && offsets[last].1 >= end_char) {
        return at_cls;
    }
    let mut start = first;
    while start <= last && offsets[start].0 <= start_char {
        start += 1;
    }
    let mut end = last;
    while end > 0 && offsets[end].1 >= end_char {
        end -= 1;
    }
    SpanLabel {
        start: start - 1,
        end: end + 1,
    }
}

#[cfg(test)]
#[path = "windows_tests.rs"]
mod tests;
