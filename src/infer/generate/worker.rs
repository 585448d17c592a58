//! The engine thread's loop (see `engine.rs` for the order of one iteration): intake
//! with admission, the waiting and running requests, one batched step at a time, and
//! handing the memory of ended sequences back to the OS.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use rayon::prelude::*;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::Span;

use super::admission::{grant, Grant, Limits};
use super::schedule::{plan_step, Pending};
use super::sequence::{Sequence, SequenceSpec};
use super::stream::{EngineMessage, MessageSender};
use super::{GenerationEvent, GenerationRequest, LmBackend, StepChunk, Usage};
use crate::infer::InferError;
use crate::telemetry::metrics::EngineMetrics;
use crate::zoo::decoder::ServedAdapter;

/// Freed cache bytes after which memory is handed back to the OS even while other
/// sequences run (an idle engine always hands it back).
const TRIM_AFTER_FREED_BYTES: usize = 64 << 20;

pub(super) struct GenerateCommand {
    pub(super) request: GenerationRequest,
    /// The prompt's token ids (rendered and tokenized before the command was sent).
    pub(super) prompt: Vec<u32>,
    /// The LoRA adapter to generate with; `None`: the base model.
    pub(super) adapter: Option<Arc<ServedAdapter>>,
    /// The caller's span, entered while the engine works on this request.
    pub(super) span: Span,
    /// Events for the caller; closed when its `GenerationStream` is dropped.
    pub(super) messages: MessageSender,
    /// One per choice; returned to the engine's semaphore when the request ends.
    pub(super) permits: OwnedSemaphorePermit,
    /// When the request reached the engine (before its prompt was tokenized): its time to
    /// first token counts from here.
    pub(super) arrived: Instant,
}

/// What the engine reports about itself.
pub(super) struct EngineGauges {
    /// Sequences running, written after each iteration (`GenEngine::running_sequences`).
    pub(super) running: Arc<AtomicUsize>,
    pub(super) metrics: EngineMetrics,
}

/// A request whose prompt was accepted, waiting for room in the batch and the budget.
struct Waiting {
    command: GenerateCommand,
    grant: Grant,
}

/// A request being generated: its sequences (one per unfinished choice) and channel.
struct Running<C> {
    messages: MessageSender,
    adapter: Option<Arc<ServedAdapter>>,
    span: Span,
    /// Released just before the final event, so a client that got its answer can
    /// queue again at once.
    permits: Option<OwnedSemaphorePermit>,
    prompt_tokens: usize,
    /// KV bytes held for this request's sequences until it is dropped.
    reserved_bytes: usize,
    sequences: Vec<Sequence<C>>,
    /// Tokens sampled by choices that already finished.
    finished_tokens: usize,
    /// Set when the request is over (answered or failed) and can be dropped.
    done: bool,
    /// When the request arrived, until its first token is sampled.
    awaiting_first_token: Option<Instant>,
}

impl<C> Running<C> {
    fn send(&self, event: GenerationEvent) {
        // A closed channel means the client left; the next iteration drops the request.
        let _ = self.messages.send(EngineMessage::Event(event));
    }

    fn fail(&mut self, error: InferError) {
        let _ = self.messages.send(EngineMessage::Failed(error));
        self.done = true;
    }
}

pub(super) struct Worker<B: LmBackend> {
    backend: B,
    /// From `GenEngine::submit`; closed when the engine is dropped.
    commands: mpsc::UnboundedReceiver<GenerateCommand>,
    /// Accepted requests waiting for room in the batch or the budget, oldest first.
    waiting: VecDeque<Waiting>,
    running: Vec<Running<B::Cache>>,
    max_batch: usize,
    /// Most prompt tokens one step feeds (see `schedule`).
    prefill_budget: usize,
    limits: Limits,
    /// Reserved bytes of requests dropped since memory was last handed back.
    freed_since_trim: usize,
    gauges: EngineGauges,
}

