//! How a running job talks to its caller: the `jobs` worker implements
//! [`TrainObserver`] (forwarding to its async side) and the trainer calls it from its own
//! thread.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventLevel {
    Info,
    Warn,
    Error,
}

impl EventLevel {
    /// OpenAI's event `level` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventLevel::Info => "info",
            EventLevel::Warn => "warn",
            EventLevel::Error => "error",
        }
    }
}

/// What the trainer should do next; polled once per optimizer step (and a cancel within
/// it, through `TrainObserver::cancel_requested`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Save a checkpoint at the current step, then return `Stopped`.
    Pause,
    /// Stop at once without saving; returns `Cancelled`.
    Cancel,
    /// Like `Pause` (the job goes back to the queue rather than to `paused`).
    Shutdown,
}

/// Reported after every optimizer step. `step` is 1-based; `epoch` is the 1-based epoch
/// the step belongs to. `metrics` holds every metric the task declares, in order, with
/// `None` for one the step did not compute (validation metrics outside evaluations).
///
/// Classification: accuracies are over examples and `valid_*` covers the whole
/// validation set. Causal LM (SFT): OpenAI's `train_mean_token_accuracy`, `valid_*` on one
/// validation batch and `full_valid_*` on the whole validation set (at epoch ends).
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    pub metrics: Vec<(&'static str, Option<f64>)>,
    pub learning_rate: f64,
    pub tokens_seen: u64,
}

impl StepMetrics {
    /// The runner reports `train_loss` at every step.
    pub fn train_loss(&self) -> f64 {
        self.value("train_loss").unwrap_or(f64::NAN)
    }

    /// The value of metric `name` at this step.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| *v)
    }
}

/// A checkpoint directory that is complete and durable on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedCheckpoint {
    pub step: usize,
    pub dir: PathBuf,
    /// `{"step", <the task's metrics computed at that step>…}`.
    pub metrics: serde_json::Value,
    pub epoch_end: bool,
}

pub trait TrainObserver {
    fn on_event(&mut self, level: EventLevel, message: String);
    fn on_step(&mut self, metrics: &StepMetrics);
    /// Called after the checkpoint directory is durable on disk.
    fn on_checkpoint(&mut self, checkpoint: &SavedCheckpoint);
    fn control(&mut self) -> Control;
    /// Whether a cancel has arrived; polled within a step (before every micro-batch, after
    /// the evaluation, before a checkpoint), so a cancel never waits for the step to end.
    /// `control` stays the once-per-step poll for pause and shutdown.
    fn cancel_requested(&mut self) -> bool {
        false
    }
}
