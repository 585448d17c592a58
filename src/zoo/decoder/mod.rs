//! The differentiable Llama/Qwen2 decoder (`CausalLm`) for SFT, its KV-cached inference
//! path and its Hugging Face / PEFT exports.
//!
//! - [`config`]: `config.json` parsing (transformers 4.x and 5.x), `DecoderSpec`, `QuantKind`.
//! - `kernels`: RMSNorm, rotary embeddings and masked softmax with analytic backward.
//! - `swiglu`: the gated MLP's `silu(gate) · up` with analytic backward.
//! - `model`: layers, loading (frozen / trainable / LoRA / quantized bases).
//! - `lm`: `CausalLm`, the padded-batch training forward and trainable parameters.
//! - `cache`: `KvCache`, `SeqChunk` and `forward_cached` (batched cached inference);
//!   `host_cache`: a CPU cache's storage, f32 or bf16 (`KvValues`).
//! - [`adapter`]: `ServedAdapter`, an unmerged LoRA adapter applied per sequence there.
//! - `export`: merged Hugging Face directory and PEFT adapter exports.
//! - [`tiny`]: tiny random decoders on disk for tests (re-exported by `zoo::testing`).

pub mod adapter;
mod cache;
pub mod config;
mod export;
mod host_cache;
pub(crate) mod kernels;
mod lm;
mod model;
pub(crate) mod swiglu;
pub mod tiny;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_adapter;
#[cfg(test)]
mod tests_export;
#[cfg(test)]
mod tests_infer;
#[cfg(test)]
mod tests_quantized_serving;

pub use adapter::{LoraScaling, ServedAdapter};
pub use cache::{KvCache, SeqChunk};
pub use config::{DecoderArch, DecoderConfig, DecoderSpec, QuantKind, RopeScaling};
pub use host_cache::KvValues;
pub use lm::CausalLm;
