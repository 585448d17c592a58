//! `GenEngine`: one language model on its own OS thread, with continuous batching.
//!
//! A request's prompt is rendered and tokenized on a blocking thread of the caller's side
//! (`PromptEncoder`), after it got its place in the queue, so the engine thread only ever
//! sees token ids. Each loop iteration the thread (1) takes every newly queued request and
//! checks it against the context and the KV budget (`admission`: a request that can never
//! run is answered with a 400 at once), (2) drops
//! the requests whose client went away, (3) starts waiting requests, oldest first, while
//! the batch has room and their worst-case caches fit in what the running ones left of
//! the KV budget (each choice becomes a sequence whose first chunk is the whole prompt),
//! and (4) makes ONE `step` call over every running sequence: new ones prefill, the
//! others feed their last token. Then every sequence samples, and its events go to its
//! request's channel. Long generations therefore never hold back new requests for more
//! than one step.
//!
//! The caches live in the sequences (owned by the request), never in the model, and are
//! freed as soon as a sequence finishes or its client disconnects; the freed memory is
//! then handed back to the OS (`runtime::release_free_memory`) once enough was freed or
//! the engine goes idle. Dropping the `GenEngine` closes the command channel; the thread
//! finishes what is running (streams keep the engine alive, so by then no client is
//! left) and is joined.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::Span;

use super::admission::{default_kv_budget, Limits};
use super::stream::{EngineMessage, KeepAlive};
use super::worker::{EngineGauges, GenerateCommand, Worker};
use super::{GenerationParams, GenerationRequest, GenerationStream, LmBackend, PromptEncoder};
use crate::config::ServeDtype;
use crate::infer::engine::thread_name;
use crate::infer::InferError;
use crate::telemetry::metrics::GenerationMetrics;
use crate::zoo::decoder::ServedAdapter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenEngineConfig {
    /// Most sequences advanced together in one step; more wait for room.
    pub max_batch_sequences: usize,
    /// Most sequences running or waiting; beyond it requests get `Overloaded` (429).
    pub max_queued_sequences: usize,
    /// Most prompt tokens one step feeds through the model; longer prompts (or several
    /// new ones) are read over several steps while the running sequences keep decoding.
    pub prefill_chunk_tokens: usize,
    /// Bytes of KV cache the running sequences may hold together, each reserved at its
    /// worst case (prompt + max new tokens); `None`: `admission::default_kv_budget`.
    pub kv_cache_bytes: Option<usize>,
    /// How the layers' projections are stored (`--serve-dtype`), unless a model's name
    /// asks for another format.
    pub serve_dtype: ServeDtype,
}

impl Default for GenEngineConfig {
    fn default() -> Self {
        Self {
            max_batch_sequences: crate::config::DEFAULT_MAX_BATCH_SEQUENCES,
            max_queued_sequences: crate::config::DEFAULT_MAX_QUEUED_SEQUENCES,
            prefill_chunk_tokens: crate::config::DEFAULT_PREFILL_CHUNK_TOKENS,
            kv_cache_bytes: None,
            serve_dtype: ServeDtype::Auto,
        }
    }
}

pub struct GenEngine {
    name: String,
    /// To the engine thread. Unbounded, but every command holds permits of
    /// `queue_permits`, so at most `max_queued_sequences` choices are ever queued.
    /// `Drop` takes it to end the thread's loop.
    commands: Option<mpsc::UnboundedSender<GenerateCommand>>,
    /// One permit per choice queued or running; none free → `Overloaded`.
    queue_permits: Arc<Semaphore>,
    /// Renders and tokenizes prompts on the callers' side.
    prompts: Arc<dyn PromptEncoder>,
    config: GenEngineConfig,
    context_len: usize,
    /// Rows of the model's logits: token ids a `logit_bias` may name.
    vocab_size: usize,
    kv_budget_bytes: usize,
    parameter_bytes: usize,
    /// Sequences the thread is running (written by the thread after each iteration).
    running: Arc<AtomicUsize>,
    /// Joined on drop, after the channel is closed.
    thread: Option<JoinHandle<()>>,
}

impl GenEngine {
    /// Starts the engine thread for `backend`, recording into metrics no registry holds.
    pub fn spawn<B: LmBackend>(
        name: &str,
        backend: B,
        config: GenEngineConfig,
    ) -> Result<Self, InferError> {
        Self::spawn_recorded(name, backend, config, &GenerationMetrics::default())
    }

