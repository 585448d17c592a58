//! DPO: preference tuning of a chat decoder on OpenAI's preference rows.
//!
//! - `prepare.rs`: prompt / chosen / rejected token ids rendered with the model's chat
//!   template, TRL-style truncation.
//! - `logprobs.rs`: concatenated chosen + rejected batches and the summed log-probs of
//!   their completion tokens.
//! - `reference.rs`: the reference model: the policy with its adapters off (LoRA) or a
//!   frozen copy (full fine-tuning).
//! - `loss.rs`: the sigmoid DPO loss and the reward metrics, named as TRL and OpenAI name
//!   them.
//! - `run.rs`: `run_dpo`, the task on the shared runner (its checkpoints hold a causal LM,
//!   served and exported like an SFT result).

pub mod logprobs;
pub mod loss;
pub mod prepare;
pub mod reference;
mod run;

#[cfg(test)]
mod tests_logprobs;
#[cfg(test)]
mod tests_prepare;
#[cfg(test)]
mod tests_reference;
#[cfg(test)]
mod tests_run;

pub use logprobs::{completion_logps, make_pair_batch, PairBatch, PairLogps};
pub use loss::{dpo_loss, DpoLoss, RewardTotals, DEFAULT_BETA};
pub use prepare::{PreferencePair, PreferenceSequence, PreferenceTokenizer, PreparedPairs};
pub use reference::{DpoModels, Reference};
pub use run::{plan_dpo, run_dpo, DpoJob, DPO_METRICS};
