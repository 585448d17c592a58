//! What a job will do, known before its model loads: the examples and tokens its data
//! prepares into, its optimizer steps and its peak memory on a device. Each task computes
//! its plan with the same preparation its trainer runs (`tasks::<task>::plan_*`), so the
//! estimate a user asks for before creating a job (`jobs::estimate`) counts exactly what
//! the job will train on.

use super::memory::{self, MemoryEstimate};
use super::{Control, EventLevel, SavedCheckpoint, StepMetrics, TrainObserver};
use crate::domain::hyperparams::TrainingConfig;
use crate::zoo::decoder::DecoderConfig;

/// A job's numbers before it trains.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingPlan {
    /// What one epoch draws from: examples, or for QA the context windows (a long context
    /// makes several).
    pub train_examples: usize,
    pub valid_examples: usize,
    /// Tokens one epoch reads, padding excluded: what `trained_tokens` counts (0 for images).
    pub tokens_per_epoch: u64,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    pub n_epochs: usize,
    /// Peak memory on the device the plan was made for.
    pub memory: MemoryEstimate,
    /// Matmul FLOPs of the whole run by [`training_flops`], when the model is a transformer.
    pub flops: Option<f64>,
}

impl TrainingPlan {
    /// The plan of a run over `train_examples` with `config`'s epochs, batches and
    /// accumulation (as the runner steps: a last partial batch is a batch).
    pub fn new(
        config: &TrainingConfig,
        (train_examples, valid_examples): (usize, usize),
        tokens_per_epoch: u64,
        memory: MemoryEstimate,
        flops_per_token: Option<f64>,
    ) -> TrainingPlan {
        let total_steps = super::runner::total_steps(config, train_examples);
        let n_epochs = config.n_epochs;
        TrainingPlan {
            train_examples,
            valid_examples,
            tokens_per_epoch,
            steps_per_epoch: total_steps / n_epochs.max(1),
            total_steps,
            n_epochs,
            memory,
            flops: flops_per_token
                .map(|per_token| per_token * tokens_per_epoch as f64 * n_epochs as f64),
        }
    }

    /// Tokens the whole run trains on (the job's `trained_tokens` when it runs every epoch).
    pub fn trained_tokens(&self) -> u64 {
        self.tokens_per_epoch * self.n_epochs as u64
    }
}

/// Training FLOPs per token of a transformer with `parameters` weights: the forward pass
/// multiplies each weight once per token (2 FLOPs), the backward pass computes the
/// activations' gradients (2 more) and, for the weights that train, their own (2 more).
/// LoRA's adapters are too small to count; attention's `T²` terms are left out (short
/// fine-tuning sequences). The usual `6·N` of full training, `4·N` over a frozen base.
pub fn training_flops_per_token(parameters: f64, full_fine_tuning: bool) -> f64 {
    let per_weight = if full_fine_tuning { 6.0 } else { 4.0 };
    per_weight * parameters
}

/// The weights a decoder multiplies a training token by: every layer's matrices, and the
/// LM head for the share of positions that are trained (`trained_rows` of `tokens`; the
/// others skip the head). Embeddings are looked up, not multiplied.
pub fn decoder_weights_per_token(c: &DecoderConfig, tokens: u64, trained_rows: u64) -> f64 {
    let head_share = if tokens == 0 {
        0.0
    } else {
        trained_rows as f64 / tokens as f64
    };
    memory::layer_matrix_parameters(c) as f64 + memory::lm_head_parameters(c) as f64 * head_share
}

/// Keeps what a preparation tells the user (truncations, skipped examples, a cut context)
/// for the estimate's answer; a plan never trains, checkpoints or stops.
#[derive(Debug, Default)]
pub struct PlanNotes {
    pub warnings: Vec<String>,
}

impl TrainObserver for PlanNotes {
    fn on_event(&mut self, level: EventLevel, message: String) {
        if level == EventLevel::Warn {
            self.warnings.push(message);
        }
    }

    fn on_step(&mut self, _metrics: &StepMetrics) {}

    fn on_checkpoint(&mut self, _checkpoint: &SavedCheckpoint) {}

    fn control(&mut self) -> Control {
        Control::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_the_runner_and_flops_scale_with_epochs() {
        let config = TrainingConfig {
            gradient_accumulation_steps: 2,
            ..crate::tasks::sequence_classification::tests::config(4, 1e-2, 3)
        };
        let memory = MemoryEstimate {
            weights: 1,
            optimizer: 2,
            activations: 3,
            loading: 0,
            checkpoint: 0,
        };
        // 10 examples: 3 batches of 4 (the last has 2), 2 steps an epoch.
        let plan = TrainingPlan::new(&config, (10, 5), 1000, memory, Some(24.0));
        assert_eq!(plan.steps_per_epoch, 2);
        assert_eq!(plan.total_steps, 6);
        assert_eq!(plan.trained_tokens(), 3000);
        assert_eq!(plan.flops, Some(72_000.0));
        assert_eq!(training_flops_per_token(100.0, true), 600.0);
        assert_eq!(training_flops_per_token(100.0, false), 400.0);
    }

    #[test]
    fn notes_keep_warnings_only() {
        let mut notes = PlanNotes::default();
        notes.on_event(EventLevel::Info, "loaded".into());
        notes.on_event(EventLevel::Warn, "3 examples were truncated".into());
        assert_eq!(
            notes.warnings,
            vec!["3 examples were truncated".to_string()]
        );
        assert_eq!(notes.control(), Control::Continue);
    }
}
