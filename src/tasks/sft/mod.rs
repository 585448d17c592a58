//! Supervised fine-tuning of decoders on chat and prompt/completion data: one folder for
//! both `Task::ChatSft` and `Task::CompletionSft`, which differ only in how `prepare.rs`
//! renders an example (chat template vs prompt + completion); training, metrics
//! (`SFT_METRICS`, OpenAI's names), checkpoints (`CheckpointTask::CausalLm`), export and
//! serving (`/v1/chat/completions`, `/v1/completions`) are the same.
//!
//! - `prepare.rs`: chat template rendering, tokenization, trained-token masks, truncation.
//! - `batch.rs`: right-padded batches, next-token targets, the masked loss on `lm_head`
//!   rows.
//! - `run.rs`: `run_sft`, the decoder as a task of the shared training loop, and `plan_sft`.
//! - `decoder_job.rs`: what SFT and DPO jobs share before their first step (context length,
//!   LoRA / QLoRA spec, the model in its precision, the memory estimate and check).
//! - `load.rs`: `load_lm_checkpoint` (checkpoints and plain base model directories).
//! - `export.rs`: merged HF directory / PEFT adapter of a `causal_lm` checkpoint.
//! - `adapter.rs`: a LoRA checkpoint as an unmerged adapter served beside its base.

pub mod adapter;
pub mod batch;
mod decoder_job;
pub(crate) mod export;
mod load;
pub mod prepare;
mod run;

#[cfg(test)]
mod tests_adapter;
#[cfg(test)]
mod tests_checkpointing;
#[cfg(test)]
mod tests_data;
#[cfg(test)]
mod tests_export;
#[cfg(test)]
pub(crate) mod tests_memory;
#[cfg(test)]
mod tests_precision;
#[cfg(test)]
mod tests_serve_precision;
#[cfg(test)]
mod tests_small_data;
#[cfg(test)]
mod tests_train;

/// Shared with DPO, which trains the same causal LMs.
pub(crate) use decoder_job::{
    check_memory, decoder_for_job, decoder_memory, decoder_spec, fit_to_context, lm_spec, run_mode,
    Placement,
};
pub use load::{load_lm, load_lm_checkpoint, load_lm_checkpoint_in, LmSource, LoadedLm};
pub use prepare::{PreparedSet, SftExample, SftExamples, SftTokenizer};
pub use run::{plan_sft, run_sft, LmEvaluation, SftJob, SFT_METRICS};
