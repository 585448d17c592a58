//! The final report of a QA run: the best checkpoint's scores as the official SQuAD script
//! prints them (`exact`, `f1`, `total`, and for v2 the `HasAns_*` / `NoAns_*` splits), on
//! the validation set (the training set when there is none).

use serde_json::{json, Map, Value};

use super::metrics::{SplitScores, SquadScores};
use super::train::{QaTask, QA_METRICS};
use crate::train::runner::Trainer;
use crate::train::summary::results_csv;
use crate::train::{EventLevel, TrainError, TrainObserver, TrainSummary};

/// `{"exact", "f1", "total", "HasAns_exact", …}` as `evaluate-v2.0.py` writes it.
pub fn squad_report(scores: &SquadScores) -> Map<String, Value> {
    let mut out = Map::new();
    let mut put = |prefix: &str, split: &SplitScores| {
        out.insert(format!("{prefix}exact"), json!(split.exact));
        out.insert(format!("{prefix}f1"), json!(split.f1));
        out.insert(format!("{prefix}total"), json!(split.total));
    };
    put("", &scores.all);
    if let Some(has) = &scores.has_answer {
        put("HasAns_", has);
    }
    if let Some(no) = &scores.no_answer {
        put("NoAns_", no);
    }
    out
}

/// Loads the best checkpoint's weights into the task's model and scores it.
pub(crate) fn build_summary(
    trainer: &Trainer,
    task: &QaTask,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary, TrainError> {
    let (best_step, best_dir) = trainer.load_best()?;
    let evaluation = match &task.valid {
        Some((examples, windows)) => ("validation", task.evaluate_set(examples, windows)?),
        None => ("train", task.evaluate_set(&task.job.train, &task.train)?),
    };
    let (split, evaluation) = evaluation;
    let mut report = squad_report(&evaluation.scores);
    report.insert("split".into(), json!(split));
    report.insert("loss".into(), json!(evaluation.loss));
    report.insert("step".into(), json!(best_step));
    observer.on_event(
        EventLevel::Info,
        format!(
            "Best checkpoint: step {best_step} ({split} exact match {:.2}, F1 {:.2})",
            evaluation.scores.all.exact, evaluation.scores.all.f1
        ),
    );
    Ok(TrainSummary {
        best_step,
        best_checkpoint: best_dir,
        trained_tokens: trainer.state.tokens_seen,
        results_csv: results_csv(&trainer.state.history, &QA_METRICS),
        report: Value::Object(report),
        checkpoints: trainer.saved_checkpoints(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_uses_the_official_script_names() {
        let split = |exact, f1, total| SplitScores { exact, f1, total };
        let scores = SquadScores {
            all: split(50.0, 70.0, 4),
            has_answer: Some(split(50.0, 90.0, 2)),
            no_answer: Some(split(50.0, 50.0, 2)),
        };
        let report = Value::Object(squad_report(&scores));
        assert_eq!(
            report,
            json!({"exact": 50.0, "f1": 70.0, "total": 4,
                   "HasAns_exact": 50.0, "HasAns_f1": 90.0, "HasAns_total": 2,
                   "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2})
        );
        let v1 = SquadScores {
            all: split(100.0, 100.0, 1),
            has_answer: None,
            no_answer: None,
        };
        assert_eq!(
            Value::Object(squad_report(&v1)),
            json!({"exact": 100.0, "f1": 100.0, "total": 1})
        );
    }
}
