//! DPO data: a preference row as prompt, chosen and rejected token ids.
//!
//! As TRL prepares conversational preference data: the prompt is `input.messages`
//! rendered with the model's chat template and the generation prompt; a completion is what
//! the template adds when the candidate assistant message is appended, i.e.
//! `render(input + [answer])[len(prompt)..]`, so it ends with the template's end-of-turn
//! token. Whitespace the template writes after that token (ChatML's "\n") is left out, as
//! SFT leaves it out of the trained tokens: the model learns to stop, not to emit a
//! newline nobody reads. Prompt and completion are tokenized separately without added
//! special tokens (the template writes them), and only completion tokens count in the
//! log-probs.
//!
//! With `max_prompt_length`, a prompt first keeps only its last `max_prompt_length` tokens,
//! as TRL's `tokenize_row` did while it had the option (`prompt_input_ids[-n:]`, removed
//! in TRL 0.29; its default was 512, TRL 1.x has none and neither has temper unless asked).
//!
//! Truncation as TRL's `max_length` with `truncation_mode="keep_end"`: a sequence longer
//! than `max_length` loses prompt tokens from the left first (one is kept, so the first
//! completion token is still predicted from something), then completion tokens from the
//! right. Chosen and rejected are truncated each on its own, as TRL truncates each row of
//! its concatenated batch.

use std::path::Path;

use serde_json::Value;

use crate::domain::dataset::{ChatMessage, PreferenceExample};
use crate::tasks::sft::SftTokenizer;
use crate::train::TrainError;

/// Prompt then completion tokens; only `ids[n_prompt..]` is scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceSequence {
    pub ids: Vec<u32>,
    pub n_prompt: usize,
}

impl PreferenceSequence {
    pub fn completion(&self) -> &[u32] {
        &self.ids[self.n_prompt.min(self.ids.len())..]
    }

    /// Sequence of `prompt + completion` cut to `max_length` tokens (module docs); the
    /// flag says whether anything was cut.
    pub fn truncated(prompt: &[u32], completion: &[u32], max_length: usize) -> (Self, bool) {
        let max_length = max_length.max(2);
        let excess = (prompt.len() + completion.len()).saturating_sub(max_length);
        let from_prompt = excess.min(prompt.len().saturating_sub(1));
        let keep_completion = completion.len() - (excess - from_prompt).min(completion.len());
        let mut ids = prompt[from_prompt..].to_vec();
        let n_prompt = ids.len();
        ids.extend_from_slice(&completion[..keep_completion]);
        (Self { ids, n_prompt }, excess > 0)
    }
}

/// One preference row, tokenized and truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferencePair {
    pub chosen: PreferenceSequence,
    pub rejected: PreferenceSequence,
}

impl PreferencePair {
    /// Tokens of both sequences (what a step reads).
    pub fn n_tokens(&self) -> usize {
        self.chosen.ids.len() + self.rejected.ids.len()
    }
}

/// A tokenized split and how many of its pairs truncation touched.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedPairs {
    pub pairs: Vec<PreferencePair>,
    /// Pairs with at least one sequence longer than `max_length`.
    pub truncated: usize,
    /// Pairs whose prompt was longer than `max_prompt_length`.
    pub prompts_cut: usize,
}

/// The prompt and both completions of a row, before truncation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedRow {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// The chat template and tokenizer of the model being tuned (those SFT uses).
pub struct PreferenceTokenizer {
    inner: SftTokenizer,
    /// Prompt tokens kept (the prompt's end); `None`: only `max_length` cuts prompts.
    max_prompt_length: Option<usize>,
}

impl PreferenceTokenizer {
    pub fn from_dir(dir: &Path, model_eos: &[u32]) -> Result<Self, TrainError> {
        let inner = SftTokenizer::from_dir(dir, model_eos)?;
        if inner.template().is_none() {
            return Err(TrainError::InvalidData(
                "the base model has no chat template (`chat_template` in tokenizer_config.json or chat_template.jinja), which DPO needs to render the preference rows' conversations".into(),
            ));
        }
        Ok(Self {
            inner,
            max_prompt_length: None,
        })
    }

