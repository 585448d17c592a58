//! Training speed of the running jobs: tokens per second and seconds per optimizer step,
//! labelled by job id. Recorded on the training thread (the job's progress observer,
//! `jobs::progress`) through a [`JobTrainingMetrics`], whose drop at the end of the run
//! removes the job's series: only running jobs have one.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

use super::FloatGauge;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job_id: String,
}

/// The training metrics; cheap to clone. `Default` gives recorders attached to no
/// registry (jobs run in tests record into them unseen).
#[derive(Debug, Clone, Default)]
pub struct TrainingMetrics {
    tokens_per_second: Family<JobLabel, FloatGauge>,
    step_seconds: Family<JobLabel, FloatGauge>,
}

impl TrainingMetrics {
    pub(super) fn register(registry: &mut Registry) -> TrainingMetrics {
        let metrics = TrainingMetrics::default();
        registry.register(
            "training_tokens_per_second",
            "Training tokens per second of each running job, over its last optimizer step",
            metrics.tokens_per_second.clone(),
        );
        registry.register_with_unit(
            "training_step",
            "Wall time of each running job's last optimizer step (between two step reports)",
            Unit::Seconds,
            metrics.step_seconds.clone(),
        );
        metrics
    }

    /// The recorder of one run of job `job_id`.
    pub fn job(&self, job_id: &str) -> JobTrainingMetrics {
        JobTrainingMetrics {
            metrics: self.clone(),
            label: JobLabel {
                job_id: job_id.to_string(),
            },
            last_step: None,
        }
    }
}

/// One run's recorder; see the module doc.
#[derive(Debug)]
pub struct JobTrainingMetrics {
    metrics: TrainingMetrics,
    label: JobLabel,
    /// When the previous step was reported, and the tokens seen by then.
    last_step: Option<(Instant, u64)>,
}

impl JobTrainingMetrics {
    /// A step was reported at `now` with `tokens_seen` tokens trained on so far. The first
    /// report of a run only sets the mark: its time includes loading the model, and a
    /// resumed run's count starts at its checkpoint's.
    pub fn step_at(&mut self, now: Instant, tokens_seen: u64) {
        if let Some((then, tokens_then)) = self.last_step {
            let seconds = now.saturating_duration_since(then).as_secs_f64();
            let tokens = tokens_seen.saturating_sub(tokens_then) as f64;
            let metrics = &self.metrics;
            metrics.step_seconds.get_or_create(&self.label).set(seconds);
            if seconds > 0.0 {
                metrics
                    .tokens_per_second
                    .get_or_create(&self.label)
                    .set(tokens / seconds);
            }
        }
        self.last_step = Some((now, tokens_seen));
    }
}

impl Drop for JobTrainingMetrics {
    fn drop(&mut self) {
        self.metrics.tokens_per_second.remove(&self.label);
        self.metrics.step_seconds.remove(&self.label);
    }
}
