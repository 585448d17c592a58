//! `TokenEngine`: one loaded token classifier (NER) on its own OS thread, behind an async
//! `tag`: the [`BatchEngine`] over `tasks::token_classification::serve::TokenTagger`
//! (texts of every queued request share length-sorted forward passes).

use super::batch::BatchEngine;
use super::engine::EngineConfig;
use super::registry::Servable;
use super::InferError;
pub use crate::tasks::token_classification::serve::{TextToTag, TokenTagger};
pub use crate::tasks::token_classification::{Aggregation, TokenEntity};

pub struct TokenEngine {
    batch: BatchEngine<TokenTagger>,
}

impl TokenEngine {
    pub fn spawn(
        name: &str,
        backend: TokenTagger,
        config: EngineConfig,
    ) -> Result<Self, InferError> {
        Ok(Self {
            batch: BatchEngine::spawn(name, backend, config)?,
        })
    }

    /// The entities of each text (non-empty), in one of the engine's rounds.
    pub async fn tag(&self, texts: Vec<TextToTag>) -> Result<Vec<Vec<TokenEntity>>, InferError> {
        self.batch.serve(texts).await
    }
}

impl Servable for TokenEngine {
    fn parameter_bytes(&self) -> usize {
        self.batch.parameter_bytes()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::infer::test_support::MapCatalog;
    use crate::infer::{
        ClassifierBackend, Engine, InferenceHandle, LoadedModel, ModelLoader, ServableModel,
    };
    use crate::tasks::serve::ServeError;
    use crate::tasks::token_classification::serve::tiny_tagger;

    /// Every text is `pos`.
    struct OneLabel(Vec<String>);

    impl ClassifierBackend for OneLabel {
        fn labels(&self) -> &[String] {
            &self.0
        }
        fn encode(&self, _text: &str) -> Result<Vec<u32>, ServeError> {
            Ok(vec![1])
        }
        fn logits(&mut self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, ServeError> {
            Ok(seqs.iter().map(|_| vec![1.0]).collect())
        }
        fn parameter_bytes(&self) -> usize {
            1
        }
    }

    /// `ner` is a tiny random token classifier, `clf` a classifier.
    struct Loader;

    impl ModelLoader<LoadedModel> for Loader {
        fn load(&self, model: &ServableModel) -> Result<LoadedModel, InferError> {
            let config = EngineConfig {
                max_batch_texts: 4,
                max_queued_texts: 3,
            };
            if model.name == "clf" {
                let backend = Box::new(OneLabel(vec!["pos".into()]));
                return Engine::spawn("clf", backend, config).map(LoadedModel::Classifier);
            }
            let labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"];
            let (dir, backend) = tiny_tagger(labels.map(String::from).to_vec(), 64);
            let engine = TokenEngine::spawn("ner", backend, config);
            // The weights are in memory; the directory is no longer needed.
            drop(dir);
            engine.map(LoadedModel::TokenClassifier)
        }
    }

    fn handle() -> InferenceHandle {
        let catalog = MapCatalog::with(&[("ner", PathBuf::new()), ("clf", PathBuf::new())]);
        InferenceHandle::with_loader(catalog, Arc::new(Loader), 1 << 30, CancellationToken::new())
    }

    #[tokio::test]
    async fn a_token_classifier_tags_and_models_of_other_kinds_are_refused() {
        let handle = handle();
        let texts = vec![
            "the movie was really great fun".to_string(),
            "bad film".into(),
        ];
        let grouped = handle
            .classify_tokens("ner", texts.clone(), Aggregation::Simple)
            .await
            .expect("tagged");
        let tokens = handle
            .classify_tokens("ner", texts.clone(), Aggregation::None)
            .await
            .expect("tagged");
        assert_eq!((grouped.len(), tokens.len()), (2, 2));
        assert!(grouped.iter().flatten().all(|e| e.index.is_none()));
        assert!(tokens.iter().flatten().all(|e| e.index.is_some()));
        assert!(
            tokens.iter().flatten().count() > 0,
            "a random head tags something"
        );
        assert_eq!(
            handle
                .classify_tokens("clf", texts.clone(), Aggregation::Simple)
                .await,
            Err(InferError::ModelNotFound("clf".into()))
        );
        let wrong = handle.classify("ner", texts.clone()).await;
        assert!(
            matches!(wrong, Err(InferError::InvalidRequest { ref param, ref message })
                if param == "model" && message.contains("/v1/token_classifications")),
            "{wrong:?}"
        );
        let empty = handle
            .classify_tokens("ner", vec![], Aggregation::Simple)
            .await;
        assert!(
            matches!(empty, Err(InferError::InvalidRequest { ref param, .. }) if param == "input")
        );
        // More texts than the engine's whole queue can never be admitted: a 400, not a 429.
        let four = vec!["fun".to_string(); 4];
        let too_many = handle
            .classify_tokens("ner", four, Aggregation::Simple)
            .await;
        assert!(
            matches!(too_many, Err(InferError::InvalidRequest { ref param, .. }) if param == "input")
        );
    }
}
