//! `CheckpointLoader`: a catalog entry → the engine of its kind, over the serving backend
//! its task provides (`tasks/<task>/serve.rs`), on the configured device.

use std::path::Path;

use candle_core::Device;

use super::catalog::ServableModel;
use super::engine::{ClassifierBackend, Engine, EngineConfig};
use super::generate::{CausalLmBackend, CausalLmParts, GenEngine, GenEngineConfig, LmBackend};
use super::image_classification::{ImageEngine, ImageServing};
use super::question_answering::QaEngine;
use super::registry::ModelLoader;
use super::shared_encoder::SharedEncoderEngine;
use super::token_classification::{TokenEngine, TokenTagger};
use super::{InferError, LoadedModel};
use crate::artifacts::{ArtifactError, BaseModels, Checkpoint};
use crate::config::ServeDtype;
use crate::domain::task::ServedKind;
use crate::tasks::sequence_classification::serve::CheckpointClassifier;
use crate::tasks::sequence_classification::shared::SharedEncoderClassifier;
use crate::tasks::sft::{load_lm, LmSource};
use crate::telemetry::metrics::GenerationMetrics;
use crate::zoo::decoder::QuantKind;

/// Loads catalog entries as engines on the serving devices (the registry picks one).
pub struct CheckpointLoader {
    /// One per budget of the registry, in the same order (at least one).
    pub devices: Vec<Device>,
    pub engine: EngineConfig,
    pub generation: GenEngineConfig,
    /// Where the bases checkpoints name are found.
    pub bases: BaseModels,
    /// What the language models' engines record (`/metrics`).
    pub metrics: GenerationMetrics,
}

impl ModelLoader<LoadedModel> for CheckpointLoader {
    fn load(&self, model: &ServableModel) -> Result<LoadedModel, InferError> {
        self.load_on(model, 0)
    }

    fn load_on(&self, model: &ServableModel, slot: usize) -> Result<LoadedModel, InferError> {
        let device = self
            .devices
            .get(slot)
            .ok_or_else(|| InferError::engine(format!("no serving device {slot}")))?;
        let span =
            tracing::info_span!("load_model", model = %model.name, device = ?device.location());
        let _entered = span.enter();
        self.load_onto(model, device)
    }
}

impl CheckpointLoader {
    fn load_onto(&self, model: &ServableModel, device: &Device) -> Result<LoadedModel, InferError> {
        match model.kind {
            ServedKind::Classifier => {
                let backend = CheckpointClassifier::load(&self.open(model)?, device)?;
                tracing::info!(
                    bytes = ClassifierBackend::parameter_bytes(&backend),
                    "classifier loaded"
                );
                Engine::spawn(&model.name, Box::new(backend), self.engine)
                    .map(LoadedModel::Classifier)
            }
            ServedKind::CausalLm => {
                let dtype = model.serve_dtype.unwrap_or(self.generation.serve_dtype);
                let weights = match (dtype, &model.gguf) {
                    (ServeDtype::Gguf, Some(file)) => ServedWeights::GgufBlocks(file),
                    (ServeDtype::Bf16, _) => ServedWeights::Bf16,
                    _ => ServedWeights::from(dtype.quant_kind()),
                };
                let backend = load_causal(model, &self.bases, device, weights)?;
                tracing::info!(bytes = backend.parameter_bytes(), "language model loaded");
                GenEngine::spawn_recorded(&model.name, backend, self.generation, &self.metrics)
                    .map(LoadedModel::Generator)
            }
            ServedKind::QuestionAnswerer => {
                let checkpoint = self.open(model)?;
                let backend = crate::tasks::question_answering::load_qa_server(&checkpoint, device)
                    .map_err(|e| loading_failed(&model.dir, e))?;
                tracing::info!(bytes = backend.parameter_bytes(), "QA model loaded");
                QaEngine::spawn(&model.name, Box::new(backend), self.engine)
                    .map(LoadedModel::QuestionAnswerer)
            }
            ServedKind::TokenClassifier => {
                let backend = TokenTagger::load(&self.open(model)?, device)
                    .map_err(|e| loading_failed(&model.dir, e))?;
                let bytes = crate::tasks::serve::ServeBackend::parameter_bytes(&backend);
                tracing::info!(bytes, "token classifier loaded");
                TokenEngine::spawn(&model.name, backend, self.engine)
                    .map(LoadedModel::TokenClassifier)
            }
            ServedKind::SharedEncoder => {
                let backend = SharedEncoderClassifier::load(&model.dir, device)
                    .map_err(|e| InferError::engine(e.to_string()))?;
                let bytes = crate::tasks::serve::ServeBackend::parameter_bytes(&backend);
                tracing::info!(bytes, "shared base encoder loaded");
                SharedEncoderEngine::spawn(&model.name, backend, self.engine)
                    .map(LoadedModel::SharedEncoder)
            }
            ServedKind::ImageClassifier => {
                let backend = ImageServing::load(&self.open(model)?, device)
                    .map_err(|e| loading_failed(&model.dir, e))?;
                let bytes = crate::tasks::serve::ServeBackend::parameter_bytes(&backend);
                tracing::info!(bytes, "image classifier loaded");
                ImageEngine::spawn(&model.name, backend, self.engine)
                    .map(LoadedModel::ImageClassifier)
            }
        }
    }
}

