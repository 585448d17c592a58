//! The final report of an image-classification run: the best checkpoint's classification
//! report and confusion matrix on the validation set (the training set without one).

use serde_json::{json, Value};

use super::train::{ImageTask, IMAGE_METRICS};
use crate::tasks::sequence_classification::report::best_checkpoint_report;
use crate::train::runner::Trainer;
use crate::train::summary::results_csv;
use crate::train::{TrainError, TrainObserver, TrainSummary};

pub(crate) fn build_summary(
    trainer: &Trainer,
    task: &ImageTask,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary, TrainError> {
    let (best_step, best_dir) = trainer.load_best()?;
    let (split, samples) = match task.valid.as_deref() {
        Some(valid) => ("validation", valid),
        None => ("train", task.train.as_slice()),
    };
    let evaluation = task.evaluate_set(samples)?;
    let mut report =
        best_checkpoint_report(&evaluation, &task.job.labels, split, best_step, observer);
    if let Value::Object(map) = &mut report {
        map.insert("image_size".into(), json!(task.prep.size));
    }
    Ok(TrainSummary {
        best_step,
        best_checkpoint: best_dir,
        trained_tokens: trainer.state.tokens_seen,
        results_csv: results_csv(&trainer.state.history, &IMAGE_METRICS),
        report,
        checkpoints: trainer.saved_checkpoints(),
    })
}
