//! Text generation: the predictor behind `/v1/chat/completions` and `/v1/completions`.
//!
//! # Layout
//! - [`LmBackend`] (here): what a language model must offer (tokenizer, chat template,
//!   one batched forward step over per-sequence caches). Implemented by the real
//!   `CausalLm` adapter and by the test fake.
//! - `sampling.rs`: greedy / temperature / nucleus sampling with a seeded RNG per choice,
//!   log-softmax and top-k logprobs.
//! - `text.rs`: incremental detokenization and stop strings (never emits broken UTF-8 or
//!   any part of a stop string).
//! - `admission.rs`: what a request may take of the context and of the engine's KV-cache
//!   byte budget (checked before it is accepted, reserved while it runs).
//! - `schedule.rs`: what each step feeds (decoding tokens, prompt chunks within the
//!   per-step prefill budget).
//! - `sequence.rs`: one choice being generated (pure state: cache, tokens, sampler, text).
//! - `causal.rs`: [`CausalLmBackend`], the real backend over `zoo::decoder::CausalLm`.
//! - `engine.rs`: [`GenEngine`], one model on its own OS thread with continuous batching;
//!   `worker.rs`: that thread's loop.
//! - `stream.rs`: [`GenerationStream`], the async receiving end a request holds.
//! - The types below cross into `api`: requests, events and the collected answer.

mod admission;
mod causal;
mod engine;
mod logits;
pub(crate) mod sampling;
mod schedule;
mod sequence;
mod stream;
mod text;
mod worker;

#[cfg(test)]
mod adapter_tests;
#[cfg(test)]
mod budget_tests;
#[cfg(test)]
pub(super) mod causal_tests;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod metrics_tests;
#[cfg(test)]
mod prefill_tests;
#[cfg(test)]
mod real_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde_json::Value;

use crate::zoo::decoder::ServedAdapter;

pub use causal::{CausalLmBackend, CausalLmParts};
pub use engine::{GenEngine, GenEngineConfig};
pub use logits::StepLogits;
pub use stream::GenerationStream;
pub(crate) use stream::KeepAlive;

use super::InferError;

/// Turns a request's prompt into token ids; runs on the caller's side of an engine (a
/// blocking thread), so a long prompt's rendering and tokenization never stall the
/// sequences the engine is decoding.
pub trait PromptEncoder: Send + Sync + 'static {
    /// Token ids of `text`, no special tokens added.
    fn encode(&self, text: &str) -> Result<Vec<u32>, InferError>;
    /// The prompt for a conversation (the model's chat template, with the generation
    /// prompt for the assistant's turn appended).
    fn render_chat(&self, messages: &[Value], tools: Option<&Value>) -> Result<String, InferError>;

    /// The token ids of `prompt`: rendered through the template (chat) or as it is
    /// (text); an empty result is the caller's 400.
    fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, InferError> {
        let param = prompt.param();
        let text = match prompt {
            Prompt::Chat { messages, tools } => self.render_chat(messages, tools.as_ref())?,
            Prompt::Text(text) => text.clone(),
        };
        let ids = self.encode(&text)?;
        if ids.is_empty() {
            return Err(InferError::invalid(
                param,
                format!("`{param}` must not be empty"),
            ));
        }
        Ok(ids)
    }
}

