//! CPU f32 kernels that replace chains of candle ops in the training step: a linear layer,
//! a LoRA layer over a frozen base, many served adapters' updates in one batch,
//! attention over a packed batch, dropout, and an embedding lookup with a row-sparse
//! gradient, each one op with an analytic backward, on
//! the rayon pool the matmuls already use. Callers check
//! [`crate::zoo::fused::uses_fused_kernels`] and keep the composed ops on other devices.

pub mod bf16_packing;
pub mod bf16_product;
#[cfg(target_arch = "x86_64")]
pub mod bf16_tiled_weight;
#[cfg(target_arch = "x86_64")]
pub mod bf16_tiles;
pub mod blas;
pub mod cached_attention;
pub mod dropout;
pub mod embedding;
pub(crate) mod exp;
pub mod few_rows;
pub mod gemm;
pub(crate) mod lanes;
pub mod linear_op;
pub mod lora_linear;
pub mod q8_product;
pub(crate) mod reduce;
pub mod segmented_lora;
pub mod varlen_attention;
