//! The bridge from the training thread to the store. The trainer calls
//! [`ForwardingObserver`] on its own OS thread; every callback becomes a [`Progress`]
//! message on a bounded channel (`blocking_send`: a slow database slows training down
//! instead of growing a queue), and [`write_progress`] turns the messages into events,
//! progress columns, checkpoint rows and model rows, each fenced by the job's lease. The
//! first refused write (the job was cancelled or another worker owns it) raises the
//! control flag, so the trainer stops within its step, and nothing more is written.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{unix_now, ControlFlag, ControlSignal};
use crate::blobs::Blobs;
use crate::domain::ids::new_checkpoint_id;
use crate::domain::job::JobStatus;
use crate::domain::model_name::{checkpoint_name, ORG};
use crate::domain::task::{Architecture, Task};
use crate::store::{CheckpointRow, EventRow, Lease, ModelRow, Store, StoreError};
use crate::telemetry::metrics::JobTrainingMetrics;
use crate::train::{Control, EventLevel, SavedCheckpoint, StepMetrics, TrainObserver};

/// Room for a burst of steps while the database is busy.
pub const PROGRESS_CHANNEL_CAPACITY: usize = 64;

#[derive(Debug)]
pub enum Progress {
    Event(EventLevel, String),
    Step(StepMetrics),
    Checkpoint(SavedCheckpoint),
}

/// When the run's first step ended and the tokens it had trained by then: what separates
/// a run's setup (files, tokenizing, loading, the first evaluation) from its training pace,
/// for the throughput history estimates read. Shared with the training thread.
#[derive(Debug, Clone, Default)]
pub struct FirstStep(Arc<OnceLock<(Instant, u64)>>);

impl FirstStep {
    /// `(when, tokens_seen)` of the first step of this session, if it ran one.
    pub fn get(&self) -> Option<(Instant, u64)> {
        self.0.get().copied()
    }
}

/// Runs on the training thread.
pub struct ForwardingObserver {
    tx: mpsc::Sender<Progress>,
    control: ControlFlag,
    /// The job's training speed, measured here where the steps happen (the writer may
    /// receive them late); dropped with the observer when training ends.
    speed: JobTrainingMetrics,
    first_step: FirstStep,
}

impl ForwardingObserver {
    pub fn new(
        tx: mpsc::Sender<Progress>,
        control: ControlFlag,
        speed: JobTrainingMetrics,
        first_step: FirstStep,
    ) -> Self {
        ForwardingObserver {
            tx,
            control,
            speed,
            first_step,
        }
    }

    /// A closed channel means the writer is gone (the async side gave up); training goes
    /// on and `control` decides when it stops.
    fn forward(&self, progress: Progress) {
        if self.tx.blocking_send(progress).is_err() {
            warn!("progress writer is gone; dropping a training update");
        }
    }
}

impl TrainObserver for ForwardingObserver {
    fn on_event(&mut self, level: EventLevel, message: String) {
        self.forward(Progress::Event(level, message));
    }

    fn on_step(&mut self, metrics: &StepMetrics) {
        let now = Instant::now();
        self.first_step.0.get_or_init(|| (now, metrics.tokens_seen));
        self.speed.step_at(now, metrics.tokens_seen);
        debug!(
            step = metrics.step,
            total_steps = metrics.total_steps,
            train_loss = metrics.train_loss(),
            tokens_seen = metrics.tokens_seen,
            "training step"
        );
        self.forward(Progress::Step(metrics.clone()));
    }

    fn on_checkpoint(&mut self, checkpoint: &SavedCheckpoint) {
        self.forward(Progress::Checkpoint(checkpoint.clone()));
    }

    fn control(&mut self) -> Control {
        self.control.get().to_train_control()
    }

    fn cancel_requested(&mut self) -> bool {
        self.control.get().to_train_control() == Control::Cancel
    }
}

/// What the writer needs to name and place rows.
#[derive(Debug, Clone)]
pub struct ProgressTarget {
    pub store: Store,
    pub blobs: Blobs,
    /// Every row written names it.
    pub lease: Lease,
    /// Raised when a fenced write is refused.
    pub control: ControlFlag,
    pub job_id: String,
    pub base_model: String,
    /// The final model's name; checkpoints are `<final>:ckpt-step-N`.
    pub final_model: String,
    /// Decides the checkpoint metrics and the kind of the model rows.
    pub task: Task,
}

impl ProgressTarget {
    /// After a refused write: a cancelled job the lease still names stops as cancelled,
    /// anything else (lease lapsed, re-claimed, finished) as a lost lease.
    pub async fn stop_refused(&self) {
        let cancelled = match self.store.get_job(&self.job_id).await {
            Ok(Some(job)) => {
                job.status == JobStatus::Cancelled
                    && job.lease_owner.as_deref() == Some(self.lease.owner.as_str())
            }
            _ => false,
        };
        self.control.raise(if cancelled {
            ControlSignal::Cancel
        } else {
            ControlSignal::LeaseLost
        });
    }
}

