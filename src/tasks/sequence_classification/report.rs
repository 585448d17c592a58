//! The final report of a classification run: the best checkpoint's classification report
//! and confusion matrix (sklearn-like) on the validation set.

use serde_json::{json, Value};

use super::evaluate::Evaluation;
use super::train::{ClassifyTask, CLASSIFICATION_METRICS};
use crate::train::runner::Trainer;
use crate::train::summary::results_csv;
use crate::train::{EventLevel, TrainError, TrainObserver, TrainSummary};

/// The sklearn-like report (with confusion matrix) of the best checkpoint's evaluation on
/// `split`, and the event that names it: what every classifier's final report holds (text
/// and image classification alike).
pub(crate) fn best_checkpoint_report(
    evaluation: &Evaluation,
    labels: &[String],
    split: &str,
    best_step: usize,
    observer: &mut dyn TrainObserver,
) -> Value {
    let mut report = evaluation.confusion.report(labels);
    if let Value::Object(map) = &mut report {
        map.insert("split".into(), json!(split));
        map.insert("loss".into(), json!(evaluation.loss));
        map.insert("macro_f1".into(), json!(evaluation.macro_f1));
        map.insert("step".into(), json!(best_step));
    }
    observer.on_event(
        EventLevel::Info,
        format!(
            "Best checkpoint: step {best_step} ({split} accuracy {:.4})",
            evaluation.accuracy
        ),
    );
    report
}

/// Loads the best checkpoint's weights into the task's model and reports on the
/// validation set (the training set when there is none).
pub(crate) fn build_summary(
    trainer: &Trainer,
    task: &ClassifyTask,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary, TrainError> {
    let (best_step, best_dir) = trainer.load_best()?;
    let (split, examples) = match task.valid.as_deref() {
        Some(valid) => ("validation", valid),
        None => ("train", task.train.as_slice()),
    };
    let evaluation = task.evaluate_set(examples)?;
    let report = best_checkpoint_report(&evaluation, &task.job.labels, split, best_step, observer);
    Ok(TrainSummary {
        best_step,
        best_checkpoint: best_dir,
        trained_tokens: trainer.state.tokens_seen,
        results_csv: results_csv(&trainer.state.history, &CLASSIFICATION_METRICS),
        report,
        checkpoints: trainer.saved_checkpoints(),
    })
}
