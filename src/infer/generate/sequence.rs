//! One choice being generated: its cache, its tokens, its sampler and its text. Pure
//! state driven by the engine loop one step at a time (and by unit tests directly).

use super::sampling::{log_softmax, top_k, Sampler};
use super::text::{TextTracker, TextUpdate};
use super::{FinishReason, GenerationEvent, LmBackend, TokenLogprob, TopLogprob};
use crate::infer::InferError;

/// How one choice samples and when it stops.
pub(crate) struct SequenceSpec<'a> {
    pub(crate) choice: usize,
    pub(crate) prompt: Vec<u32>,
    /// Most tokens to sample (already capped by the context length).
    pub(crate) max_new: usize,
    pub(crate) temperature: f32,
    pub(crate) top_p: f32,
    pub(crate) seed: u64,
    pub(crate) stop: &'a [String],
    pub(crate) logprobs: Option<usize>,
    /// Added to the logits before the token is chosen.
    pub(crate) logit_bias: &'a [(u32, f32)],
}

pub(crate) struct Sequence<C> {
    pub(crate) choice: usize,
    pub(crate) cache: C,
    /// What the next step feeds: the prompt at first, then the last sampled token.
    pub(crate) pending: Vec<u32>,
    /// Sampled tokens that are part of the text (a final stop token is not).
    generated: Vec<u32>,
    /// Every sampled token, a final stop token included (the usage count).
    pub(crate) sampled: usize,
    max_new: usize,
    sampler: Sampler,
    text: TextTracker,
    logprobs: Option<usize>,
    /// Logprobs of tokens whose text is still held back; sent with that text.
    held_logprobs: Vec<TokenLogprob>,
    pub(crate) finished: Option<FinishReason>,
}

impl<C> Sequence<C> {
    pub(crate) fn new(spec: SequenceSpec<'_>, cache: C) -> Self {
        Self {
            choice: spec.choice,
            cache,
            pending: spec.prompt,
            generated: Vec::new(),
            sampled: 0,
            max_new: spec.max_new,
            sampler: Sampler::new(spec.temperature, spec.top_p, spec.seed)
                .with_bias(spec.logit_bias.to_vec()),
            text: TextTracker::new(spec.stop),
            logprobs: spec.logprobs,
            held_logprobs: Vec::new(),
            finished: None,
        }
    }

    /// Nothing sampled yet: `pending` is (what is left of) the prompt.
    pub(crate) fn prefilling(&self) -> bool {
        self.sampled == 0
    }

    /// The first `n` pending prompt tokens went through the model; the rest wait for the
    /// next steps (nothing is sampled until the whole prompt is in the cache).
    pub(crate) fn fed(&mut self, n: usize) {
        self.pending.drain(..n.min(self.pending.len()));
    }

    /// Samples the next token from the logits of the last step and returns the events
    /// it produced (text that became safe to emit, the finish).
    pub(crate) fn advance<B: LmBackend<Cache = C>>(
        &mut self,
        logits: &[f32],
        backend: &B,
    ) -> Result<Vec<GenerationEvent>, InferError> {
        if logits.is_empty() {
            return Err(InferError::engine("the model returned no logits"));
        }
        self.pending.clear();
        let token = self.sampler.sample(logits);
        self.sampled += 1;
        if backend.stop_token_ids().contains(&token) {
            let rest = self.text.flush();
            return Ok(self.finish(rest, FinishReason::Stop));
        }
        if let Some(k) = self.logprobs {
            let entry = token_logprob(backend, logits, token, k)?;
            self.held_logprobs.push(entry);
        }
        self.generated.push(token);
        let text = backend.decode(&self.generated)?;
        match self.text.update(text) {
            TextUpdate::Stopped(last) => Ok(self.finish(last, FinishReason::Stop)),
            TextUpdate::Delta(delta) if self.sampled >= self.max_new => {
                let rest = delta + &self.text.flush();
                Ok(self.finish(rest, FinishReason::Length))
            }
            TextUpdate::Delta(delta) => {
                self.pending.push(token);
                Ok(self.delta(delta).into_iter().collect())
            }
        }
    }

    fn delta(&mut self, text: String) -> Option<GenerationEvent> {
        if text.is_empty() {
            return None;
        }
        Some(GenerationEvent::Delta {
            choice: self.choice,
            text,
            logprobs: std::mem::take(&mut self.held_logprobs),
        })
    }

    fn finish(&mut self, last: String, reason: FinishReason) -> Vec<GenerationEvent> {
        self.finished = Some(reason);
        let mut events: Vec<GenerationEvent> = self.delta(last).into_iter().collect();
        // Logprobs of tokens whose text vanished (cut by a stop string) still go out.
        if !self.held_logprobs.is_empty() {
            events.push(GenerationEvent::Delta {
                choice: self.choice,
                text: String::new(),
                logprobs: std::mem::take(&mut self.held_logprobs),
            });
        }
        events.push(GenerationEvent::Finished {
            choice: self.choice,
            reason,
        });
        events
    }
}

/// The sampled token's logprob and the `k` best alternatives, as text.
fn token_logprob<B: LmBackend>(
    backend: &B,
    logits: &[f32],
    token: u32,
    k: usize,
) -> Result<TokenLogprob, InferError> {
    let logprobs = log_softmax(logits);
    let top = top_k(&logprobs, k)
        .into_iter()
        .map(|(id, logprob)| {
            Ok(TopLogprob {
                token: backend.decode(&[id])?,
                logprob,
            })
        })
        .collect::<Result<Vec<_>, InferError>>()?;
    Ok(TokenLogprob {
        token: backend.decode(&[token])?,
        logprob: logprobs[token as usize],
        top,
    })
}
