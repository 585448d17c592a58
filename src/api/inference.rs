//! What the HTTP layer needs from inference, as a narrow trait: `app.rs` implements it over
//! `infer::InferenceHandle`, handler tests over a stub. Keeping the export format our own
//! keeps `api` free of `train` imports.

use std::path::PathBuf;

use futures::future::BoxFuture;

use crate::infer::{
    Aggregation, ClassPrediction, GenerationParams, GenerationStream, InferError, QaPrediction,
    QaQuestion, TokenEntity,
};
use crate::telemetry::metrics::LoadedModel;

/// Which artifact `GET …/download` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactFormat {
    /// Hugging Face directory with any LoRA folded in.
    Merged,
    /// PEFT adapter directory (LoRA jobs only).
    Adapter,
}

impl ArtifactFormat {
    pub fn parse(text: &str) -> Option<ArtifactFormat> {
        match text {
            "merged" => Some(ArtifactFormat::Merged),
            "adapter" => Some(ArtifactFormat::Adapter),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactFormat::Merged => "merged",
            ArtifactFormat::Adapter => "adapter",
        }
    }
}

/// One export: a checkpoint directory written out as `format` into `out_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequest {
    pub checkpoint_dir: PathBuf,
    pub format: ArtifactFormat,
    /// Named as the base model in `adapter_config.json`.
    pub base_model_id: String,
    pub out_dir: PathBuf,
}

pub trait Inference: Send + Sync + 'static {
    fn classify(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> BoxFuture<'static, Result<Vec<ClassPrediction>, InferError>>;

    fn export(&self, request: ExportRequest) -> BoxFuture<'static, Result<(), InferError>>;

    /// Classifies images (each the file's bytes) with an image classifier
    /// (`InferenceHandle::classify_images`). Without an implementation no model answers.
    fn classify_images(
        &self,
        model: String,
        _images: Vec<Vec<u8>>,
    ) -> BoxFuture<'static, Result<Vec<ClassPrediction>, InferError>> {
        Box::pin(async move { Err(InferError::ModelNotFound(model)) })
    }

    /// Answers questions with an extractive QA model (`InferenceHandle::answer_questions`).
    /// Without an implementation no model answers: every model is not found.
    fn answer_questions(
        &self,
        model: String,
        _questions: Vec<QaQuestion>,
    ) -> BoxFuture<'static, Result<Vec<QaPrediction>, InferError>> {
        Box::pin(async move { Err(InferError::ModelNotFound(model)) })
    }

    /// The entities of each text with a token classifier (`InferenceHandle::classify_tokens`).
    /// Without an implementation no model answers: every model is not found.
    fn classify_tokens(
        &self,
        model: String,
        _inputs: Vec<String>,
        _aggregation: Aggregation,
    ) -> BoxFuture<'static, Result<Vec<Vec<TokenEntity>>, InferError>> {
        Box::pin(async move { Err(InferError::ModelNotFound(model)) })
    }

    /// Starts a chat completion (`InferenceHandle::chat`): the stream is returned once
    /// the prompt is accepted, so prompt errors come back before any response starts.
    fn chat(
        &self,
        model: String,
        messages: Vec<serde_json::Value>,
        tools: Option<serde_json::Value>,
        params: GenerationParams,
    ) -> BoxFuture<'static, Result<GenerationStream, InferError>>;

    /// Starts a text completion (`InferenceHandle::complete`).
    fn complete(
        &self,
        model: String,
        prompt: String,
        params: GenerationParams,
    ) -> BoxFuture<'static, Result<GenerationStream, InferError>>;

    /// Drops a loaded model (after `DELETE /v1/models/{id}`).
    fn evict(&self, model: &str);

    /// Every loaded model and adapter with its bytes (`/metrics`).
    fn loaded_models(&self) -> Vec<LoadedModel>;
}
