//! `GenEngine`: one language model on its own OS thread, with continuous batching.
//!
//! Each loop iteration the thread (1) takes every newly queued request, (2) drops the
//! requests whose client went away, (3) admits waiting requests while the batch has
//! room (rendering and tokenizing their prompt; each choice becomes a sequence whose
//! first chunk is the whole prompt), and (4) makes ONE `step` call over every running
//! sequence: new ones prefill, the others feed their last token. Then every sequence
//! samples, and its events go to its request's channel. Long generations therefore
//! never hold back new requests for more than one step.
//!
//! The caches live in the sequences (owned by the request), never in the model, and are
//! freed as soon as a sequence finishes or its client disconnects. Dropping the
//! `GenEngine` closes the command channel; the thread finishes what is running (streams
//! keep the engine alive, so by then no client is left) and is joined.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::Rng;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::Span;

use super::sequence::{Sequence, SequenceSpec};
use super::stream::{EngineMessage, KeepAlive, MessageSender};
use super::{GenerationEvent, GenerationRequest, GenerationStream, LmBackend, Prompt, Usage};
use crate::infer::engine::thread_name;
use crate::infer::InferError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenEngineConfig {
    /// Most sequences advanced together in one step; more wait for room.
    pub max_batch_sequences: usize,
    /// Most sequences running or waiting; beyond it requests get `Overloaded` (429).
    pub max_queued_sequences: usize,
}

impl Default for GenEngineConfig {
    fn default() -> Self {
        Self {
            max_batch_sequences: 16,
            max_queued_sequences: 256,
        }
    }
}

struct GenerateCommand {
    request: GenerationRequest,
    /// The caller's span, entered while the engine works on this request.
    span: Span,
    /// Events for the caller; closed when its `GenerationStream` is dropped.
    messages: MessageSender,
    /// One per choice; returned to the engine's semaphore when the request ends.
    permits: OwnedSemaphorePermit,
}

pub struct GenEngine {
    name: String,
    /// To the engine thread. Unbounded, but every command holds permits of
    /// `queue_permits`, so at most `max_queued_sequences` choices are ever queued.
    /// `Drop` takes it to end the thread's loop.
    commands: Option<mpsc::UnboundedSender<GenerateCommand>>,
    /// One permit per choice queued or running; none free → `Overloaded`.
    queue_permits: Arc<Semaphore>,
    config: GenEngineConfig,
    context_len: usize,
    parameter_bytes: usize,
    /// Sequences the thread is running (written by the thread after each iteration).
    running: Arc<AtomicUsize>,
    /// Joined on drop, after the channel is closed.
    thread: Option<JoinHandle<()>>,
}

impl GenEngine {
    /// Starts the engine thread for `backend`.
    pub fn spawn<B: LmBackend>(
        name: &str,
        backend: B,
        config: GenEngineConfig,
    ) -> Result<Self, InferError> {
        let config = GenEngineConfig {
            max_batch_sequences: config.max_batch_sequences.max(1),
            max_queued_sequences: config.max_queued_sequences.clamp(1, Semaphore::MAX_PERMITS),
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        let running = Arc::new(AtomicUsize::new(0));
        let context_len = backend.context_len();
        let parameter_bytes = backend.parameter_bytes();
        let worker = Worker {
            backend,
            commands: receiver,
            waiting: VecDeque::new(),
            running: Vec::new(),
            max_batch: config.max_batch_sequences,
            running_gauge: running.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(thread_name(name))
            .spawn(move || worker.run())
            .map_err(|e| InferError::engine(format!("cannot start engine thread: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            commands: Some(sender),
            queue_permits: Arc::new(Semaphore::new(config.max_queued_sequences)),
            config,
            context_len,
            parameter_bytes,
            running,
            thread: Some(thread),
        })
    }

    pub fn context_len(&self) -> usize {
        self.context_len
    }

    pub fn parameter_bytes(&self) -> usize {
        self.parameter_bytes
    }

    /// Sequences being generated right now.
    pub fn running_sequences(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Queues `request` and waits until its prompt is accepted.
    pub async fn generate(
        &self,
        request: GenerationRequest,
    ) -> Result<GenerationStream, InferError> {
        self.generate_keeping(request, None).await
    }

    /// As `generate`; the stream also holds `keep_alive` (the loaded model) until dropped.
    pub(crate) async fn generate_keeping(
        &self,
        request: GenerationRequest,
        keep_alive: Option<KeepAlive>,
    ) -> Result<GenerationStream, InferError> {
        let n = request.params.n;
        let logprobs = request.params.logprobs.is_some();
        let messages = self.submit(request)?;
        GenerationStream::open(messages, n, logprobs, keep_alive).await
    }

    pub(super) fn submit(
        &self,
        request: GenerationRequest,
    ) -> Result<mpsc::UnboundedReceiver<EngineMessage>, InferError> {
        let n = request.params.n;
        let limit = self.config.max_queued_sequences;
        if n == 0 || n > limit {
            return Err(InferError::invalid(
                "n",
                format!("`n` must be between 1 and {limit}, got {n}"),
            ));
        }
        let permits = crate::infer::engine::admit(&self.queue_permits, n, &self.name, "n")?;
        let (messages, receiver) = mpsc::unbounded_channel();
        let command = GenerateCommand {
            request,
            span: Span::current(),
            messages,
            permits,
        };
        self.commands
            .as_ref()
            .expect("the sender is only taken in Drop. This is a bug.")
            .send(command)
            .map_err(|_| InferError::engine("engine thread stopped"))?;
        Ok(receiver)
    }
}

impl Drop for GenEngine {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(model = %self.name, "generation engine thread panicked");
            }
        }
    }
}

/// A request being generated: its sequences (one per unfinished choice) and channel.
struct Running<C> {
    messages: MessageSender,
    span: Span,
    /// Released just before the final event, so a client that got its answer can
    /// queue again at once.
    permits: Option<OwnedSemaphorePermit>,
    prompt_tokens: usize,
    sequences: Vec<Sequence<C>>,
    /// Tokens sampled by choices that already finished.
    finished_tokens: usize,
    /// Set when the request is over (answered or failed) and can be dropped.
    done: bool,
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

struct Worker<B: LmBackend> {
    backend: B,
    /// From `GenEngine::submit`; closed when the engine is dropped.
    commands: mpsc::UnboundedReceiver<GenerateCommand>,
    /// Accepted requests waiting for room in the batch, oldest first.
    waiting: VecDeque<GenerateCommand>,
    running: Vec<Running<B::Cache>>,
    max_batch: usize,
    running_gauge: Arc<AtomicUsize>,
}

impl<B: LmBackend> Worker<B> {
    fn run(mut self) {
        let mut open = true;
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                if !open {
                    return;
                }
                match self.commands.blocking_recv() {
                    Some(command) => self.waiting.push_back(command),
                    None => return,
                }
            }
            while open {
                match self.commands.try_recv() {
                    Ok(command) => self.waiting.push_back(command),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.running.retain(|r| !r.messages.is_closed());
            self.admit();
            if !self.running.is_empty() {
                self.step();
            }
            let sequences = self.running.iter().map(|r| r.sequences.len()).sum();
            self.running_gauge.store(sequences, Ordering::SeqCst);
        }
    }

