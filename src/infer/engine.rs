//! `Engine`: one loaded classifier on its own OS thread, behind an async `classify`.
//!
//! Requests travel to the thread over a bounded channel, each carrying the caller's
//! tracing span, a oneshot reply and the queue permits it holds. The thread drains
//! whatever is queued (up to `max_batch_texts` texts) into length-sorted forward passes,
//! then answers every request. Dropping the `Engine` closes the channel; the thread
//! finishes the round it is serving, exits, and is joined.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tracing::Span;

use super::registry::Servable;
use super::InferError;

/// One prediction per input text.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPrediction {
    /// The most probable label.
    pub label: String,
    /// The probability of `label`.
    pub score: f32,
    /// Every label with its probability, in label-id order; they sum to 1.
    pub scores: Vec<(String, f32)>,
}

/// The model side of an engine: tokenization and batched logits. Implemented by the
/// real checkpoint classifier and by test fakes; runs only on the engine thread.
pub trait ClassifierBackend: Send + 'static {
    /// Label names, id = index.
    fn labels(&self) -> &[String];
    /// Token ids, truncated to what the model was trained on.
    fn encode(&self, text: &str) -> Result<Vec<u32>, InferError>;
    /// Logits `[seqs.len()][labels.len()]` for one batch (eval mode).
    fn logits(&mut self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, InferError>;
    fn parameter_bytes(&self) -> usize;
}

/// Batching and back-pressure settings of one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Most texts in one forward pass (and roughly in one serving round).
    pub max_batch_texts: usize,
    /// Most texts queued or running at once; beyond it `classify` answers `Overloaded`.
    /// Also the most inputs one request may carry.
    pub max_queued_texts: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch_texts: 64,
            max_queued_texts: 1024,
        }
    }
}

struct ClassifyCommand {
    texts: Vec<String>,
    /// The caller's span, entered while this request is encoded and answered.
    span: Span,
    /// Answered exactly once by the engine thread; `classify` awaits it. If the engine
    /// stops first the sender drops and `classify` reports an engine error.
    reply: oneshot::Sender<Result<Vec<ClassPrediction>, InferError>>,
    /// Returned to the engine's semaphore just before the reply is sent, so a caller
    /// that got its answer can immediately queue again.
    permits: OwnedSemaphorePermit,
}

