//! The final report of an image-classification run: the best checkpoint's classification
//! report and confusion matrix on the validation set (the training set without one).

use serde_json::{json, Value};

use super::train::{ImageTask, IMAGE_METRICS};
use crate::train::runner::Trainer;
use crate::train::summary::results_csv;
use crate::train::{EventLevel, TrainError, TrainObserver, TrainSummary};

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
    let mut report = evaluation.confusion.report(&task.job.labels);
    if let Value::Object(map) = &mut report {
        map.insert("split".into(), json!(split));
        map.insert("loss".into(), json!(evaluation.loss));
        map.insert("macro_f1".into(), json!(evaluation.macro_f1));
        map.insert("step".into(), json!(best_step));
        map.insert("image_size".into(), json!(task.prep.size));
    }
    observer.on_event(
        EventLevel::Info,
        format!(
            "Best checkpoint: step {best_step} ({split} accuracy {:.4})",
            evaluation.accuracy
        ),
    );
    Ok(TrainSummary {
        best_step,
        best_checkpoint: best_dir,
        trained_tokens: trainer.state.tokens_seen,
        results_csv: results_csv(&trainer.state.history, &IMAGE_METRICS),
        report,
        checkpoints: trainer.saved_checkpoints(),
    })
}
