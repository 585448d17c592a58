//! `BatchEngine`: one loaded model on its own OS thread, behind an async `serve`, for any
//! task's [`ServeBackend`] (classification, extractive QA, token classification).
//!
//! Requests travel to the thread over a bounded channel, each carrying the caller's
//! tracing span, a oneshot reply and the queue permits it holds (one per input; none free
//! → 429). The thread drains whatever is queued (up to `max_batch_texts` inputs) into one
//! round: every input is prepared under its request's span, the backend serves them all
//! in shared forward passes, and every request is answered (a failed input fails only its
//! request). Dropping the engine closes the channel; the thread finishes the round it is
//! serving, exits, and is joined.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::Span;

use super::engine::{admit, thread_name, EngineConfig};
use super::InferError;
use crate::tasks::serve::{ServeBackend, ServeError};

impl From<ServeError> for InferError {
    fn from(error: ServeError) -> Self {
        match error {
            ServeError::Invalid { param, message } => InferError::InvalidRequest { param, message },
            ServeError::Failed(detail) => InferError::Engine(detail),
        }
    }
}

type Reply<B> = Result<Vec<<B as ServeBackend>::Output>, InferError>;

struct Command<B: ServeBackend> {
    inputs: Vec<B::Input>,
    /// The caller's span, entered while this request is prepared and answered.
    span: Span,
    /// Answered exactly once by the engine thread; `serve` awaits it. If the engine
    /// stops first the sender drops and `serve` reports an engine error.
    reply: oneshot::Sender<Reply<B>>,
    /// Returned to the engine's semaphore just before the reply is sent, so a caller
    /// that got its answer can immediately queue again.
    permits: OwnedSemaphorePermit,
}

pub struct BatchEngine<B: ServeBackend> {
    name: String,
    /// Sending side of the engine thread's queue. Capacity equals the permit count and
    /// every command holds at least one permit, so `send` never waits. `Drop` takes it,
    /// which closes the channel and ends the thread's loop.
    commands: Option<mpsc::Sender<Command<B>>>,
    /// One permit per input queued or in flight.
    queue_permits: Arc<Semaphore>,
    config: EngineConfig,
    parameter_bytes: usize,
    /// Joined on drop, after the channel is closed.
    thread: Option<JoinHandle<()>>,
}

impl<B: ServeBackend> BatchEngine<B> {
    /// Starts the engine thread for `backend`.
    pub fn spawn(name: &str, backend: B, config: EngineConfig) -> Result<Self, InferError> {
        let config = EngineConfig {
            max_batch_texts: config.max_batch_texts.max(1),
            max_queued_texts: config.max_queued_texts.clamp(1, Semaphore::MAX_PERMITS),
        };
        let (sender, receiver) = mpsc::channel(config.max_queued_texts);
        let parameter_bytes = backend.parameter_bytes();
        let worker = Worker {
            backend,
            receiver,
            max_batch: config.max_batch_texts,
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
            parameter_bytes,
            thread: Some(thread),
        })
    }

    pub fn parameter_bytes(&self) -> usize {
        self.parameter_bytes
    }

    /// Serves `inputs` (already validated as non-empty) in one of the engine's rounds:
    /// one output per input, in order.
    pub async fn serve(&self, inputs: Vec<B::Input>) -> Result<Vec<B::Output>, InferError> {
        let limit = self.config.max_queued_texts;
        if inputs.len() > limit {
            return Err(InferError::invalid(
                "input",
                format!(
                    "`input` has {} items; at most {limit} are allowed",
                    inputs.len()
                ),
            ));
        }
        let permits = admit(&self.queue_permits, inputs.len(), &self.name, "input")?;
        let (reply, answer) = oneshot::channel();
        let command = Command {
            inputs,
            span: Span::current(),
            reply,
            permits,
        };
        let Some(commands) = self.commands.as_ref() else {
            return Err(InferError::engine("engine stopped"));
        };
        commands
            .send(command)
            .await
            .map_err(|_| InferError::engine("engine thread stopped"))?;
        answer
            .await
            .map_err(|_| InferError::engine("engine thread dropped the request"))?
    }
}

impl<B: ServeBackend> Drop for BatchEngine<B> {
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
struct Worker<B: ServeBackend> {
    backend: B,
    /// `None` from `blocking_recv` means the engine was dropped and the thread should end.
    receiver: mpsc::Receiver<Command<B>>,
    max_batch: usize,
}

impl<B: ServeBackend> Worker<B> {
    fn run(mut self) {
        while let Some(first) = self.receiver.blocking_recv() {
            let mut queued = first.inputs.len();
            let mut round = vec![first];
            while queued < self.max_batch {
                match self.receiver.try_recv() {
                    Ok(command) => {
                        queued += command.inputs.len();
                        round.push(command);
                    }
                    Err(_) => break,
                }
            }
            self.serve(round);
        }
    }

    /// Prepares every request's inputs (a request whose input fails is answered with that
    /// error alone), serves the others together, and answers each request.
    fn serve(&mut self, round: Vec<Command<B>>) {
        let prepared: Vec<Result<Vec<B::Prepared>, ServeError>> = round
            .iter()
            .map(|command| {
                let _entered = command.span.enter();
                command
                    .inputs
                    .iter()
                    .map(|input| self.backend.prepare(input))
                    .collect()
            })
            .collect();
        let pairs: Vec<(&B::Input, &B::Prepared)> = round
            .iter()
            .zip(&prepared)
            .filter_map(|(command, prepared)| {
                Some(command.inputs.iter().zip(prepared.as_ref().ok()?))
            })
            .flatten()
            .collect();
        let outputs = if pairs.is_empty() {
            Vec::new()
        } else {
            self.backend.serve_round(&pairs, self.max_batch)
        };
        let mut outputs = outputs.into_iter();
        let mut answers: Vec<Reply<B>> = Vec::with_capacity(round.len());
        for (command, prepared) in round.iter().zip(prepared) {
            let wanted = command.inputs.len();
            answers.push(match prepared {
                Err(error) => Err(error.into()),
                Ok(_) => {
                    // Taken whole before any error is looked at, so the next request's
                    // outputs start where this one's end.
                    let mine: Vec<Result<B::Output, ServeError>> =
                        outputs.by_ref().take(wanted).collect();
                    if mine.len() == wanted {
                        mine.into_iter()
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(InferError::from)
                    } else {
                        Err(InferError::engine("the backend answered too few inputs"))
                    }
                }
            });
        }
        for (command, answer) in round.into_iter().zip(answers) {
            let Command {
                span,
                reply,
                permits,
                ..
            } = command;
            let _entered = span.enter();
            drop(permits);
            // The caller may have gone away (client disconnected); nothing to do then.
            let _ = reply.send(answer);
        }
    }
}
