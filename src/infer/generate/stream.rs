//! The async end of one generation request. The engine thread sends `Started` once the
//! prompt is accepted (or `Failed` if it is not), then events; dropping the stream tells
//! the engine the client is gone and frees its sequences at the next step.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Choice, FinishReason, Generation, GenerationEvent};
use crate::infer::InferError;

/// What the engine thread sends to a request.
#[derive(Debug)]
pub(crate) enum EngineMessage {
    /// The prompt was tokenized and fits; generation has begun.
    Started {
        prompt_tokens: usize,
    },
    Event(GenerationEvent),
    /// The request failed; nothing follows.
    Failed(InferError),
}

pub(crate) type MessageSender = mpsc::UnboundedSender<EngineMessage>;

/// Anything that must outlive the stream: the loaded model serving it (so an eviction
/// mid-stream does not stop the engine under it).
pub(crate) type KeepAlive = Arc<dyn Send + Sync>;

pub struct GenerationStream {
    /// From the engine thread; unbounded because the thread must never wait on a slow
    /// client (a request holds at most `n × max_tokens` events).
    messages: mpsc::UnboundedReceiver<EngineMessage>,
    prompt_tokens: usize,
    n: usize,
    logprobs: bool,
    /// Set once `Usage`, an error or the end was returned: later `next` calls give `None`.
    done: bool,
    keep_alive: Option<KeepAlive>,
}

impl GenerationStream {
    /// Waits until the engine accepted the prompt, so prompt errors (too long for the
    /// context…) reach the caller before any response is started.
    pub(crate) async fn open(
        mut messages: mpsc::UnboundedReceiver<EngineMessage>,
        n: usize,
        logprobs: bool,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Self, InferError> {
        let prompt_tokens = match messages.recv().await {
            Some(EngineMessage::Started { prompt_tokens }) => prompt_tokens,
            Some(EngineMessage::Failed(error)) => return Err(error),
            Some(EngineMessage::Event(_)) => {
                return Err(InferError::engine("generation event before start"))
            }
            None => return Err(InferError::engine("the engine dropped the request")),
        };
        Ok(Self {
            messages,
            prompt_tokens,
            n,
            logprobs,
            done: false,
            keep_alive,
        })
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Number of choices.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Whether deltas carry logprobs.
    pub fn logprobs(&self) -> bool {
        self.logprobs
    }

    /// The next event; `None` after `Usage` (the last event) or an error.
    pub async fn next(&mut self) -> Option<Result<GenerationEvent, InferError>> {
        if self.done {
            return None;
        }
        let item = match self.messages.recv().await {
            Some(EngineMessage::Event(event)) => {
                self.done = matches!(event, GenerationEvent::Usage(_));
                Ok(event)
            }
            Some(EngineMessage::Failed(error)) => {
                self.done = true;
                Err(error)
            }
            Some(EngineMessage::Started { .. }) => {
                self.done = true;
                Err(InferError::engine("generation started twice"))
            }
            None => {
                self.done = true;
                Err(InferError::engine("generation ended before its usage"))
            }
        };
        Some(item)
    }

    /// Waits for the whole generation.
    pub async fn collect(mut self) -> Result<Generation, InferError> {
        let mut choices: Vec<Choice> = (0..self.n)
            .map(|index| Choice {
                index,
                text: String::new(),
                finish_reason: FinishReason::Stop,
                logprobs: self.logprobs.then(Vec::new),
            })
            .collect();
        while let Some(event) = self.next().await {
            match event? {
                GenerationEvent::Delta {
                    choice,
                    text,
                    logprobs,
                } => {
                    let slot = choice_slot(&mut choices, choice)?;
                    slot.text.push_str(&text);
                    if let Some(all) = &mut slot.logprobs {
                        all.extend(logprobs);
                    }
                }
                GenerationEvent::Finished { choice, reason } => {
                    choice_slot(&mut choices, choice)?.finish_reason = reason;
                }
                GenerationEvent::Usage(usage) => return Ok(Generation { choices, usage }),
            }
        }
        Err(InferError::engine("generation ended before its usage"))
    }
}

fn choice_slot(choices: &mut [Choice], index: usize) -> Result<&mut Choice, InferError> {
    choices
        .get_mut(index)
        .ok_or_else(|| InferError::engine(format!("event for unknown choice {index}")))
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        // The model may be evicted meanwhile, making this the last reference: dropping
        // an engine joins its thread, which must not happen on the async runtime.
        if let Some(keep_alive) = self.keep_alive.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(keep_alive))),
                Err(_) => drop(keep_alive),
            }
        }
    }
}
