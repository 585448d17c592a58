//! Choosing the best model and summarising a finished run: results CSV, checkpoint
//! metrics and the classification report of the best checkpoint.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use super::checkpoint::{self, MetricsRow, TRAINABLE_FILE};
use super::classify::{Run, TrainSummary};
use super::evaluate::{evaluate, EvalSet};
use super::{EventLevel, SavedCheckpoint, TrainError, TrainObserver};

pub const RESULTS_CSV_HEADER: &str =
    "step,train_loss,train_accuracy,valid_loss,valid_accuracy,valid_f1";

/// The metric that picks the best checkpoint (`metric_for_best_model`).
#[derive(Debug, Clone, PartialEq)]
pub struct BestMetric {
    pub name: String,
}

impl BestMetric {
    /// Default: `valid_accuracy` with a validation set, none (the last checkpoint is the
    /// best) without. A validation metric without validation data falls back to none.
    pub fn resolve(
        requested: Option<&str>,
        has_valid: bool,
        observer: &mut dyn TrainObserver,
    ) -> Option<Self> {
        let name = match requested {
            Some(name) => name.to_string(),
            None if has_valid => "valid_accuracy".to_string(),
            None => return None,
        };
        let metric = Self { name };
        if !metric.is_train_metric() && !has_valid {
            observer.on_event(
                EventLevel::Warn,
                format!(
                    "`metric_for_best_model` is `{}` but there is no validation file; the last checkpoint is used",
                    metric.name
                ),
            );
            return None;
        }
        Some(metric)
    }

    pub fn is_train_metric(&self) -> bool {
        self.name.starts_with("train_")
    }

    /// Losses are minimised, everything else maximised.
    pub fn is_better(&self, candidate: f64, best: f64) -> bool {
        if self.name.ends_with("_loss") {
            candidate < best
        } else {
            candidate > best
        }
    }

    /// `full_valid_*` (OpenAI's names) map to our validation metrics, which are always
    /// computed on the full validation set.
    pub fn value(&self, row: &MetricsRow) -> Option<f64> {
        match self.name.as_str() {
            "train_loss" => Some(row.train_loss),
            "train_accuracy" => Some(row.train_accuracy),
            "valid_loss" | "full_valid_loss" => row.valid_loss,
            "valid_accuracy" | "full_valid_mean_token_accuracy" => row.valid_accuracy,
            "valid_f1" => row.valid_f1,
            _ => None,
        }
    }
}

fn cell(value: Option<f64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// One line per optimizer step; validation cells are blank on steps without evaluation.
pub fn results_csv(history: &[MetricsRow]) -> String {
    let mut out = String::from(RESULTS_CSV_HEADER);
    out.push('\n');
    for row in history {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}",
            row.step,
            row.train_loss,
            row.train_accuracy,
            cell(row.valid_loss),
            cell(row.valid_accuracy),
            cell(row.valid_f1)
        );
    }
    out
}

/// The metrics JSON of the checkpoint at `step` (OpenAI puts one in each checkpoint).
pub fn checkpoint_metrics(history: &[MetricsRow], step: usize) -> Value {
    let mut metrics = Map::new();
    metrics.insert("step".into(), json!(step));
    if let Some(row) = history.iter().rev().find(|r| r.step == step) {
        metrics.insert("train_loss".into(), json!(row.train_loss));
        metrics.insert("train_accuracy".into(), json!(row.train_accuracy));
        for (key, value) in [
            ("valid_loss", row.valid_loss),
            ("valid_accuracy", row.valid_accuracy),
            ("valid_f1", row.valid_f1),
        ] {
            if let Some(v) = value {
                metrics.insert(key.into(), json!(v));
            }
        }
    }
    Value::Object(metrics)
}

/// Loads the best checkpoint's weights into the run's model and reports on the
/// validation set (the training set when there is none).
pub(crate) fn build_summary(
    run: &mut Run,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary, TrainError> {
    let work_dir = &run.job.work_dir;
    let best_step = run
        .state
        .best_step
        .or_else(|| run.state.checkpoints.last().map(|c| c.step))
        .ok_or_else(|| TrainError::InvalidData("training finished without a checkpoint".into()))?;
    let best_dir = checkpoint::step_dir(work_dir, best_step);
    let tensors = checkpoint::read_tensors(&best_dir, TRAINABLE_FILE, &run.job.device)?;
    run.model.load_trainable(&tensors)?;
    let (split, examples) = match run.valid.as_deref() {
        Some(valid) => ("validation", valid),
        None => ("train", run.train.as_slice()),
    };
    let set = EvalSet {
        examples,
        n_labels: run.job.labels.len(),
        batch_size: run.job.config.batch_size,
        pad_id: run.pad_id,
    };
    let evaluation = evaluate(&run.model, &set, &run.job.device)?;
    let mut report = evaluation.confusion.report(&run.job.labels);
    if let Value::Object(map) = &mut report {
        map.insert("split".into(), json!(split));
        map.insert("loss".into(), json!(evaluation.loss));
        map.insert("macro_f1".into(), json!(evaluation.macro_f1));
        map.insert("step".into(), json!(best_step));
    }
    let checkpoints = run
        .state
        .checkpoints
        .iter()
        .map(|c| SavedCheckpoint {
            step: c.step,
            dir: checkpoint::step_dir(work_dir, c.step),
            metrics: checkpoint_metrics(&run.state.history, c.step),
            epoch_end: c.epoch_end,
        })
        .collect();
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
        trained_tokens: run.state.tokens_seen,
        results_csv: results_csv(&run.state.history),
        report,
        checkpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: usize, valid: Option<f64>) -> MetricsRow {
        MetricsRow {
            step,
            train_loss: 0.5,
            train_accuracy: 0.75,
            valid_loss: valid,
            valid_accuracy: valid,
            valid_f1: valid,
        }
    }

    #[test]
    fn csv_leaves_cells_blank_without_evaluation() {
        let csv = results_csv(&[row(1, None), row(2, Some(0.25))]);
        assert_eq!(
            csv,
            format!("{RESULTS_CSV_HEADER}\n1,0.5,0.75,,,\n2,0.5,0.75,0.25,0.25,0.25\n")
        );
    }

    #[test]
    fn losses_are_minimised() {
        let loss = BestMetric {
            name: "valid_loss".into(),
        };
        assert!(loss.is_better(0.1, 0.2));
        let acc = BestMetric {
            name: "valid_accuracy".into(),
        };
        assert!(acc.is_better(0.9, 0.8) && !acc.is_better(0.8, 0.8));
        assert_eq!(
            BestMetric {
                name: "full_valid_loss".into()
            }
            .value(&row(1, Some(0.3))),
            Some(0.3)
        );
    }

    #[test]
    fn checkpoint_metrics_skip_missing_validation() {
        let m = checkpoint_metrics(&[row(1, None)], 1);
        assert_eq!(
            m,
            json!({"step": 1, "train_loss": 0.5, "train_accuracy": 0.75})
        );
    }
}