impl<B: LmBackend> Worker<B> {
    pub(super) fn new(
        backend: B,
        commands: mpsc::UnboundedReceiver<GenerateCommand>,
        max_batch: usize,
        prefill_budget: usize,
        limits: Limits,
        gauges: EngineGauges,
    ) -> Self {
        Self {
            backend,
            commands,
            waiting: VecDeque::new(),
            running: Vec::new(),
            max_batch,
            prefill_budget,
            limits,
            freed_since_trim: 0,
            gauges,
        }
    }

    pub(super) fn run(mut self) {
        let mut open = true;
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                if !open {
                    return;
                }
                match self.commands.blocking_recv() {
                    Some(command) => self.intake(command),
                    None => return,
                }
            }
            while open {
                match self.commands.try_recv() {
                    Ok(command) => self.intake(command),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.reap();
            self.admit();
            if !self.running.is_empty() {
                self.step();
                self.reap();
            }
            self.gauges
                .running
                .store(self.running_sequences(), Ordering::SeqCst);
            if self.running.is_empty() {
                self.gauges.metrics.idle();
            }
        }
    }

    /// Checks what a new request asks for; a request that can never run is answered with
    /// its 400 here, the others wait their turn.
    fn intake(&mut self, command: GenerateCommand) {
        let entered = command.span.clone().entered();
        let request = &command.request;
        let granted = grant(
            &request.prompt,
            command.prompt.len(),
            &request.params,
            self.limits,
            |tokens| self.backend.kv_cache_bytes(tokens),
        );
        drop(entered);
        match granted {
            Ok(grant) => self.waiting.push_back(Waiting { command, grant }),
            Err(error) => {
                let _ = command.messages.send(EngineMessage::Failed(error));
            }
        }
    }

    /// Drops finished requests and those whose client went away (their caches are
    /// freed with them), then hands freed memory back to the OS when enough was freed
    /// or nothing runs any more: without it glibc keeps the pages of abandoned
    /// generations.
    fn reap(&mut self) {
        let mut freed = 0;
        self.running.retain(|r| {
            let keep = !r.done && !r.messages.is_closed();
            if !keep {
                freed += r.reserved_bytes;
            }
            keep
        });
        self.waiting.retain(|w| !w.command.messages.is_closed());
        self.freed_since_trim = self.freed_since_trim.saturating_add(freed);
        let idle = self.running.is_empty();
        if self.freed_since_trim >= TRIM_AFTER_FREED_BYTES || (idle && self.freed_since_trim > 0) {
            crate::runtime::release_free_memory();
            self.freed_since_trim = 0;
        }
    }

    fn reserved_bytes(&self) -> usize {
        self.running.iter().map(|r| r.reserved_bytes).sum()
    }

    fn running_sequences(&self) -> usize {
        self.running.iter().map(|r| r.sequences.len()).sum()
    }

    /// Starts waiting requests, oldest first, while the batch has room and their
    /// reservations fit in the KV budget; a request that alone exceeds the batch still
    /// starts when nothing else runs (no request exceeds the budget: `intake` refused it).
    fn admit(&mut self) {
        while let Some(next) = self.waiting.front() {
            let running = self.running_sequences();
            let n = next.command.request.params.n;
            let batch_full = running > 0 && running + n > self.max_batch;
            let reserved = self.reserved_bytes() + next.grant.reserved_bytes;
            if batch_full || reserved > self.limits.kv_budget_bytes {
                break;
            }
            let Some(waiting) = self.waiting.pop_front() else {
                break;
            };
            if waiting.command.messages.is_closed() {
                continue;
            }
            let running = self.start(waiting);
            self.running.push(running);
        }
    }

