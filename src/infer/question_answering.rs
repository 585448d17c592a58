//! `QaEngine`: one loaded extractive QA model on its own OS thread, behind an async
//! `answer`: the [`BatchEngine`] over the backend of `tasks::question_answering::serve`
//! (each round windows every queued question, runs the windows in shared forward passes
//! and answers every request).

use super::batch::BatchEngine;
use super::engine::EngineConfig;
use super::registry::Servable;
use super::InferError;
use crate::tasks::question_answering::serve::QaServing;
pub use crate::tasks::question_answering::serve::{QaBackend, QaQuestion};
pub use crate::tasks::question_answering::QaPrediction;

pub struct QaEngine {
    batch: BatchEngine<QaServing>,
}

impl QaEngine {
    pub fn spawn(
        name: &str,
        backend: Box<dyn QaBackend>,
        config: EngineConfig,
    ) -> Result<Self, InferError> {
        Ok(Self {
            batch: BatchEngine::spawn(name, QaServing(backend), config)?,
        })
    }

    /// Answers `questions` (non-empty) in one of the engine's rounds.
    pub async fn answer(
        &self,
        questions: Vec<QaQuestion>,
    ) -> Result<Vec<QaPrediction>, InferError> {
        self.batch.serve(questions).await
    }
}

impl Servable for QaEngine {
    fn parameter_bytes(&self) -> usize {
        self.batch.parameter_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::question_answering::QaWindow;
    use crate::tasks::serve::ServeError;

    /// Windows a question into one window per word of its context; answers with the
    /// context's first word and the number of windows seen in the round as the score.
    struct FakeBackend;

    impl QaBackend for FakeBackend {
        fn windows(&self, question: &str, context: &str) -> Result<Vec<QaWindow>, ServeError> {
            if question == "bad" {
                return Err(ServeError::invalid("question", "too long"));
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
        ) -> Result<Vec<QaPrediction>, ServeError> {
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
    async fn more_questions_than_the_whole_queue_are_refused() {
        let config = EngineConfig {
            max_batch_texts: 4,
            max_queued_texts: 2,
        };
        let engine = QaEngine::spawn("fake", Box::new(FakeBackend), config).expect("engine");
        let three = vec![question("q", "a"); 3];
        // They could never be admitted, so this is the client's error (400), not a 429
        // (the shared engine's full-queue 429 is tested in engine_tests).
        let refused = engine.answer(three).await;
        assert!(
            matches!(refused, Err(InferError::InvalidRequest { ref param, .. }) if param == "input"),
            "{refused:?}"
        );
        assert_eq!(
            engine
                .answer(vec![question("q", "a b")])
                .await
                .expect("fits")
                .len(),
            1
        );
    }
}
