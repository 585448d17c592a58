//! Choosing the best model and summarising a finished run: results CSV, checkpoint
//! metrics and the classification report of the best checkpoint.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use super::checkpoint::MetricsRow;
use super::classify::{ClassifyTask, TrainSummary};
use super::runner::Trainer;
use super::{EventLevel, TrainError, TrainObserver};

pub const RESULTS_CSV_HEADER: &str =
    "step,train_loss,train_accuracy,valid_loss,valid_accuracy,valid_f1";

/// OpenAI's results CSV for chat / prompt-completion fine-tunes.
pub const SFT_RESULTS_CSV_HEADER: &str = "step,train_loss,train_mean_token_accuracy,valid_loss,valid_mean_token_accuracy,full_valid_loss,full_valid_mean_token_accuracy";

/// The metric that picks the best checkpoint (`metric_for_best_model`).
#[derive(Debug, Clone, PartialEq)]
pub struct BestMetric {
    pub name: String,
    /// Classification evaluates the whole validation set every time, so its `valid_*`
    /// metrics are also the `full_valid_*` ones; SFT evaluates one batch as `valid_*`.
    pub valid_is_full: bool,
}

impl BestMetric {
    /// Classification. Default: `valid_accuracy` with a validation set, none (the last
    /// checkpoint is the best) without. A validation metric without validation data
    /// falls back to none.
    pub fn resolve(
        requested: Option<&str>,
        has_valid: bool,
        observer: &mut dyn TrainObserver,
    ) -> Option<Self> {
        Self::resolve_with(requested, ("valid_accuracy", true), has_valid, observer)
    }

    /// SFT. Default: `full_valid_loss` with a validation set, else the last checkpoint.
    pub fn resolve_lm(
        requested: Option<&str>,
        has_valid: bool,
        observer: &mut dyn TrainObserver,
    ) -> Option<Self> {
        Self::resolve_with(requested, ("full_valid_loss", false), has_valid, observer)
    }