impl CheckpointLoader {
    /// The model's checkpoint with its base found.
    fn open(&self, model: &ServableModel) -> Result<Checkpoint, InferError> {
        open_checkpoint(&self.bases, model)
    }
}

fn open_checkpoint(bases: &BaseModels, model: &ServableModel) -> Result<Checkpoint, InferError> {
    bases.open(&model.dir).map_err(|e| not_opened(model, e))
}

/// Why `model`'s checkpoint could not be opened, as the request is answered.
fn not_opened(model: &ServableModel, error: ArtifactError) -> InferError {
    match error {
        ArtifactError::BaseModel(message) => base_unavailable(model, &message),
        other => loading_failed(&model.dir, other),
    }
}

/// A model whose base is gone or was replaced: the request names a model that cannot be
/// served until an operator puts its base back, which the client is told (a 400 on `model`:
/// retrying cannot help) rather than given a server error.
fn base_unavailable(model: &ServableModel, message: &str) -> InferError {
    InferError::invalid(
        "model",
        format!("The model `{}` cannot be served: {message}", model.name),
    )
}

fn loading_failed(dir: &Path, error: impl std::fmt::Display) -> InferError {
    InferError::engine(format!("loading checkpoint `{}`: {error}", dir.display()))
}

/// How a language model's layer projections are stored when served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServedWeights<'a> {
    /// bf16 on a GPU, f32 on the CPU.
    Float,
    /// bf16 everywhere.
    Bf16,
    /// Quantized to these blocks at load.
    Blocks(QuantKind),
    /// The blocks of the GGUF file the model was made from, as they are.
    GgufBlocks(&'a Path),
}

impl From<Option<QuantKind>> for ServedWeights<'_> {
    fn from(quantize: Option<QuantKind>) -> Self {
        quantize.map_or(ServedWeights::Float, ServedWeights::Blocks)
    }
}