    /// Keeps at most the last `max_prompt_length` prompt tokens of every row.
    pub fn with_max_prompt_length(mut self, max_prompt_length: Option<usize>) -> Self {
        self.max_prompt_length = max_prompt_length;
        self
    }

    pub fn pad_id(&self) -> u32 {
        self.inner.pad_id()
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        self.inner.tokenizer()
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, TrainError> {
        Ok(self
            .inner
            .tokenizer()
            .encode(text, false)
            .map_err(|e| TrainError::InvalidData(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec())
    }

    /// `number` is the 1-based example number used in error messages.
    pub fn tokenize(
        &self,
        example: &PreferenceExample,
        number: usize,
    ) -> Result<TokenizedRow, TrainError> {
        let template = self
            .inner
            .template()
            .ok_or_else(|| TrainError::InvalidData("the base model has no chat template".into()))?;
        let mut messages: Vec<Value> = example.input.messages.iter().map(message_json).collect();
        let tools = example.input.tools.as_ref();
        let prompt = template
            .render(&messages, tools, true)
            .map_err(|e| TrainError::InvalidData(format!("Example {number}: {e}")))?;
        let mut completion = |answer: &ChatMessage, which: &str| {
            messages.push(message_json(answer));
            let rendered = template.render(&messages, tools, false);
            messages.pop();
            let full =
                rendered.map_err(|e| TrainError::InvalidData(format!("Example {number}: {e}")))?;
            if !full.starts_with(&prompt) {
                return Err(TrainError::InvalidData(format!(
                    "Example {number}: the chat template renders the conversation differently once the {which} output follows it, so the output's tokens cannot be located"
                )));
            }
            let end = full.trim_end().len().max(prompt.len());
            let ids = self.encode(&full[prompt.len()..end])?;
            if ids.is_empty() {
                return Err(TrainError::InvalidData(format!(
                    "Example {number}: the {which} output renders as no tokens"
                )));
            }
            Ok(ids)
        };
        let chosen = completion(&example.preferred, "preferred")?;
        let rejected = completion(&example.non_preferred, "non-preferred")?;
        Ok(TokenizedRow {
            prompt: self.encode(&prompt)?,
            chosen,
            rejected,
        })
    }

    /// Tokenizes and truncates a split (`max_length` at least 2).
    pub fn prepare(
        &self,
        examples: &[PreferenceExample],
        max_length: usize,
    ) -> Result<PreparedPairs, TrainError> {
        let mut prepared = PreparedPairs {
            pairs: Vec::with_capacity(examples.len()),
            truncated: 0,
            prompts_cut: 0,
        };
        for (i, example) in examples.iter().enumerate() {
            let row = self.tokenize(example, i + 1)?;
            let keep = self.max_prompt_length.unwrap_or(usize::MAX);
            let prompt = &row.prompt[row.prompt.len().saturating_sub(keep)..];
            prepared.prompts_cut += usize::from(prompt.len() < row.prompt.len());
            let (chosen, cut_chosen) =
                PreferenceSequence::truncated(prompt, &row.chosen, max_length);
            let (rejected, cut_rejected) =
                PreferenceSequence::truncated(prompt, &row.rejected, max_length);
            prepared.truncated += usize::from(cut_chosen || cut_rejected);
            prepared.pairs.push(PreferencePair { chosen, rejected });
        }
        Ok(prepared)
    }
}

/// The OpenAI-shaped message a chat template expects: absent fields stay absent (templates
/// test `message.tool_calls is defined`); `weight` is SFT's and not passed on.
fn message_json(message: &ChatMessage) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("role".into(), message.role.as_str().into());
    object.insert("content".into(), message.content.clone().into());
    let optional = [
        ("name", message.name.clone().map(Value::String)),
        ("tool_calls", message.tool_calls.clone()),
        (
            "tool_call_id",
            message.tool_call_id.clone().map(Value::String),
        ),
        ("function_call", message.function_call.clone()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            object.insert(key.into(), value);
        }
    }
    Value::Object(object)
}
