//! What a task gives the shared loop (`runner.rs`): its training micro-batches, its
//! evaluations, and its hooks at the start of a run and of each epoch.

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use super::checkpoint::TrainState;
use super::named_metrics::{Metrics, MetricsRow};
use super::{TrainError, TrainObserver};

/// One micro-batch's forward pass in train mode.
pub(crate) struct MicroBatch {
    /// Mean loss over the micro-batch's units (differentiable).
    pub loss: Tensor,
    /// Examples (classification) or labelled tokens (SFT) the mean is over.
    pub units: usize,
    /// Units predicted right (arg-max).
    pub correct: usize,
    /// Non-padding input tokens.
    pub tokens: u64,
    /// More train metrics, each a mean over the micro-batch's units; the step reports
    /// their unit-weighted mean (e.g. DPO's rewards).
    pub extra: Metrics,
}

/// Which evaluations are due after a step.
pub(crate) struct EvalPoint {
    pub step: usize,
    pub epoch_end: bool,
    /// `eval_steps` divides `step`.
    pub eval_due: bool,
    /// A checkpoint will be written (epoch end, `save_steps`, last step).
    pub regular_save: bool,
}

pub(crate) trait TrainTask {
    fn n_train(&self) -> usize;
    /// The units the micro-batch `indices` adds to its step's mean loss.
    fn units(&self, indices: &[usize]) -> Result<usize, TrainError>;
    fn forward_train(&self, indices: &[usize]) -> Result<MicroBatch, TrainError>;
    /// Called after each micro-batch's backward, before the optimizer reads `store`:
    /// gradients that reached the task another way go in (a checkpointed model's
    /// recomputed layers, `zoo::recompute`).
    fn after_backward(&self, _store: &mut GradStore) -> Result<(), TrainError> {
        Ok(())
    }
    /// Fills the validation metrics of `row` that are due at `at`.
    fn evaluate(&self, at: &EvalPoint, row: &mut MetricsRow) -> Result<(), TrainError>;
    /// Called before the batches of `epoch` (0-based) run, also when a resumed run
    /// continues inside it: what changes per epoch (an image backbone's unfrozen units).
    fn begin_epoch(&self, _epoch: usize) {}
    /// Work before the first step of a run that starts from scratch (not on resume), e.g.
    /// SFT's validation of the starting model, recorded in `state`.
    fn before_first_step(
        &self,
        _state: &mut TrainState,
        _observer: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        Ok(())
    }
}
