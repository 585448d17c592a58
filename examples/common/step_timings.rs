//! The training observer the speed probes share (`train_speed`, `sft_speed`): each step's
//! loss and end time, and the paces worked out from them.

use std::time::Instant;

use temper::train::{Control, EventLevel, SavedCheckpoint, StepMetrics, TrainObserver};

#[derive(Default)]
pub struct StepTimings {
    pub losses: Vec<f64>,
    pub tokens: u64,
    /// When each step ended, and the tokens seen by then: the steady pace leaves out model
    /// loading, the first step's warm-up and the final save.
    pub step_ends: Vec<(Instant, u64)>,
}

impl TrainObserver for StepTimings {
    fn on_event(&mut self, _level: EventLevel, _message: String) {}
    fn on_step(&mut self, metrics: &StepMetrics) {
        self.losses.push(metrics.train_loss());
        self.tokens = metrics.tokens_seen;
        self.step_ends.push((Instant::now(), metrics.tokens_seen));
    }
    fn on_checkpoint(&mut self, _checkpoint: &SavedCheckpoint) {}
    fn control(&mut self) -> Control {
        Control::Continue
    }
}

impl StepTimings {
    /// Steps and tokens per second between the first step's end and the last's (zeros with
    /// fewer than two steps).
    pub fn steady_rates(&self) -> (f64, f64) {
        match (self.step_ends.first(), self.step_ends.last()) {
            (Some(&(t0, k0)), Some(&(t1, k1))) if self.step_ends.len() > 1 => {
                let seconds = (t1 - t0).as_secs_f64();
                let steps = (self.step_ends.len() - 1) as f64;
                (steps / seconds, (k1 - k0) as f64 / seconds)
            }
            _ => (0.0, 0.0),
        }
    }

    /// The median step in ms: robust to the bursts of contention a shared machine has,
    /// which move the mean by 10 % or more between identical runs.
    pub fn median_step_ms(&self) -> f64 {
        let mut step_ms: Vec<f64> = self
            .step_ends
            .windows(2)
            .map(|w| (w[1].0 - w[0].0).as_secs_f64() * 1e3)
            .collect();
        step_ms.sort_by(f64::total_cmp);
        step_ms.get(step_ms.len() / 2).copied().unwrap_or(0.0)
    }
}
