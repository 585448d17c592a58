//! The training loop's cancel takes effect within the current optimizer step: before the
//! next micro-batch, or after the evaluation, and never with a report or checkpoint after.

use super::{Control, EventLevel, SavedCheckpoint, StepMetrics, TrainObserver, TrainOutcome};
use crate::artifacts::checkpoint;
use crate::domain::hyperparams::TrainingConfig;
use crate::tasks::sequence_classification::run_classification;
use crate::tasks::sequence_classification::tests::{config, fixture, job, Recorder};

/// Never pauses; a cancel "arrives" at the `at`-th poll of `cancel_requested` (1-based).
struct CancelAt {
    rec: Recorder,
    polls: usize,
    at: usize,
}

impl TrainObserver for CancelAt {
    fn on_event(&mut self, level: EventLevel, message: String) {
        self.rec.on_event(level, message);
    }
    fn on_step(&mut self, metrics: &StepMetrics) {
        self.rec.on_step(metrics);
    }
    fn on_checkpoint(&mut self, checkpoint: &SavedCheckpoint) {
        self.rec.on_checkpoint(checkpoint);
    }
    fn control(&mut self) -> Control {
        Control::Continue
    }
    fn cancel_requested(&mut self) -> bool {
        self.polls += 1;
        self.polls >= self.at
    }
}

/// 16 examples, batches of 4, two micro-batches per step: 2 steps per epoch, a checkpoint
/// after every step. Polls per step: one before each micro-batch, one before the update,
/// one after the evaluation, one before the checkpoint (5).
fn two_micro_batches() -> TrainingConfig {
    TrainingConfig {
        gradient_accumulation_steps: 2,
        save_steps: Some(1),
        ..config(4, 1e-2, 3)
    }
}

/// Runs with a cancel at poll `poll`; returns the observer, the outcome and the steps of the
/// checkpoint directories on disk.
fn cancel_at(poll: usize, work: &str) -> (CancelAt, TrainOutcome, Vec<usize>) {
    let fx = fixture();
    let job = job(&fx, work, two_micro_batches(), true);
    let mut observer = CancelAt {
        rec: Recorder::default(),
        polls: 0,
        at: poll,
    };
    let outcome = run_classification(&job, &mut observer).expect("run");
    let saved = checkpoint::list_checkpoints(&job.work_dir).expect("list");
    let on_disk = saved.iter().map(|(step, _)| *step).collect();
    (observer, outcome, on_disk)
}

#[test]
fn a_cancel_between_micro_batches_drops_the_step_unreported_and_unsaved() {
    // Poll 7 is the one before step 2's second micro-batch.
    let (observer, outcome, saved) = cancel_at(7, "mid-step");
    assert!(matches!(outcome, TrainOutcome::Cancelled), "{outcome:?}");
    let steps: Vec<usize> = observer.rec.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, vec![1]);
    let checkpoints: Vec<usize> = observer.rec.checkpoints.iter().map(|c| c.step).collect();
    assert_eq!(checkpoints, vec![1]);
    assert_eq!(saved, vec![1], "no step-2 on disk");
    assert_eq!(observer.polls, 7, "nothing polled after the cancel");
}

#[test]
fn a_cancel_during_the_evaluation_reports_and_saves_nothing_of_that_step() {
    // Poll 4 comes right after step 1's evaluation.
    let (observer, outcome, saved) = cancel_at(4, "mid-eval");
    assert!(matches!(outcome, TrainOutcome::Cancelled), "{outcome:?}");
    assert!(observer.rec.steps.is_empty());
    assert!(observer.rec.checkpoints.is_empty());
    assert!(saved.is_empty());
}