/// Drains `rx` until the training thread drops its sender. Store errors are logged and the
/// first one is returned at the end (the channel is always drained, so the training thread
/// never blocks on a dead writer). After a refused write the rest is dropped unwritten.
pub async fn write_progress(
    target: ProgressTarget,
    mut rx: mpsc::Receiver<Progress>,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let mut first_step: Option<usize> = None;
    let mut first_error = None;
    let mut fenced_out = false;
    while let Some(progress) = rx.recv().await {
        if fenced_out {
            continue;
        }
        let result = match progress {
            Progress::Event(level, message) => {
                let event = EventRow::message(&target.job_id, level.as_str(), message, unix_now());
                target.store.leased_event(&target.lease, &event).await
            }
            Progress::Step(metrics) => {
                let first = *first_step.get_or_insert(metrics.step.saturating_sub(1));
                write_step(&target, &metrics, estimate_finish(started, first, &metrics)).await
            }
            Progress::Checkpoint(checkpoint) => write_checkpoint(&target, &checkpoint).await,
        };
        match result {
            Ok(true) => {}
            Ok(false) => {
                fenced_out = true;
                target.stop_refused().await;
            }
            Err(error) => {
                warn!(job_id = %target.job_id, %error, "writing training progress failed");
                first_error.get_or_insert(error);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Unix time at which the job should end, from the pace of the steps run in this session.
fn estimate_finish(started: Instant, first_step: usize, metrics: &StepMetrics) -> i64 {
    let done = metrics.step.saturating_sub(first_step).max(1) as f64;
    let remaining = metrics.total_steps.saturating_sub(metrics.step) as f64;
    let per_step = started.elapsed().as_secs_f64() / done;
    unix_now() + (per_step * remaining).ceil() as i64
}

/// `Step 3/20: training loss=0.6123, validation loss=0.7012`.
pub fn step_message(metrics: &StepMetrics) -> String {
    let mut message = format!(
        "Step {}/{}: training loss={:.4}",
        metrics.step,
        metrics.total_steps,
        metrics.train_loss()
    );
    if let Some(valid_loss) = metrics.value("valid_loss") {
        message.push_str(&format!(", validation loss={valid_loss:.4}"));
    }
    message
}

async fn write_step(
    target: &ProgressTarget,
    metrics: &StepMetrics,
    estimated_finish: i64,
) -> Result<bool, StoreError> {
    // `{"step", <every metric the task declares, null when not computed>, "total_steps",
    // "learning_rate"}`: OpenAI's names for chat models, transformers' for classifiers.
    let mut data = serde_json::Map::new();
    data.insert("step".into(), json!(metrics.step));
    for (name, value) in &metrics.metrics {
        data.insert((*name).into(), json!(value));
    }
    data.insert("total_steps".into(), json!(metrics.total_steps));
    data.insert("learning_rate".into(), json!(metrics.learning_rate));
    let data = Value::Object(data);
    let now = unix_now();
    let event = EventRow::metrics(&target.job_id, step_message(metrics), data, now);
    if !target.store.leased_event(&target.lease, &event).await? {
        return Ok(false);
    }
    let tokens = i64::try_from(metrics.tokens_seen).unwrap_or(i64::MAX);
    target
        .store
        .leased_progress(&target.lease, Some(estimated_finish), Some(tokens))
        .await
}

/// A checkpoint row plus its servable model row, in one transaction. A row that already
/// exists (a resumed job announcing the checkpoints on disk again) is kept.
async fn write_checkpoint(
    target: &ProgressTarget,
    checkpoint: &SavedCheckpoint,
) -> Result<bool, StoreError> {
    let name = checkpoint_name(&target.final_model, checkpoint.step);
    let artifact_dir = relative_to_root(&target.blobs, &checkpoint.dir);
    let step = i64::try_from(checkpoint.step).unwrap_or(i64::MAX);
    let now = unix_now();
    let row = CheckpointRow {
        id: new_checkpoint_id(),
        job_id: target.job_id.clone(),
        created_at: now,
        step_number: step,
        fine_tuned_model_checkpoint: name.clone(),
        // SFT trainers report their own full-validation numbers; encoder tasks and DPO
        // evaluate the whole validation set every time.
        metrics: match (target.task.architecture(), target.task) {
            (_, Task::Dpo) | (Architecture::Encoder | Architecture::Vision, _) => {
                checkpoint_metrics(&checkpoint.metrics)
            }
            (Architecture::Decoder, _) => checkpoint.metrics.clone(),
        },
        artifact_dir: artifact_dir.clone(),
    };
    let model = model_row(target, name, artifact_dir, step, true);
    match target
        .store
        .leased_checkpoint(&target.lease, Some(&row), &model)
        .await
    {
        Err(StoreError::Conflict(_)) => Ok(true),
        other => other,
    }
}

/// OpenAI's checkpoint metrics: the trainer's, plus `full_valid_*` (the trainer evaluates
/// the whole validation set whenever it checkpoints).
fn checkpoint_metrics(metrics: &Value) -> Value {
    let mut metrics = metrics.clone();
    if let Value::Object(map) = &mut metrics {
        for (from, to) in [
            ("valid_loss", "full_valid_loss"),
            ("valid_accuracy", "full_valid_accuracy"),
        ] {
            if let Some(value) = map.get(from).cloned() {
                map.entry(to).or_insert(value);
            }
        }
    }
    metrics
}

pub fn model_row(
    target: &ProgressTarget,
    name: String,
    artifact_dir: String,
    step: i64,
    is_checkpoint: bool,
) -> ModelRow {
    ModelRow {
        id: name,
        created_at: unix_now(),
        owned_by: ORG.to_string(),
        job_id: Some(target.job_id.clone()),
        base_model: Some(target.base_model.clone()),
        kind: target.task.served_as().as_str().to_string(),
        artifact_dir,
        step: Some(step),
        is_checkpoint,
        registered_adapter: false,
    }
}

/// `dir` relative to the data dir (as rows store it); unchanged when it lies elsewhere.
pub fn relative_to_root(blobs: &Blobs, dir: &Path) -> String {
    dir.strip_prefix(blobs.root())
        .unwrap_or(dir)
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(step: usize, valid_loss: Option<f64>) -> StepMetrics {
        StepMetrics {
            step,
            total_steps: 20,
            epoch: 1,
            metrics: vec![
                ("train_loss", Some(0.61234)),
                ("train_accuracy", Some(0.5)),
                ("valid_loss", valid_loss),
            ],
            learning_rate: 1e-3,
            tokens_seen: 100,
        }
    }

    #[test]
    fn step_messages_follow_openai_wording() {
        assert_eq!(
            step_message(&metrics(3, None)),
            "Step 3/20: training loss=0.6123"
        );
        assert_eq!(
            step_message(&metrics(4, Some(0.25))),
            "Step 4/20: training loss=0.6123, validation loss=0.2500"
        );
    }

    #[test]
    fn the_observer_reports_the_jobs_training_speed_until_it_is_dropped() {
        use crate::telemetry::metrics::scrape::{parse, value};
        use crate::telemetry::metrics::{Format, Metrics, Snapshot};
        let metrics = Metrics::new();
        let (tx, _rx) = mpsc::channel(PROGRESS_CHANNEL_CAPACITY);
        let speed = metrics.training().job("ftjob-1");
        let mut observer =
            ForwardingObserver::new(tx, ControlFlag::new(), speed, FirstStep::default());
        let scrape = |metrics: &Metrics| {
            parse(
                &metrics
                    .render(&Snapshot::default(), Format::Prometheus)
                    .expect("render"),
            )
        };
        let label = [("job_id", "ftjob-1")];
        observer.on_step(&metrics_at(1, 100));
        let first = scrape(&metrics);
        assert_eq!(value(&first, "temper_training_step_seconds", &label), None);
        observer.on_step(&metrics_at(2, 300));
        let second = scrape(&metrics);
        let seconds = value(&second, "temper_training_step_seconds", &label);
        assert!(seconds.is_some_and(|s| s >= 0.0), "{seconds:?}");
        drop(observer);
        let after = scrape(&metrics);
        assert_eq!(value(&after, "temper_training_step_seconds", &label), None);
        assert_eq!(
            value(&after, "temper_training_tokens_per_second", &label),
            None
        );
    }

    fn metrics_at(step: usize, tokens_seen: u64) -> StepMetrics {
        StepMetrics {
            tokens_seen,
            ..metrics(step, None)
        }
    }

    #[test]
    fn checkpoint_metrics_add_full_validation_values() {
        let out =
            checkpoint_metrics(&json!({"step": 5, "valid_loss": 0.5, "valid_accuracy": 0.75}));
        assert_eq!(out["full_valid_loss"], json!(0.5));
        assert_eq!(out["full_valid_accuracy"], json!(0.75));
        let out = checkpoint_metrics(&json!({"step": 5, "train_loss": 0.1}));
        assert_eq!(out, json!({"step": 5, "train_loss": 0.1}));
    }
}
