//! The real classifier behind an engine: a training checkpoint rebuilt by
//! `tasks::sequence_classification::load_classifier_checkpoint`, with LoRA folded into the base weights (one
//! matmul per projection instead of three) and the base model's tokenizer.

use std::path::Path;

use candle_core::{DType, Device};

use super::catalog::ServableModel;
use super::engine::{ClassifierBackend, Engine, EngineConfig};
use super::generate::{CausalLmBackend, CausalLmParts, GenEngine, GenEngineConfig, LmBackend};
use super::question_answering::QaEngine;
use super::registry::ModelLoader;
use super::{InferError, LoadedModel};
use crate::domain::task::ServedKind;
use crate::zoo::{collate, SequenceClassifier, TextTokenizer};

pub struct CheckpointClassifier {
    model: SequenceClassifier,
    tokenizer: TextTokenizer,
    labels: Vec<String>,
    /// Longer texts are truncated to this many tokens (the training length, capped
    /// by the model's position embeddings).
    max_seq_len: usize,
    device: Device,
}

impl CheckpointClassifier {
    pub fn load(dir: &Path, device: &Device) -> Result<Self, InferError> {
        let (mut model, tokenizer, labels, max_seq_len) =
            crate::tasks::sequence_classification::load_classifier_checkpoint(dir, device)
                .map_err(|e| {
                    InferError::engine(format!("loading checkpoint `{}`: {e}", dir.display()))
                })?;
        model.merge_lora().map_err(InferError::engine)?;
        let max_seq_len = max_seq_len
            .min(model.config().max_position_embeddings)
            .max(2);
        Ok(Self {
            model,
            tokenizer,
            labels,
            max_seq_len,
            device: device.clone(),
        })
    }
}

impl ClassifierBackend for CheckpointClassifier {
    fn labels(&self) -> &[String] {
        &self.labels
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, InferError> {
        self.tokenizer
            .encode(text, self.max_seq_len)
            .map_err(InferError::engine)
    }

    fn logits(&mut self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, InferError> {
        let batch =
            collate(seqs, self.tokenizer.pad_id(), &self.device).map_err(InferError::engine)?;
        let logits = self
            .model
            .forward(&batch, false)
            .map_err(InferError::engine)?;
        logits
            .to_dtype(DType::F32)
            .and_then(|l| l.to_vec2::<f32>())
            .map_err(InferError::engine)
    }

    fn parameter_bytes(&self) -> usize {
        self.model.parameter_bytes()
    }
}

/// Loads catalog entries as engines on `device`.
pub struct CheckpointLoader {
    pub device: Device,
    pub engine: EngineConfig,
    pub generation: GenEngineConfig,
}

impl ModelLoader<LoadedModel> for CheckpointLoader {
    fn load(&self, model: &ServableModel) -> Result<LoadedModel, InferError> {
        let span = tracing::info_span!("load_model", model = %model.name);
        let _entered = span.enter();
        match model.kind {
            ServedKind::Classifier => {
                let backend = CheckpointClassifier::load(&model.dir, &self.device)?;
                tracing::info!(bytes = backend.parameter_bytes(), "classifier loaded");
                Engine::spawn(&model.name, Box::new(backend), self.engine)
                    .map(LoadedModel::Classifier)
            }
            ServedKind::CausalLm => {
                let backend = load_causal(&model.dir, &self.device)?;
                tracing::info!(bytes = backend.parameter_bytes(), "language model loaded");
                GenEngine::spawn(&model.name, backend, self.generation).map(LoadedModel::Generator)
            }
            ServedKind::QuestionAnswerer => {
                let backend =
                    crate::tasks::question_answering::load_qa_server(&model.dir, &self.device)
                        .map_err(|e| {
                            InferError::engine(format!(
                                "loading checkpoint `{}`: {e}",
                                model.dir.display()
                            ))
                        })?;
                tracing::info!(bytes = backend.parameter_bytes(), "QA model loaded");
                QaEngine::spawn(&model.name, Box::new(backend), self.engine)
                    .map(LoadedModel::QuestionAnswerer)
            }
            ServedKind::TokenClassifier => Err(InferError::invalid(
                "model",
                format!(
                    "The model `{}` is a {} model, which this version of temper cannot serve.",
                    model.name,
                    model.kind.as_str()
                ),
            )),
        }
    }
}

/// A causal model directory: a `causal_lm` fine-tuning checkpoint (LoRA merged) or a
/// plain Hugging Face directory (base model, merged export), via `train`.
fn load_causal(dir: &Path, device: &Device) -> Result<CausalLmBackend, InferError> {
    let loaded = crate::tasks::sft::load_lm_checkpoint(dir, device).map_err(|e| {
        InferError::engine(format!("loading language model `{}`: {e}", dir.display()))
    })?;
    // The context is the model's, not the (shorter) sequence length it was tuned with.
    let context_len = loaded.model.config().max_position_embeddings;
    CausalLmBackend::new(CausalLmParts {
        model: loaded.model,
        tokenizer: loaded.tokenizer,
        template: loaded.template,
        eos_token_ids: loaded.eos_token_ids,
        context_len,
    })
}
