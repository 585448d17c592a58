//! Serving a QA model: questions → windows → batched logits → one answer per question.
//! Synchronous; `infer` runs it on an engine thread and batches questions across requests.
//! A round windows every question of every queued request, runs the windows in shared
//! forward passes and answers each question from its own windows.

use candle_core::Device;

use super::evaluate::{answers, window_logits};
use super::head::QuestionAnsweringModel;
use super::postprocess::{AnswerSettings, QaPrediction};
use super::windows::{QaTokenizer, QaWindow};
use crate::tasks::serve::{ServeBackend, ServeError};
use crate::zoo::ZooError;

/// One question about one context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaQuestion {
    pub question: String,
    pub context: String,
}

/// The model side of a QA engine: [`QaServer`], or a test fake.
pub trait QaBackend: Send + 'static {
    /// The windows of one question (several for a long context).
    fn windows(&self, question: &str, context: &str) -> Result<Vec<QaWindow>, ServeError>;
    /// One answer per context, from its windows (`question_of[i]`: the context of window
    /// `i`), `batch` windows per forward pass.
    fn answer(
        &mut self,
        contexts: &[&str],
        windows: &[QaWindow],
        question_of: &[usize],
        batch: usize,
    ) -> Result<Vec<QaPrediction>, ServeError>;
    fn parameter_bytes(&self) -> usize;
}

/// A [`QaBackend`] as the batched engine drives it (a struct, not the box: see
/// `ClassifierServing`).
pub struct QaServing(pub Box<dyn QaBackend>);

impl ServeBackend for QaServing {
    type Input = QaQuestion;
    type Prepared = Vec<QaWindow>;
    type Output = QaPrediction;

    fn prepare(&self, question: &QaQuestion) -> Result<Vec<QaWindow>, ServeError> {
        self.0.windows(&question.question, &question.context)
    }

    fn serve_round(
        &mut self,
        round: &[(&QaQuestion, &Vec<QaWindow>)],
        max_batch: usize,
    ) -> Vec<Result<QaPrediction, ServeError>> {
        let contexts: Vec<&str> = round.iter().map(|(q, _)| q.context.as_str()).collect();
        let mut windows = Vec::new();
        let mut question_of = Vec::new();
        for (slot, (_, question_windows)) in round.iter().enumerate() {
            question_of.extend(std::iter::repeat_n(slot, question_windows.len()));
            windows.extend(question_windows.iter().cloned());
        }
        let _span = tracing::debug_span!("qa_round", windows = windows.len()).entered();
        let answers = self
            .0
            .answer(&contexts, &windows, &question_of, max_batch)
            .and_then(|answers| {
                if answers.len() == round.len() {
                    Ok(answers)
                } else {
                    Err(ServeError::failed(format!(
                        "{} answers for {} questions",
                        answers.len(),
                        round.len()
                    )))
                }
            });
        match answers {
            Ok(answers) => answers.into_iter().map(Ok).collect(),
            Err(error) => {
                tracing::error!(%error, "QA forward failed");
                round.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }

    fn parameter_bytes(&self) -> usize {
        self.0.parameter_bytes()
    }
}

/// A loaded QA model with its tokenizer and answer rules.
pub struct QaServer {
    model: QuestionAnsweringModel,
    tokenizer: QaTokenizer,
    pad_id: u32,
    settings: AnswerSettings,
    device: Device,
}

impl QaServer {
    pub fn new(
        model: QuestionAnsweringModel,
        tokenizer: QaTokenizer,
        pad_id: u32,
        settings: AnswerSettings,
        device: Device,
    ) -> Self {
        Self {
            model,
            tokenizer,
            pad_id,
            settings,
            device,
        }
    }

    /// The windows of one question (a long context gives several).
    pub fn windows(&self, question: &str, context: &str) -> Result<Vec<QaWindow>, ZooError> {
        self.tokenizer.windows(question, context)
    }

    /// Answers the questions (given by their contexts) whose windows are `windows`
    /// (`question_of[i]`: the question of window `i`), `batch_size` windows per forward pass.
    pub fn answer(
        &self,
        contexts: &[&str],
        windows: &[QaWindow],
        question_of: &[usize],
        batch_size: usize,
    ) -> Result<Vec<QaPrediction>, ZooError> {
        let (logits, _) = window_logits(
            &self.model,
            windows,
            None,
            batch_size,
            self.pad_id,
            &self.device,
        )?;
        Ok(answers(
            contexts,
            windows,
            question_of,
            &logits,
            &self.settings,
        ))
    }

    pub fn parameter_bytes(&self) -> usize {
        self.model.parameter_bytes()
    }
}

impl QaBackend for QaServer {
    fn windows(&self, question: &str, context: &str) -> Result<Vec<QaWindow>, ServeError> {
        QaServer::windows(self, question, context)
            .map_err(|e| ServeError::invalid("question", e.to_string()))
    }

    fn answer(
        &mut self,
        contexts: &[&str],
        windows: &[QaWindow],
        question_of: &[usize],
        batch: usize,
    ) -> Result<Vec<QaPrediction>, ServeError> {
        QaServer::answer(self, contexts, windows, question_of, batch).map_err(ServeError::failed)
    }

    fn parameter_bytes(&self) -> usize {
        QaServer::parameter_bytes(self)
    }
}
