//! Serving a QA model: questions → windows → batched logits → one answer per question.
//! Synchronous; `infer` runs it on an engine thread and batches questions across requests.

use candle_core::Device;

use super::evaluate::{answers, window_logits};
use super::head::QuestionAnsweringModel;
use super::postprocess::{AnswerSettings, QaPrediction};
use super::windows::{QaTokenizer, QaWindow};
use crate::zoo::ZooError;

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