/// A causal model directory: a `causal_lm` fine-tuning checkpoint (LoRA merged) or a
/// plain Hugging Face directory (base model, merged export), via `train`; in bf16 on a GPU
/// (its matrices stored and multiplied in bf16), in f32 on the CPU; its layers' projections
/// as quantized blocks over f32 activations when `weights` says so.
pub(crate) fn load_causal(
    model: &ServableModel,
    bases: &BaseModels,
    device: &Device,
    weights: ServedWeights<'_>,
) -> Result<CausalLmBackend, InferError> {
    let dir = &model.dir;
    let failed = |e: &dyn std::fmt::Display| {
        InferError::engine(format!("loading language model `{}`: {e}", dir.display()))
    };
    let compute = match weights {
        ServedWeights::Float if !device.is_cpu() => candle_core::DType::BF16,
        ServedWeights::Bf16 => candle_core::DType::BF16,
        _ => candle_core::DType::F32,
    };
    let mut checkpoint = None;
    let source = LmSource::of_dir(dir, bases, &mut checkpoint).map_err(|e| not_opened(model, e))?;
    let mut loaded = load_lm(source, device, compute).map_err(|e| failed(&e))?;
    match weights {
        ServedWeights::Float | ServedWeights::Bf16 => {}
        ServedWeights::Blocks(kind) => {
            loaded.model = loaded
                .model
                .quantized_for_serving(kind)
                .map_err(|e| failed(&e))?;
        }
        ServedWeights::GgufBlocks(file) => {
            let blocks = crate::zoo::gguf::blocks::projection_blocks(file, device)
                .map_err(|e| failed(&e))?;
            loaded.model = loaded
                .model
                .with_projection_blocks(blocks)
                .map_err(|e| failed(&e))?;
        }
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::{InferenceConfig, ServeDtype};

    #[test]
    fn the_engine_limits_reach_the_generation_engines() {
        let limits = InferenceConfig {
            max_batch_sequences: 3,
            max_queued_sequences: 7,
            prefill_chunk_tokens: 33,
            kv_cache_bytes: Some(1 << 20),
            ..InferenceConfig::default()
        };
        let generation = crate::infer::InferOptions::from_config(&limits, vec![]).generation;
        assert_eq!(generation.max_batch_sequences, 3);
        assert_eq!(generation.max_queued_sequences, 7);
        assert_eq!(generation.prefill_chunk_tokens, 33);
        assert_eq!(generation.kv_cache_bytes, Some(1 << 20));
    }

    #[test]
    fn serve_dtype_reaches_the_language_model_loader() {
        let options = |serve_dtype| {
            let config = InferenceConfig {
                serve_dtype,
                ..InferenceConfig::default()
            };
            crate::infer::InferOptions::from_config(&config, vec![Device::Cpu])
                .generation
                .serve_dtype
        };
        for dtype in [ServeDtype::Auto, ServeDtype::Q8_0, ServeDtype::Gguf] {
            assert_eq!(options(dtype), dtype);
        }

        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("hf");
        let gguf = tmp.path().join("tiny.gguf");
        crate::zoo::gguf::tests::write_tiny_gguf(&gguf, crate::zoo::gguf::tests::LLAMA);
        crate::zoo::materialize_gguf(&gguf, &dir).unwrap();
        let plain = crate::infer::ServableModel {
            name: "tiny".into(),
            dir: dir.clone(),
            kind: ServedKind::CausalLm,
            adapter_of: None,
            serve_dtype: None,
            gguf: None,
        };
        let bytes = |weights| {
            load_causal(&plain, &BaseModels::default(), &Device::Cpu, weights)
                .unwrap()
                .parameter_bytes()
        };
        let (f32_bytes, q8, q4, q4_1, from_file) = (
            bytes(ServedWeights::Float),
            bytes(ServedWeights::Blocks(QuantKind::Q8_0)),
            bytes(ServedWeights::Blocks(QuantKind::Q4_0)),
            bytes(ServedWeights::Blocks(QuantKind::Q4_1)),
            bytes(ServedWeights::GgufBlocks(&gguf)),
        );
        assert!(
            q4 < q4_1 && q4_1 < q8 && q8 < f32_bytes,
            "{q4} {q4_1} {q8} {f32_bytes}"
        );
        // The tiny file stores its projections as q4_1, q8_0 and q4_0 blocks.
        assert!(q4 < from_file && from_file < q8, "{q4} {from_file} {q8}");

        // A model named in a format is loaded in it, whatever the server's default.
        let loader = CheckpointLoader {
            bases: BaseModels::default(),
            devices: vec![Device::Cpu],
            engine: crate::infer::EngineConfig::default(),
            generation: crate::infer::GenEngineConfig {
                serve_dtype: ServeDtype::Q4_0,
                ..Default::default()
            },
            metrics: GenerationMetrics::default(),
        };
        let served = |serve_dtype, gguf: Option<&Path>| {
            let model = crate::infer::ServableModel {
                serve_dtype,
                gguf: gguf.map(Path::to_path_buf),
                ..plain.clone()
            };
            crate::infer::Servable::parameter_bytes(&loader.load(&model).unwrap())
        };
        assert_eq!(served(None, None), q4);
        assert_eq!(served(Some(ServeDtype::Q8_0), None), q8);
        assert_eq!(served(Some(ServeDtype::Q4_1), None), q4_1);
        assert_eq!(served(Some(ServeDtype::Auto), None), f32_bytes);
        assert_eq!(served(Some(ServeDtype::Gguf), Some(&gguf)), from_file);
        // Without a file of its own, `gguf` is `auto`.
        assert_eq!(served(Some(ServeDtype::Gguf), None), f32_bytes);
    }
}