pub struct Engine {
    name: String,
    /// Sending side of the engine thread's queue, used by `classify`. Capacity equals
    /// the permit count and every command holds at least one permit, so `send` never
    /// waits. `Drop` takes it, which closes the channel and ends the thread's loop.
    commands: Option<mpsc::Sender<ClassifyCommand>>,
    /// One permit per text queued or in flight. `classify` try-acquires its texts'
    /// permits (none free → `Overloaded`, 429); they ride in the command and return
    /// when the thread drops it after replying.
    queue_permits: Arc<Semaphore>,
    config: EngineConfig,
    labels: Vec<String>,
    parameter_bytes: usize,
    /// Joined on drop, after the channel is closed.
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the engine thread for `backend`.
    pub fn spawn(
        name: &str,
        backend: Box<dyn ClassifierBackend>,
        config: EngineConfig,
    ) -> Result<Self, InferError> {
        let config = EngineConfig {
            max_batch_texts: config.max_batch_texts.max(1),
            max_queued_texts: config.max_queued_texts.clamp(1, Semaphore::MAX_PERMITS),
        };
        let (sender, receiver) = mpsc::channel(config.max_queued_texts);
        let labels = backend.labels().to_vec();
        let parameter_bytes = backend.parameter_bytes();
        let worker = EngineWorker {
            backend,
            receiver,
            max_batch_texts: config.max_batch_texts,
        };
        let thread = std::thread::Builder::new()
            .name(thread_name(name))
            .spawn(move || worker.run())
            .map_err(|e| InferError::engine(format!("cannot start engine thread: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            commands: Some(sender),
            queue_permits: Arc::new(Semaphore::new(config.max_queued_texts)),
            config,
            labels,
            parameter_bytes,
            thread: Some(thread),
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Classifies `texts` (already validated as non-empty) in one of the engine's batches.
    pub async fn classify(&self, texts: Vec<String>) -> Result<Vec<ClassPrediction>, InferError> {
        let limit = self.config.max_queued_texts;
        if texts.len() > limit {
            return Err(InferError::invalid(
                "input",
                format!(
                    "`input` has {} items; at most {limit} are allowed",
                    texts.len()
                ),
            ));
        }
        let permits = admit(&self.queue_permits, texts.len(), &self.name, "input")?;
        let (reply, answer) = oneshot::channel();
        let command = ClassifyCommand {
            texts,
            span: Span::current(),
            reply,
            permits,
        };
        let commands = self
            .commands
            .as_ref()
            .expect("the sender is only taken in Drop. This is a bug.");
        commands
            .send(command)
            .await
            .map_err(|_| InferError::engine("engine thread stopped"))?;
        answer
            .await
            .map_err(|_| InferError::engine("engine thread dropped the request"))?
    }
}

impl Servable for Engine {
    fn parameter_bytes(&self) -> usize {
        self.parameter_bytes
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the channel ends the worker's receive loop once the queue is drained.
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(model = %self.name, "engine thread panicked");
            }
        }
    }
}

/// The engine thread's state: the model and the receiving end of the queue.
struct EngineWorker {
    backend: Box<dyn ClassifierBackend>,
    /// Commands from `Engine::classify`; `None` from `blocking_recv` means the engine
    /// was dropped and the thread should end.
    receiver: mpsc::Receiver<ClassifyCommand>,
    max_batch_texts: usize,
}

impl EngineWorker {
    fn run(mut self) {
        while let Some(first) = self.receiver.blocking_recv() {
            let mut queued = first.texts.len();
            let mut round = vec![first];
            while queued < self.max_batch_texts {
                match self.receiver.try_recv() {
                    Ok(command) => {
                        queued += command.texts.len();
                        round.push(command);
                    }
                    Err(_) => break,
                }
            }
            self.serve(round);
        }
    }

    /// Encodes every request, runs length-sorted forward passes over all their texts,
    /// and answers each request (a failure answers only the requests it touched).
    fn serve(&mut self, round: Vec<ClassifyCommand>) {
        let encoded = self.encode_round(&round);
        let mut scored: Vec<Result<Vec<Option<Vec<f32>>>, InferError>> = encoded
            .iter()
            .map(|ids| {
                ids.as_ref()
                    .map(|ids| vec![None; ids.len()])
                    .map_err(Clone::clone)
            })
            .collect();
        let texts: Vec<(TextRef, &[u32])> = encoded
            .iter()
            .enumerate()
            .filter_map(|(request, ids)| Some((request, ids.as_ref().ok()?)))
            .flat_map(|(request, ids)| {
                ids.iter()
                    .enumerate()
                    .map(move |(text, ids)| (TextRef { request, text }, ids.as_slice()))
            })
            .collect();
        let lengths: Vec<usize> = texts.iter().map(|(_, ids)| ids.len()).collect();
        let _round_span = tracing::debug_span!("classify_round", texts = texts.len()).entered();
        for batch in plan_batches(&lengths, self.max_batch_texts) {
            let seqs: Vec<&[u32]> = batch.iter().map(|&i| texts[i].1).collect();
            match self.forward(&seqs) {
                Ok(rows) => {
                    for (&i, row) in batch.iter().zip(rows) {
                        let at = texts[i].0;
                        if let Ok(slots) = &mut scored[at.request] {
                            slots[at.text] = Some(row);
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "classifier forward failed");
                    for &i in &batch {
                        scored[texts[i].0.request] = Err(error.clone());
                    }
                }
            }
        }
        self.reply(round, scored);
    }

    /// Token ids per request, tokenized under the caller's span.
    fn encode_round(&self, round: &[ClassifyCommand]) -> Vec<Result<Vec<Vec<u32>>, InferError>> {
        round
            .iter()
            .map(|command| {
                let _entered = command.span.enter();
                command
                    .texts
                    .iter()
                    .map(|text| self.backend.encode(text))
                    .collect()
            })
            .collect()
    }

    fn forward(&mut self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, InferError> {
        let rows = self.backend.logits(seqs)?;
        if rows.len() != seqs.len() {
            return Err(InferError::engine(format!(
                "backend returned {} rows for {} texts",
                rows.len(),
                seqs.len()
            )));
        }
        Ok(rows)
    }

    fn reply(
        &self,
        round: Vec<ClassifyCommand>,
        scored: Vec<Result<Vec<Option<Vec<f32>>>, InferError>>,
    ) {
        for (command, rows) in round.into_iter().zip(scored) {
            let ClassifyCommand {
                span,
                reply,
                permits,
                ..
            } = command;
            let _entered = span.enter();
            let answer = rows.and_then(|rows| {
                rows.into_iter()
                    .map(|row| {
                        let row = row.ok_or_else(|| InferError::engine("text was not scored"))?;
                        prediction(self.backend.labels(), &row)
                    })
                    .collect()
            });
            drop(permits);
            // The caller may have gone away (client disconnected); nothing to do then.
            let _ = reply.send(answer);
        }
    }
}

/// `infer-<model>` with only characters every platform accepts in a thread name
/// (model names come from the catalog and may hold anything).
pub(crate) fn thread_name(model: &str) -> String {
    let safe: String = model
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    format!("infer-{safe}")
}

/// One text of one request in a serving round.
#[derive(Debug, Clone, Copy)]
struct TextRef {
    request: usize,
    text: usize,
}

/// Groups texts (by index into `lengths`) into forward passes of at most `max_batch`,
/// shortest first, so texts of similar length share a batch and padding stays small.
pub(crate) fn plan_batches(lengths: &[usize], max_batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    order
        .chunks(max_batch.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Softmax (in f64, so the probabilities sum to 1 well within f32 precision) and argmax.
pub(crate) fn prediction(labels: &[String], logits: &[f32]) -> Result<ClassPrediction, InferError> {
    if logits.len() != labels.len() || labels.is_empty() {
        return Err(InferError::engine(format!(
            "model returned {} logits for {} labels",
            logits.len(),
            labels.len()
        )));
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    let probs: Vec<f32> = exps.iter().map(|e| (e / total) as f32).collect();
    let mut best = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > probs[best] {
            best = i;
        }
    }
    Ok(ClassPrediction {
        label: labels[best].clone(),
        score: probs[best],
        scores: labels.iter().cloned().zip(probs).collect(),
    })
}

/// Takes `wanted` places in an engine's bounded queue, or answers 429 at once: a full
/// queue must push back on clients, not grow without bound. Shared by the classification
/// and generation engines; `param` names the request field that counts the places.
pub(crate) fn admit(
    queue: &Arc<Semaphore>,
    wanted: usize,
    model: &str,
    param: &str,
) -> Result<OwnedSemaphorePermit, InferError> {
    let wanted = u32::try_from(wanted)
        .map_err(|_| InferError::invalid(param, format!("`{param}` is too large")))?;
    match queue.clone().try_acquire_many_owned(wanted) {
        Ok(permits) => Ok(permits),
        Err(TryAcquireError::NoPermits) => {
            tracing::warn!(model = %model, "engine queue full");
            Err(InferError::Overloaded)
        }
        Err(TryAcquireError::Closed) => Err(InferError::engine("engine stopped")),
    }
}
