//! The task requests of [`InferenceHandle`] besides generation: text and image
//! classification (a fine-tuned classifier, or a LoRA one over its shared base encoder),
//! token classification, extractive QA. Each finds the engine through the registries and
//! answers a 400 when the model is of another kind.

use super::adapters::{AdapterWeights, LoadedAdapter};
use super::{
    release_off_runtime, Aggregation, ClassPrediction, InferError, InferenceHandle, LoadedModel,
    QaPrediction, QaQuestion, TextToTag, TokenEntity,
};

impl InferenceHandle {
    /// Classifies each input with `model`: per input the argmax label, its probability
    /// and every label's probability. Texts longer than the model's training length are
    /// truncated.
    pub async fn classify(
        &self,
        model: &str,
        inputs: Vec<String>,
    ) -> Result<Vec<ClassPrediction>, InferError> {
        validate_inputs(&inputs)?;
        let (loaded, adapter) = self.engine_and_adapter(model).await?;
        let answer = match loaded.as_ref() {
            LoadedModel::Classifier(engine) => engine.classify(inputs).await,
            LoadedModel::SharedEncoder(engine) => match adapter.as_deref() {
                Some(LoadedAdapter {
                    weights: AdapterWeights::Classifier(adapter),
                    ..
                }) => engine.classify(inputs, adapter.clone()).await,
                Some(_) => Err(InferError::engine(format!(
                    "`{model}` is not a classification adapter of its base"
                ))),
                None => Err(InferError::invalid(
                    "model",
                    format!("`{model}` is a base encoder without a classification head; fine-tune it for sequence_classification and use the fine-tuned model"),
                )),
            },
            LoadedModel::Generator(_) => Err(InferError::invalid(
                "model",
                format!("`{model}` is a text generation model; use /v1/chat/completions or /v1/completions"),
            )),
            LoadedModel::QuestionAnswerer(_) => Err(wrong_kind_qa(model)),
            LoadedModel::TokenClassifier(_) => Err(wrong_kind_token(model)),
            LoadedModel::ImageClassifier(_) => Err(InferError::invalid(
                "input",
                format!("`{model}` classifies images; send each input as {{\"type\": \"image_url\", \"image_url\": {{\"url\": \"data:image/png;base64,…\"}}}}"),
            )),
        };
        release_off_runtime(loaded);
        answer
    }

    /// Classifies each image (the file's bytes) with `model`, an image classifier: the
    /// same predictions as [`InferenceHandle::classify`] gives for texts.
    pub async fn classify_images(
        &self,
        model: &str,
        images: Vec<Vec<u8>>,
    ) -> Result<Vec<ClassPrediction>, InferError> {
        if images.is_empty() {
            return Err(InferError::invalid(
                "input",
                "`input` must contain at least one image",
            ));
        }
        let loaded = self.registry.get(model).await?;
        let answer = match loaded.as_ref() {
            LoadedModel::ImageClassifier(engine) => engine.classify(images).await,
            LoadedModel::Classifier(_) => Err(InferError::invalid(
                "input",
                format!("`{model}` classifies texts; send the inputs as strings"),
            )),
            LoadedModel::Generator(_)
            | LoadedModel::QuestionAnswerer(_)
            | LoadedModel::TokenClassifier(_)
            | LoadedModel::SharedEncoder(_) => Err(InferError::invalid(
                "model",
                format!("`{model}` is not an image classifier"),
            )),
        };
        release_off_runtime(loaded);
        answer
    }

    /// The entities of each text with `model`, a token classifier (NER), aggregated as
    /// transformers' token-classification pipeline does; character offsets into the text.
    /// Texts longer than the model's training length are truncated. Any other kind of
    /// model is not found here (404 `model_not_found`).
    pub async fn classify_tokens(
        &self,
        model: &str,
        inputs: Vec<String>,
        aggregation: Aggregation,
    ) -> Result<Vec<Vec<TokenEntity>>, InferError> {
        validate_inputs(&inputs)?;
        let loaded = self.registry.get(model).await?;
        let answer = match loaded.as_ref() {
            LoadedModel::TokenClassifier(engine) => {
                let texts = inputs
                    .into_iter()
                    .map(|text| TextToTag { text, aggregation })
                    .collect();
                engine.tag(texts).await
            }
            LoadedModel::Classifier(_)
            | LoadedModel::Generator(_)
            | LoadedModel::QuestionAnswerer(_)
            | LoadedModel::ImageClassifier(_)
            | LoadedModel::SharedEncoder(_) => Err(InferError::ModelNotFound(model.to_string())),
        };
        release_off_runtime(loaded);
        answer
    }

    /// Answers each question from its context with `model`, an extractive QA model: the
    /// best span (character offsets) and its score; "" when the model says the context has
    /// no answer. Any other kind of model is not found here (404 `model_not_found`).
    pub async fn answer_questions(
        &self,
        model: &str,
        questions: Vec<QaQuestion>,
    ) -> Result<Vec<QaPrediction>, InferError> {
        if questions.is_empty() {
            return Err(InferError::invalid(
                "input",
                "`input` must contain at least one question",
            ));
        }
        let loaded = self.registry.get(model).await?;
        let answer = match loaded.as_ref() {
            LoadedModel::QuestionAnswerer(engine) => engine.answer(questions).await,
            LoadedModel::Classifier(_)
            | LoadedModel::Generator(_)
            | LoadedModel::TokenClassifier(_)
            | LoadedModel::ImageClassifier(_)
            | LoadedModel::SharedEncoder(_) => Err(InferError::ModelNotFound(model.to_string())),
        };
        release_off_runtime(loaded);
        answer
    }
}

/// A question-answering model asked for something else.
pub(super) fn wrong_kind_qa(model: &str) -> InferError {
    InferError::invalid(
        "model",
        format!("`{model}` is a question-answering model; use /v1/question_answering"),
    )
}

/// A token-classification model asked for something else.
pub(super) fn wrong_kind_token(model: &str) -> InferError {
    InferError::invalid(
        "model",
        format!("`{model}` is a token-classification model; use /v1/token_classifications"),
    )
}

/// The request rules every engine relies on: at least one input, none empty.
fn validate_inputs(inputs: &[String]) -> Result<(), InferError> {
    if inputs.is_empty() {
        return Err(InferError::invalid(
            "input",
            "`input` must contain at least one string",
        ));
    }
    if let Some(index) = inputs.iter().position(String::is_empty) {
        return Err(InferError::invalid(
            "input",
            format!("`input[{index}]` is an empty string"),
        ));
    }
    Ok(())
}
