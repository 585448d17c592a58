//! zoo: model definitions built for training (see lib.rs for the layout).
//!
//! Everything here is synchronous candle code. Training forwards use only ops with a
//! backward (composed softmax, LayerNorm computed from primitive ops, explicit masked
//! attention) because candle's fused ops silently drop gradients; see
//! `shared/reference/candle-training.md`.
//!
//! - [`linear`]: `TrainLinear`, the one linear layer (frozen/trainable base + LoRA).
//! - [`config`]: BERT / DistilBERT `config.json` parsing (transformers 4.x and 5.x).
//! - [`loader`]: checkpoint files and names, frozen vs trainable vs LoRA parameters.
//! - [`bert`]: the differentiable BERT-family encoder (`packing.rs`: its real tokens as
//!   packed rows; `bert_names.rs`: its checkpoint module names).
//! - [`fused`]: CPU kernels with analytic backward (GELU, LayerNorm) for the encoder.
//! - [`cpu`]: CPU ops with analytic backward for the training step: a linear layer, attention
//!   over the packed batch (encoders and causal grouped-query decoders), dropout, an
//!   embedding lookup whose gradient is the rows it read, and the bounds-checked `gemm`
//!   front they multiply with.
//! - [`decoder`]: `CausalLm`, the differentiable Llama/Qwen2 decoder, KV cache, exports.
//! - [`gguf`]: llama.cpp GGUF files materialized as Hugging Face decoder directories, and
//!   their layer projections as the blocks the file stores (`gguf::blocks`).
//! - [`quantized_weight`]: frozen quantized weights and their products (per-core parts;
//!   batches of enough rows through f32).
//! - [`shared_encoder`]: a base encoder's weights read once, shared by the LoRA models built
//!   over them.
//! - [`encoder_head`]: `EncoderModel<H>`, the encoder plus one task head: loading, vars,
//!   merging and the Hugging Face / PEFT exports every encoder task shares.
//! - [`classifier`]: `SequenceClassifier`, the sequence-classification head on it.
//! - [`chat_template`]: the model's Jinja chat template, rendered like transformers.
//! - [`tokenizer`]: `TextTokenizer` and dynamic-padding `collate`.
//! - [`recompute`]: gradient checkpointing (a layer recomputed in backward).
//! - [`testing`]: tiny random models on disk for unit and integration tests.
//! - [`vision`]: CNN backbones (ResNet, EfficientNet-Lite) in timm's layout, `ImageClassifier`.

pub mod bert;
mod bert_names;
pub mod chat_template;
pub mod classifier;
pub mod config;
pub mod cpu;
pub mod decoder;
pub mod encoder_head;
pub mod export;
pub mod fused;
pub mod gguf;
pub mod linear;
pub mod loader;
mod lora;
mod packing;
pub mod params;
mod precomputed;
pub mod quantized_weight;
pub mod recompute;
pub mod shared_encoder;
pub mod testing;
pub mod tokenizer;
pub mod vision;

#[cfg(test)]
mod first_token_tests;
#[cfg(test)]
mod generic_ops_tests;
#[cfg(test)]
mod loader_tests;
#[cfg(test)]
mod real_assets_tests;
#[cfg(test)]
pub(crate) mod test_tensors;
#[cfg(test)]
mod tests;

pub use chat_template::ChatTemplate;
pub use classifier::{ClassifierSpec, SequenceClassifier, SequenceHead};
pub use decoder::{
    CausalLm, DecoderArch, DecoderConfig, DecoderSpec, KvCache, QuantKind, SeqChunk,
};
pub use encoder_head::{EncoderHead, EncoderModel};
pub use gguf::materialize_gguf;
pub use linear::TrainLinear;
pub use params::NamedVar;
pub use tokenizer::{collate, EncodedBatch, TextTokenizer};

/// Errors from model loading, tokenization, forward passes and exports.
#[derive(Debug, thiserror::Error)]
pub enum ZooError {
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("checkpoint is missing tensor `{0}`")]
    MissingTensor(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}
