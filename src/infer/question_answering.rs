//! `QaEngine`: one loaded extractive QA model on its own OS thread, behind an async
//! `answer`. Like the classification engine: a bounded queue (429 when full), and each
//! round drains what is queued (up to `max_batch_texts` questions), cuts every question's
//! context into windows, runs them in batches of `max_batch_texts` windows and answers
//! every request. Dropping the engine closes the queue and joins the thread.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::Span;

use super::engine::{admit, thread_name, EngineConfig};
use super::registry::Servable;
use super::InferError;
use crate::tasks::question_answering::serve::QaServer;
pub use crate::tasks::question_answering::QaPrediction;
use crate::tasks::question_answering::QaWindow;

/// One question about one context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaQuestion {
    pub question: String,
    pub context: String,
}

/// The model side of a QA engine; runs only on the engine thread.
pub trait QaBackend: Send + 'static {
    /// The windows of one question (several for a long context).
    fn windows(&self, question: &str, context: &str) -> Result<Vec<QaWindow>, InferError>;
    /// One answer per context, from its windows (`question_of[i]`: the context of window
    /// `i`), `batch` windows per forward pass.
    fn answer(
        &mut self,
        contexts: &[&str],
        windows: &[QaWindow],
        question_of: &[usize],
        batch: usize,
    ) -> Result<Vec<QaPrediction>, InferError>;
    fn parameter_bytes(&self) -> usize;
}

impl QaBackend for QaServer {
    fn windows(&self, question: &str, context: &str) -> Result<Vec<QaWindow>, InferError> {
        QaServer::windows(self, question, context)
            .map_err(|e| InferError::invalid("question", e.to_string()))
    }

    fn answer(
        &mut self,
        contexts: &[&str],
        windows: &[QaWindow],
        question_of: &[usize],
        batch: usize,
    ) -> Result<Vec<QaPrediction>, InferError> {
        QaServer::answer(self, contexts, windows, question_of, batch).map_err(InferError::engine)
    }

    fn parameter_bytes(&self) -> usize {
        QaServer::parameter_bytes(self)
    }
}

struct QaCommand {
    questions: Vec<QaQuestion>,
    span: Span,
    reply: oneshot::Sender<Result<Vec<QaPrediction>, InferError>>,
    /// One per question; returned when the command is dropped after its reply.
    permits: OwnedSemaphorePermit,
}

pub struct QaEngine {
    name: String,
    /// `Drop` takes it, which closes the channel and ends the thread's loop.
    commands: Option<mpsc::Sender<QaCommand>>,
    queue_permits: Arc<Semaphore>,
    parameter_bytes: usize,
    thread: Option<JoinHandle<()>>,
}

impl QaEngine {
    pub fn spawn(
        name: &str,
        backend: Box<dyn QaBackend>,
        config: EngineConfig,
    ) -> Result<Self, InferError> {
        let max_batch = config.max_batch_texts.max(1);
        let max_queued = config.max_queued_texts.clamp(1, Semaphore::MAX_PERMITS);
        let (sender, receiver) = mpsc::channel(max_queued);
        let parameter_bytes = backend.parameter_bytes();
        let worker = QaWorker {
            backend,
            receiver,
            max_batch,
        };
        let thread = std::thread::Builder::new()
            .name(thread_name(name))
            .spawn(move || worker.run())
            .map_err(|e| InferError::engine(format!("cannot start engine thread: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            commands: Some(sender),
            queue_permits: Arc::new(Semaphore::new(max_queued)),
            parameter_bytes,
            thread: Some(thread),
        })
    }

    /// Answers `questions` (non-empty) in one of the engine's rounds.
    pub async fn answer(
        &self,
        questions: Vec<QaQuestion>,
    ) -> Result<Vec<QaPrediction>, InferError> {
        let permits = admit(&self.queue_permits, questions.len(), &self.name, "input")?;
        let (reply, answer) = oneshot::channel();
        let command = QaCommand {
            questions,
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

impl Servable for QaEngine {
    fn parameter_bytes(&self) -> usize {
        self.parameter_bytes
    }
}

impl Drop for QaEngine {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(model = %self.name, "QA engine thread panicked");
            }
        }
    }
}

struct QaWorker {
    backend: Box<dyn QaBackend>,
    receiver: mpsc::Receiver<QaCommand>,
    max_batch: usize,
}

impl QaWorker {
    fn run(mut self) {
        while let Some(first) = self.receiver.blocking_recv() {
            let mut queued = first.questions.len();
            let mut round = vec![first];
            while queued < self.max_batch {
                match self.receiver.try_recv() {
                    Ok(command) => {
                        queued += command.questions.len();
                        round.push(command);
                    }
                    Err(_) => break,
                }
            }
            self.serve(round);
        }
    }