    fn running_sequences(&self) -> usize {
        self.running.iter().map(|r| r.sequences.len()).sum()
    }

    /// Starts waiting requests, oldest first, while the batch has room; a request that
    /// alone exceeds the batch still starts when nothing else runs.
    fn admit(&mut self) {
        while let Some(next) = self.waiting.front() {
            let running = self.running_sequences();
            if running > 0 && running + next.request.params.n > self.max_batch {
                break;
            }
            let Some(command) = self.waiting.pop_front() else {
                break;
            };
            if command.messages.is_closed() {
                continue;
            }
            if let Some(running) = self.start(command) {
                self.running.push(running);
            }
        }
    }

    /// Renders and tokenizes the prompt and creates one sequence per choice; a prompt
    /// the model cannot take is answered with an error here.
    fn start(&mut self, command: GenerateCommand) -> Option<Running<B::Cache>> {
        let GenerateCommand {
            request,
            span,
            messages,
            permits,
        } = command;
        let _entered = span.enter();
        let prompt = match self.prompt_ids(&request.prompt) {
            Ok(ids) => ids,
            Err(error) => {
                let _ = messages.send(EngineMessage::Failed(error));
                return None;
            }
        };
        let params = &request.params;
        let room = self.backend.context_len() - prompt.len();
        let max_new = params.max_tokens.map_or(room, |m| m.min(room)).max(1);
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
                };
                Sequence::new(spec, self.backend.new_cache())
            })
            .collect();
        let prompt_tokens = prompt.len();
        let _ = messages.send(EngineMessage::Started { prompt_tokens });
        drop(_entered);
        Some(Running {
            messages,
            span,
            permits: Some(permits),
            prompt_tokens,
            sequences,
            finished_tokens: 0,
            done: false,
        })
    }

    fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, InferError> {
        let param = prompt.param();
        let text = match prompt {
            Prompt::Chat { messages, tools } => {
                self.backend.render_chat(messages, tools.as_ref())?
            }
            Prompt::Text(text) => text.clone(),
        };
        let ids = self.backend.encode(&text)?;
        if ids.is_empty() {
            return Err(InferError::invalid(
                param,
                format!("`{param}` must not be empty"),
            ));
        }
        let context = self.backend.context_len();
        if ids.len() >= context {
            return Err(InferError::invalid(
                param,
                format!(
                    "This model's maximum context length is {context} tokens. However, your \
                     {param} resulted in {} tokens, leaving no room for the completion.",
                    ids.len()
                ),
            ));
        }
        Ok(ids)
    }

    /// One forward step over every running sequence, then sampling and events.
    fn step(&mut self) {
        let mut chunks: Vec<(&[u32], &mut B::Cache)> = Vec::new();
        for running in &mut self.running {
            for sequence in &mut running.sequences {
                chunks.push((sequence.pending.as_slice(), &mut sequence.cache));
            }
        }
        let count = chunks.len();
        let _step_span = tracing::debug_span!("generate_step", sequences = count).entered();
        let outcome = self.backend.step(&mut chunks);
        drop(chunks);
        let rows = match outcome {
            Ok(rows) if rows.len() == count => rows,
            Ok(rows) => {
                let error = InferError::engine(format!(
                    "backend returned {} rows for {count} sequences",
                    rows.len()
                ));
                self.fail_all(error)
            }
            Err(error) => self.fail_all(error),
        };
        let mut rows = rows.into_iter();
        for running in &mut self.running {
            if running.done {
                continue;
            }
            let _entered = running.span.clone().entered();
            let mut failure = None;
            for sequence in &mut running.sequences {
                let Some(row) = rows.next() else { break };
                match sequence.advance(&row, &self.backend) {
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
        self.running.retain(|r| !r.done);
    }

    /// A failed forward fails every running request (their caches may be half
    /// written); returns no rows so the step ends.
    fn fail_all(&mut self, error: InferError) -> Vec<Vec<f32>> {
        tracing::error!(%error, "generation step failed");
        for running in &mut self.running {
            running.fail(error.clone());
        }
        Vec::new()
    }
}
