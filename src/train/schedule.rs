//! Learning-rate schedules with linear warmup, matching transformers'
//! `get_{linear,cosine,constant}_schedule_with_warmup` so that a job tuned with `Trainer`
//! behaves the same here.
//!
//! Steps are counted like the scheduler in transformers: the first optimizer step uses
//! `lr_at(0)`, the last one `lr_at(total_steps - 1)`. With warmup the first step therefore
//! has a learning rate of 0, exactly as in `Trainer`.

use crate::domain::hyperparams::LrScheduler;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub kind: LrScheduler,
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LrSchedule {
    /// `warmup_steps = ceil(warmup_ratio · total_steps)`, as `TrainingArguments.get_warmup_steps`.
    pub fn new(kind: LrScheduler, peak_lr: f64, warmup_ratio: f64, total_steps: usize) -> Self {
        let warmup_steps = (warmup_ratio.max(0.0) * total_steps as f64).ceil() as usize;
        Self {
            kind,
            peak_lr,
            warmup_steps,
            total_steps,
        }
    }

    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        self.peak_lr * self.factor(step)
    }

    fn factor(&self, step: usize) -> f64 {
        let step_f = step as f64;
        if step < self.warmup_steps {
            return step_f / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = (step - self.warmup_steps) as f64 / decay_steps;
        match self.kind {
            LrScheduler::Constant => 1.0,
            LrScheduler::Linear => (1.0 - progress).max(0.0),
            LrScheduler::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lrs(schedule: &LrSchedule) -> Vec<f64> {
        (0..schedule.total_steps)
            .map(|s| schedule.lr_at(s))
            .collect()
    }

    fn assert_close(actual: &[f64], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() < 1e-12, "{actual:?} != {expected:?}");
        }
    }

    #[test]
    fn warmup_steps_round_up() {
        let s = LrSchedule::new(LrScheduler::Linear, 1.0, 0.1, 15);
        assert_eq!(s.warmup_steps, 2);
        assert_eq!(
            LrSchedule::new(LrScheduler::Linear, 1.0, 0.0, 15).warmup_steps,
            0
        );
    }

    #[test]
    fn linear_with_warmup_matches_transformers() {
        // transformers: lambda(s) = s/w for s < w, else (N - s)/(N - w).
        let s = LrSchedule::new(LrScheduler::Linear, 1.0, 0.2, 10);
        assert_eq!(s.warmup_steps, 2);
        assert_close(
            &lrs(&s),
            &[0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125],
        );
    }

    #[test]
    fn linear_without_warmup_starts_at_peak() {
        let s = LrSchedule::new(LrScheduler::Linear, 2.0, 0.0, 4);
        assert_close(&lrs(&s), &[2.0, 1.5, 1.0, 0.5]);
    }

    #[test]
    fn cosine_with_warmup_matches_transformers() {
        let s = LrSchedule::new(LrScheduler::Cosine, 1.0, 0.25, 4);
        assert_eq!(s.warmup_steps, 1);
        // progress 0, 1/3, 2/3 → 0.5(1 + cos(pi p)) = 1, 0.75, 0.25.
        assert_close(&lrs(&s), &[0.0, 1.0, 0.75, 0.25]);
    }

    #[test]
    fn constant_with_warmup() {
        let s = LrSchedule::new(LrScheduler::Constant, 3.0, 0.5, 4);
        assert_close(&lrs(&s), &[0.0, 1.5, 3.0, 3.0]);
    }

    #[test]
    fn past_the_end_never_goes_negative() {
        let s = LrSchedule::new(LrScheduler::Linear, 1.0, 0.0, 4);
        assert_eq!(s.lr_at(10), 0.0);
    }
}