    /// Windows every request's questions (a request whose question cannot be windowed
    /// fails alone), answers all of them in shared forward passes, replies to each.
    fn serve(&mut self, round: Vec<QaCommand>) {
        let mut replies: Vec<Option<Result<Vec<QaPrediction>, InferError>>> =
            (0..round.len()).map(|_| None).collect();
        let mut contexts: Vec<&str> = Vec::new();
        let mut windows: Vec<QaWindow> = Vec::new();
        let mut question_of: Vec<usize> = Vec::new();
        // For each request answered in this round: its index and its first question's slot.
        let mut served: Vec<(usize, usize)> = Vec::new();
        for (request, command) in round.iter().enumerate() {
            let _entered = command.span.enter();
            let mut mine = Vec::new();
            let windowed: Result<(), InferError> = command.questions.iter().try_for_each(|q| {
                mine.push(self.backend.windows(&q.question, &q.context)?);
                Ok(())
            });
            if let Err(error) = windowed {
                replies[request] = Some(Err(error));
                continue;
            }
            served.push((request, contexts.len()));
            for (question, question_windows) in command.questions.iter().zip(mine) {
                let slot = contexts.len();
                contexts.push(&question.context);
                question_of.extend(std::iter::repeat_n(slot, question_windows.len()));
                windows.extend(question_windows);
            }
        }
        if !served.is_empty() {
            let _span = tracing::debug_span!("qa_round", windows = windows.len()).entered();
            match self
                .backend
                .answer(&contexts, &windows, &question_of, self.max_batch)
            {
                Ok(answers) => {
                    for &(request, first) in &served {
                        let n = round[request].questions.len();
                        let mine = answers.get(first..first + n).map(<[_]>::to_vec);
                        replies[request] =
                            Some(mine.ok_or_else(|| InferError::engine("too few answers")));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "QA forward failed");
                    for &(request, _) in &served {
                        replies[request] = Some(Err(error.clone()));
                    }
                }
            }
        }
        for (command, reply) in round.into_iter().zip(replies) {
            let QaCommand {
                span,
                reply: sender,
                permits,
                ..
            } = command;
            let _entered = span.enter();
            let answer = reply.unwrap_or_else(|| Err(InferError::engine("question not answered")));
            drop(permits);
            // The caller may have gone away (client disconnected); nothing to do then.
            let _ = sender.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Windows a question into one window per word of its context; answers with the
    /// context's first word and the number of windows seen in the round as the score.
    struct FakeBackend;

    impl QaBackend for FakeBackend {
        fn windows(&self, question: &str, context: &str) -> Result<Vec<QaWindow>, InferError> {
            if question == "bad" {
                return Err(InferError::invalid("question", "too long"));
            }
            Ok(context
                .split_whitespace()
                .map(|_| QaWindow {
                    input_ids: vec![1],
                    type_ids: vec![0],
                    offsets: vec![(0, 0)],
                    sequence_ids: vec![None],
                    cls_index: 0,
                })
                .collect())
        }

        fn answer(
            &mut self,
            contexts: &[&str],
            windows: &[QaWindow],
            question_of: &[usize],
            _batch: usize,
        ) -> Result<Vec<QaPrediction>, InferError> {
            assert_eq!(windows.len(), question_of.len());
            Ok(contexts
                .iter()
                .enumerate()
                .map(|(i, context)| {
                    let word = context.split_whitespace().next().unwrap_or_default();
                    QaPrediction {
                        text: word.to_string(),
                        start: 0,
                        end: word.len(),
                        score: question_of.iter().filter(|&&q| q == i).count() as f32,
                    }
                })
                .collect())
        }

        fn parameter_bytes(&self) -> usize {
            7
        }
    }

    fn question(q: &str, c: &str) -> QaQuestion {
        QaQuestion {
            question: q.into(),
            context: c.into(),
        }
    }

    #[tokio::test]
    async fn answers_come_back_per_request_in_order_and_a_bad_request_fails_alone() {
        let engine = QaEngine::spawn("fake", Box::new(FakeBackend), EngineConfig::default())
            .expect("engine");
        assert_eq!(engine.parameter_bytes(), 7);
        let (good, bad) = tokio::join!(
            engine.answer(vec![question("q", "alpha beta"), question("q", "gamma")]),
            engine.answer(vec![question("bad", "delta")]),
        );
        let good = good.expect("answers");
        let texts: Vec<&str> = good.iter().map(|a| a.text.as_str()).collect();
        assert_eq!(texts, ["alpha", "gamma"]);
        // Each answer was made from its own question's windows (2 and 1).
        assert_eq!((good[0].score, good[1].score), (2.0, 1.0));
        assert_eq!(bad, Err(InferError::invalid("question", "too long")));
    }

    #[tokio::test]
    async fn a_full_queue_answers_overloaded() {
        let config = EngineConfig {
            max_batch_texts: 4,
            max_queued_texts: 2,
        };
        let engine = QaEngine::spawn("fake", Box::new(FakeBackend), config).expect("engine");
        let three = vec![question("q", "a"); 3];
        assert_eq!(engine.answer(three).await, Err(InferError::Overloaded));
    }
}