    /// Creates one sequence per choice, each with a cache for its granted tokens.
    fn start(&mut self, waiting: Waiting) -> Running<B::Cache> {
        let Waiting { command, grant } = waiting;
        let GenerateCommand {
            request,
            prompt,
            adapter,
            span,
            messages,
            permits,
            arrived,
        } = command;
        let _entered = span.enter();
        let params = &request.params;
        let max_new = grant.max_new;
        let seed = params.seed.unwrap_or_else(|| rand::rng().random());
        let sequences = (0..params.n)
            .map(|choice| {
                let spec = SequenceSpec {
                    choice,
                    prompt: prompt.clone(),
                    max_new,
                    temperature: params.temperature,
                    top_p: params.top_p,
                    seed: seed.wrapping_add(choice as u64),
                    stop: &params.stop,
                    logprobs: params.logprobs,
                    logit_bias: &params.logit_bias,
                };
                Sequence::new(spec, self.backend.new_cache(grant.cache_tokens))
            })
            .collect();
        let prompt_tokens = prompt.len();
        let _ = messages.send(EngineMessage::Started { prompt_tokens });
        drop(_entered);
        Running {
            messages,
            adapter,
            span,
            permits: Some(permits),
            prompt_tokens,
            reserved_bytes: grant.reserved_bytes,
            sequences,
            finished_tokens: 0,
            done: false,
            awaiting_first_token: Some(arrived),
        }
    }

    /// One forward step over the running sequences (each decoding one's token, prompt
    /// chunks within the prefill budget: `schedule`), then sampling and events. Requests
    /// of one adapter are kept next to each other (a stable sort: the oldest first within
    /// each), so each adapter's update is one pair of matmuls over its rows.
    fn step(&mut self) {
        self.running
            .sort_by_key(|running| adapter_key(&running.adapter));
        let pending: Vec<Pending> = self
            .running
            .iter()
            .flat_map(|running| &running.sequences)
            .map(|sequence| Pending {
                prefilling: sequence.prefilling(),
                tokens: sequence.pending.len(),
            })
            .collect();
        let plan = plan_step(&pending, self.prefill_budget);
        let mut chunks: Vec<StepChunk<'_, B::Cache>> = Vec::new();
        let mut takes = plan.iter();
        for running in &mut self.running {
            for sequence in &mut running.sequences {
                let take = takes.next().copied().unwrap_or(0);
                if take > 0 {
                    chunks.push(StepChunk {
                        tokens: &sequence.pending[..take],
                        cache: &mut sequence.cache,
                        adapter: running.adapter.as_deref(),
                    });
                }
            }
        }
        let count = chunks.len();
        if count == 0 {
            return;
        }
        let _step_span = tracing::debug_span!("generate_step", sequences = count).entered();
        let started = Instant::now();
        // The pool's other threads poll for the step's length instead of sleeping between
        // its products (`runtime::keep_pool_awake`): 54 / 238 / 456 tokens/s at 1 / 8 / 32
        // streams against 53 / 227 / 444 without (the run above, repeated).
        let backend = &mut self.backend;
        let outcome = crate::runtime::keep_pool_awake(|| backend.step(&mut chunks));
        drop(chunks);
        let logits = match outcome {
            Ok(logits) if logits.rows() == count => logits,
            Ok(logits) => {
                let rows = logits.rows();
                let error = InferError::engine(format!(
                    "backend returned {rows} rows for {count} sequences"
                ));
                return self.fail_all(error);
            }
            Err(error) => return self.fail_all(error),
        };
        let sampled = crate::runtime::keep_pool_awake(|| {
            logits.with_values(|values, vocab| self.sample(&plan, values, vocab))
        });
        match sampled {
            Ok(outcomes) => {
                let tokens = outcomes.iter().filter(|o| matches!(o, Some(Ok(_)))).count();
                self.gauges.metrics.step(count, tokens, started.elapsed());
                self.deliver(outcomes);
            }
            Err(error) => self.fail_all(error),
        }
    }