/// A causal language model as the generation engine sees it. Driven by the engine thread;
/// every method may be slow. `Sync` because the sequences of a step sample and detokenize
/// in parallel, each reading the model's tokenizer.
pub trait LmBackend: Send + Sync + 'static {
    /// Per-sequence state of the model (the KV cache), owned by the request, never by
    /// the model, so one loaded model serves many sequences at once.
    type Cache: Send;
    /// The model's prompt side (template and tokenizer), shared with the callers' threads:
    /// prompts are rendered and tokenized there, never on the engine thread.
    fn prompt_encoder(&self) -> Arc<dyn PromptEncoder>;
    /// Text of `ids`, special tokens skipped.
    fn decode(&self, ids: &[u32]) -> Result<String, InferError>;
    /// Tokens that end a sequence (eos, end-of-turn…).
    fn stop_token_ids(&self) -> &[u32];
    /// An empty cache for a sequence that will hold at most `max_tokens` tokens.
    fn new_cache(&self, max_tokens: usize) -> Self::Cache;
    /// Most bytes a cache from `new_cache(tokens)` holds: what admission reserves of the
    /// engine's KV budget for one sequence.
    fn kv_cache_bytes(&self, tokens: usize) -> usize;
    /// Appends each chunk's tokens to its cache and returns the logits of each chunk's
    /// last token, in chunk order. All chunks go through the model together, each with
    /// its own adapter.
    fn step(&mut self, chunks: &mut [StepChunk<'_, Self::Cache>])
        -> Result<StepLogits, InferError>;
    /// Most tokens (prompt + generated) a sequence may hold.
    fn context_len(&self) -> usize;
    /// Length of each logits row `step` returns.
    fn vocab_size(&self) -> usize;
    fn parameter_bytes(&self) -> usize;
}

/// One running sequence's part of a step.
pub struct StepChunk<'a, C> {
    /// Tokens not yet through the model (the prompt at first, then the last sampled one).
    pub tokens: &'a [u32],
    pub cache: &'a mut C,
    /// The LoRA adapter the sequence's request is served with; `None`: the base alone.
    pub adapter: Option<&'a ServedAdapter>,
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// OpenAI-shaped messages rendered through the model's chat template.
    Chat {
        messages: Vec<Value>,
        tools: Option<Value>,
    },
    /// Raw text, tokenized as is.
    Text(String),
}

impl Prompt {
    /// The request field a prompt problem is reported under.
    pub(crate) fn param(&self) -> &'static str {
        match self {
            Prompt::Chat { .. } => "messages",
            Prompt::Text(_) => "prompt",
        }
    }
}

/// Sampling and stopping settings of one request, already validated by `api`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Most generated tokens per choice; `None`: until the context is full.
    pub max_tokens: Option<usize>,
    /// The request field `max_tokens` came from (`max_tokens`, or chat's
    /// `max_completion_tokens`), named by limit errors.
    pub max_tokens_param: &'static str,
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 = the whole distribution.
    pub top_p: f32,
    /// Choices generated from the same prompt.
    pub n: usize,
    /// Up to 4 strings; the text ends before the first one found, which is not included.
    pub stop: Vec<String>,
    /// Choice `i` samples with seed `seed + i`; `None`: a random seed.
    pub seed: Option<u64>,
    /// `Some(k)`: report each token's logprob and its `k` most likely alternatives.
    pub logprobs: Option<usize>,
    /// OpenAI's `logit_bias`: `(token id, bias in [-100, 100])` added to the logits each
    /// token is chosen from (ids below the model's vocabulary size, checked on submission).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_tokens: None,
            max_tokens_param: "max_tokens",
            temperature: 1.0,
            top_p: 1.0,
            n: 1,
            stop: Vec::new(),
            seed: None,
            logprobs: None,
            logit_bias: Vec::new(),
        }
    }
}

/// One generation request for an engine.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    pub prompt: Prompt,
    pub params: GenerationParams,
}

/// Why a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` or the model's context length.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A candidate token and its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
}

/// A generated token with its log-probability (log-softmax of the raw logits) and the
/// most likely alternatives at that position, most likely first.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

/// Token counts of a request (the prompt counted once, whatever `n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// What a request receives while it is generated, in order: text deltas per choice, one
/// `Finished` per choice, then `Usage` as the last event.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// New text of a choice (may be empty when only logprobs are new).
    Delta {
        choice: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Finished {
        choice: usize,
        reason: FinishReason,
    },
    Usage(Usage),
}

/// One choice of a collected generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub index: usize,
    pub text: String,
    pub finish_reason: FinishReason,
    /// `Some` when the request asked for logprobs.
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// A whole generation, as non-streaming responses report it.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub choices: Vec<Choice>,
    pub usage: Usage,
}
