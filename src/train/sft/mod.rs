//! Supervised fine-tuning of decoders on chat and prompt/completion data.
//!
//! - `prepare.rs`: chat template rendering, tokenization, trained-token masks, truncation.
//! - `batch.rs`: right-padded batches, next-token targets, the masked loss on `lm_head`
//!   rows.

pub mod batch;
pub mod prepare;

#[cfg(test)]
mod tests_data;

pub use prepare::{PreparedSet, SftExample, SftExamples, SftTokenizer};