    /// Each sequence whose pending tokens all went through the model samples its next
    /// token from its row of `values` (`vocab` logits a row, one row per planned chunk);
    /// a prompt read in part is only marked fed (its logits predict a token the prompt
    /// already has). The sequences sample, detokenize and look for their stop strings in
    /// parallel over the pool: at 32 SmolLM2 streams that was 2 ms of a 30 ms step on the
    /// engine's thread while the other core waited. One outcome per planned sequence, in
    /// plan order; `None` where nothing was sampled.
    fn sample(&mut self, plan: &[usize], values: &[f32], vocab: usize) -> Vec<Option<Outcome>> {
        let backend = &self.backend;
        let mut work = Vec::new();
        let mut slot = 0;
        let mut row = 0;
        for running in &mut self.running {
            let Running {
                sequences, span, ..
            } = running;
            for sequence in sequences.iter_mut() {
                let take = plan.get(slot).copied().unwrap_or(0);
                slot += 1;
                if take == 0 {
                    continue;
                }
                // A missing row reads as none, which `advance` reports.
                let logits = values.get(row * vocab..(row + 1) * vocab).unwrap_or(&[]);
                row += 1;
                if take < sequence.pending.len() {
                    sequence.fed(take);
                    continue;
                }
                work.push((slot - 1, sequence, logits, &*span));
            }
        }
        let mut outcomes: Vec<Option<Outcome>> = (0..slot).map(|_| None).collect();
        let sampled: Vec<(usize, Outcome)> = work
            .into_par_iter()
            .map(|(slot, sequence, logits, span)| {
                let _entered = span.enter();
                (slot, sequence.advance(logits, backend))
            })
            .collect();
        for (slot, outcome) in sampled {
            outcomes[slot] = Some(outcome);
        }
        outcomes
    }

    /// Sends each sampled sequence's events to its request, in plan order (`outcomes` from
    /// [`Self::sample`]), and ends the requests whose choices all finished.
    fn deliver(&mut self, outcomes: Vec<Option<Outcome>>) {
        let mut outcomes = outcomes.into_iter();
        for running in &mut self.running {
            let of_running: Vec<Option<Outcome>> =
                outcomes.by_ref().take(running.sequences.len()).collect();
            if running.done {
                continue;
            }
            let _entered = running.span.clone().entered();
            if of_running.iter().any(|o| matches!(o, Some(Ok(_)))) {
                if let Some(arrived) = running.awaiting_first_token.take() {
                    self.gauges.metrics.first_token(arrived.elapsed());
                }
            }
            let mut failure = None;
            for outcome in of_running.into_iter().flatten() {
                match outcome {
                    Ok(events) => {
                        for event in events {
                            // A closed channel means the client left; the next
                            // iteration drops the request.
                            let _ = running.messages.send(EngineMessage::Event(event));
                        }
                    }
                    Err(error) => failure = Some(error),
                }
            }
            if let Some(error) = failure {
                running.fail(error);
                continue;
            }
            running.sequences.retain(|s| {
                if s.finished.is_some() {
                    running.finished_tokens += s.sampled;
                }
                s.finished.is_none()
            });
            if running.sequences.is_empty() {
                let completion_tokens = running.finished_tokens;
                drop(running.permits.take());
                running.send(GenerationEvent::Usage(Usage {
                    prompt_tokens: running.prompt_tokens,
                    completion_tokens,
                    total_tokens: running.prompt_tokens + completion_tokens,
                }));
                running.done = true;
            }
        }
    }

    /// A failed forward fails every running request (their caches may be half written).
    fn fail_all(&mut self, error: InferError) {
        tracing::error!(%error, "generation step failed");
        for running in &mut self.running {
            running.fail(error.clone());
        }
    }
}

/// What sampling one sequence gave: its events, or why it failed.
type Outcome = Result<Vec<GenerationEvent>, InferError>;

/// Groups requests by adapter: its address (the base's requests, `None`, first).
fn adapter_key(adapter: &Option<Arc<ServedAdapter>>) -> usize {
    adapter.as_ref().map_or(0, |a| Arc::as_ptr(a) as usize)
}