    fn resolve_with(
        requested: Option<&str>,
        (default, valid_is_full): (&str, bool),
        has_valid: bool,
        observer: &mut dyn TrainObserver,
    ) -> Option<Self> {
        let name = match requested {
            Some(name) => name.to_string(),
            None if has_valid => default.to_string(),
            None => return None,
        };
        let metric = Self {
            name,
            valid_is_full,
        };
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

    /// The metric's value in `row`; `None` on steps that did not compute it.
    pub fn value(&self, row: &MetricsRow) -> Option<f64> {
        let full = |full: Option<f64>, valid: Option<f64>| {
            if self.valid_is_full {
                valid
            } else {
                full
            }
        };
        match self.name.as_str() {
            "train_loss" => Some(row.train_loss),
            "train_accuracy" | "train_mean_token_accuracy" => Some(row.train_accuracy),
            "valid_loss" => row.valid_loss,
            "valid_accuracy" | "valid_mean_token_accuracy" => row.valid_accuracy,
            "valid_f1" => row.valid_f1,
            "full_valid_loss" => full(row.full_valid_loss, row.valid_loss),
            "full_valid_accuracy" | "full_valid_mean_token_accuracy" => {
                full(row.full_valid_accuracy, row.valid_accuracy)
            }
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

/// [`SFT_RESULTS_CSV_HEADER`] rows: blank cells where a step had no (full) validation.
pub fn sft_results_csv(history: &[MetricsRow]) -> String {
    let mut out = String::from(SFT_RESULTS_CSV_HEADER);
    out.push('\n');
    for row in history {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{}",
            row.step,
            row.train_loss,
            row.train_accuracy,
            cell(row.valid_loss),
            cell(row.valid_accuracy),
            cell(row.full_valid_loss),
            cell(row.full_valid_accuracy)
        );
    }
    out
}

/// Names of a task's metrics in checkpoint JSON (OpenAI's names for SFT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricNames {
    Classification,
    Sft,
}

/// The metrics JSON of the checkpoint at `step` (OpenAI puts one in each checkpoint).
pub fn checkpoint_metrics(history: &[MetricsRow], step: usize, names: MetricNames) -> Value {
    let mut metrics = Map::new();
    metrics.insert("step".into(), json!(step));
    if let Some(row) = history.iter().rev().find(|r| r.step == step) {
        let cells = match names {
            MetricNames::Classification => vec![
                ("train_loss", Some(row.train_loss)),
                ("train_accuracy", Some(row.train_accuracy)),
                ("valid_loss", row.valid_loss),
                ("valid_accuracy", row.valid_accuracy),
                ("valid_f1", row.valid_f1),
            ],
            MetricNames::Sft => vec![
                ("train_loss", Some(row.train_loss)),
                ("train_mean_token_accuracy", Some(row.train_accuracy)),
                ("valid_loss", row.valid_loss),
                ("valid_mean_token_accuracy", row.valid_accuracy),
                ("full_valid_loss", row.full_valid_loss),
                ("full_valid_mean_token_accuracy", row.full_valid_accuracy),
            ],
        };
        for (key, value) in cells {
            if let Some(v) = value {
                metrics.insert(key.into(), json!(v));
            }
        }
    }
    Value::Object(metrics)
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
    let mut report = evaluation.confusion.report(&task.job.labels);
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
    Ok(TrainSummary {
        best_step,
        best_checkpoint: best_dir,
        trained_tokens: trainer.state.tokens_seen,
        results_csv: results_csv(&trainer.state.history),
        report,
        checkpoints: trainer.saved_checkpoints(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: usize, valid: Option<f64>) -> MetricsRow {
        MetricsRow {
            valid_loss: valid,
            valid_accuracy: valid,
            valid_f1: valid,
            ..MetricsRow::train_only(step, 0.5, 0.75)
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

    fn metric(name: &str, valid_is_full: bool) -> BestMetric {
        BestMetric {
            name: name.into(),
            valid_is_full,
        }
    }

    #[test]
    fn losses_are_minimised() {
        assert!(metric("valid_loss", true).is_better(0.1, 0.2));
        let acc = metric("valid_accuracy", true);
        assert!(acc.is_better(0.9, 0.8) && !acc.is_better(0.8, 0.8));
        assert_eq!(
            metric("full_valid_loss", true).value(&row(1, Some(0.3))),
            Some(0.3)
        );
    }

    #[test]
    fn sft_full_metrics_come_from_full_validation_only() {
        let batch_only = row(1, Some(0.3));
        let full_loss = metric("full_valid_loss", false);
        assert_eq!(full_loss.value(&batch_only), None);
        let full = MetricsRow {
            full_valid_loss: Some(0.2),
            full_valid_accuracy: Some(0.6),
            ..batch_only.clone()
        };
        assert_eq!(full_loss.value(&full), Some(0.2));
        assert_eq!(
            metric("full_valid_mean_token_accuracy", false).value(&full),
            Some(0.6)
        );
        assert_eq!(
            metric("valid_mean_token_accuracy", false).value(&full),
            Some(0.3)
        );
    }

    #[test]
    fn sft_csv_and_checkpoint_metrics_use_openai_names() {
        let full = MetricsRow {
            full_valid_loss: Some(0.2),
            full_valid_accuracy: Some(0.6),
            ..row(2, Some(0.25))
        };
        let csv = sft_results_csv(&[row(1, None), full.clone()]);
        assert_eq!(
            csv,
            format!("{SFT_RESULTS_CSV_HEADER}\n1,0.5,0.75,,,,\n2,0.5,0.75,0.25,0.25,0.2,0.6\n")
        );
        assert_eq!(
            checkpoint_metrics(&[full], 2, MetricNames::Sft),
            json!({"step": 2, "train_loss": 0.5, "train_mean_token_accuracy": 0.75,
                   "valid_loss": 0.25, "valid_mean_token_accuracy": 0.25,
                   "full_valid_loss": 0.2, "full_valid_mean_token_accuracy": 0.6})
        );
    }

    #[test]
    fn checkpoint_metrics_skip_missing_validation() {
        let m = checkpoint_metrics(&[row(1, None)], 1, MetricNames::Classification);
        assert_eq!(
            m,
            json!({"step": 1, "train_loss": 0.5, "train_accuracy": 0.75})
        );
    }
}