    /// Starts the engine thread for `backend`; its steps are recorded in `metrics`.
    pub fn spawn_recorded<B: LmBackend>(
        name: &str,
        backend: B,
        config: GenEngineConfig,
        metrics: &GenerationMetrics,
    ) -> Result<Self, InferError> {
        let max_batch = config.max_batch_sequences.max(1);
        let context_len = backend.context_len();
        let kv_budget_bytes = config
            .kv_cache_bytes
            .unwrap_or_else(|| default_kv_budget(backend.kv_cache_bytes(context_len), max_batch));
        let config = GenEngineConfig {
            max_batch_sequences: max_batch,
            max_queued_sequences: config.max_queued_sequences.clamp(1, Semaphore::MAX_PERMITS),
            kv_cache_bytes: Some(kv_budget_bytes),
            ..config
        };
        tracing::info!(model = %name, context_len, kv_budget_bytes, "generation engine started");
        let (sender, receiver) = mpsc::unbounded_channel();
        let running = Arc::new(AtomicUsize::new(0));
        let parameter_bytes = backend.parameter_bytes();
        let vocab_size = backend.vocab_size();
        let prompts = backend.prompt_encoder();
        let limits = Limits {
            context_len,
            kv_budget_bytes,
        };
        let worker = Worker::new(
            backend,
            receiver,
            max_batch,
            config.prefill_chunk_tokens,
            limits,
            EngineGauges {
                running: running.clone(),
                metrics: metrics.engine(name),
            },
        );
        let thread = std::thread::Builder::new()
            .name(thread_name(name))
            // The engine's thread is one of the threads its step's products split over
            // (`runtime::on_own_pool`): driven from outside the pool, each product parked it
            // and woke two more on two cores. SmolLM2 bf16 on 2 cores (bench/run_serving.sh):
            // 42 / 199 / 368 tokens/s at 1 / 8 / 32 streams before, 53 / 227 / 444 after.
            .spawn(move || crate::runtime::on_own_pool(|| worker.run()))
            .map_err(|e| InferError::engine(format!("cannot start engine thread: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            commands: Some(sender),
            queue_permits: Arc::new(Semaphore::new(config.max_queued_sequences)),
            prompts,
            config,
            context_len,
            vocab_size,
            kv_budget_bytes,
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

    /// Bytes of KV cache the running sequences may hold together.
    pub fn kv_budget_bytes(&self) -> usize {
        self.kv_budget_bytes
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
        self.generate_keeping(request, None, None).await
    }

    /// As `generate`, with `adapter` (a LoRA adapter of this engine's model, on its
    /// device) added to the model for this request.
    pub async fn generate_with_adapter(
        &self,
        request: GenerationRequest,
        adapter: Arc<ServedAdapter>,
    ) -> Result<GenerationStream, InferError> {
        self.generate_keeping(request, Some(adapter), None).await
    }

    /// As `generate`, with `adapter` (a LoRA adapter of this engine's model, on its
    /// device) added to the model for this request; the stream also holds `keep_alive`
    /// (the loaded model) until dropped.
    pub(crate) async fn generate_keeping(
        &self,
        request: GenerationRequest,
        adapter: Option<Arc<ServedAdapter>>,
        keep_alive: Option<KeepAlive>,
    ) -> Result<GenerationStream, InferError> {
        let arrived = Instant::now();
        let n = request.params.n;
        let logprobs = request.params.logprobs.is_some();
        self.check_bias(&request.params)?;
        // The place in the queue first: a refused request (429) costs no tokenizing, and at
        // most the queue's length of prompts are tokenized at once.
        let permits = self.reserve(n)?;
        // Rendering and tokenizing a long prompt takes milliseconds: on a blocking thread,
        // not on the runtime and not on the engine thread that decodes the running batch.
        let prompts = self.prompts.clone();
        let span = Span::current();
        let (request, prompt) = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let prompt = prompts.prompt_ids(&request.prompt);
            (request, prompt)
        })
        .await
        .map_err(|e| InferError::engine(format!("tokenizing the prompt panicked: {e}")))?;
        let messages = self.send(request, (prompt?, arrived), adapter, permits)?;
        GenerationStream::open(messages, n, logprobs, keep_alive).await
    }

    /// Queues `request` with its prompt tokenized on this thread (tests).
    #[cfg(test)]
    pub(super) fn submit(
        &self,
        request: GenerationRequest,
        adapter: Option<Arc<ServedAdapter>>,
    ) -> Result<mpsc::UnboundedReceiver<EngineMessage>, InferError> {
        self.check_bias(&request.params)?;
        let permits = self.reserve(request.params.n)?;
        let prompt = self.prompts.prompt_ids(&request.prompt)?;
        self.send(request, (prompt, Instant::now()), adapter, permits)
    }

    /// A `logit_bias` may only name tokens of this model's vocabulary.
    fn check_bias(&self, params: &GenerationParams) -> Result<(), InferError> {
        match params
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= self.vocab_size)
        {
            Some((id, _)) => Err(InferError::invalid(
                "logit_bias",
                format!(
                    "`logit_bias` names token {id}, but this model's vocabulary has {} tokens.",
                    self.vocab_size
                ),
            )),
            None => Ok(()),
        }
    }

    /// A place in the queue for `n` choices; `Overloaded` (429) when it is full.
    fn reserve(&self, n: usize) -> Result<OwnedSemaphorePermit, InferError> {
        let limit = self.config.max_queued_sequences;
        if n == 0 || n > limit {
            return Err(InferError::invalid(
                "n",
                format!("`n` must be between 1 and {limit}, got {n}"),
            ));
        }
        crate::infer::engine::admit(&self.queue_permits, n, &self.name, "n")
    }

    /// Hands a tokenized request (its prompt and when it arrived), holding its place in
    /// the queue, to the engine thread.
    fn send(
        &self,
        request: GenerationRequest,
        (prompt, arrived): (Vec<u32>, Instant),
        adapter: Option<Arc<ServedAdapter>>,
        permits: OwnedSemaphorePermit,
    ) -> Result<mpsc::UnboundedReceiver<EngineMessage>, InferError> {
        let (messages, receiver) = mpsc::unbounded_channel();
        let command = GenerateCommand {
            request,
            prompt,
            adapter,
            span: Span::current(),
            messages,
            permits,
            arrived,
        };
        // The sender is only taken in `Drop`, so it is always here while `self` is.
        self.commands
            .as_ref()
            .ok_or_else(|| InferError::engine("engine thread stopped"))?
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
