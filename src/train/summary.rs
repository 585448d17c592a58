//! Choosing the best model and summarising a finished run: its outcome, results CSV and
//! checkpoint metrics, all driven by the task's metric names.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::named_metrics::{MetricNames, MetricsRow};
use super::{EventLevel, SavedCheckpoint, TrainObserver};

/// The results CSV of sequence classification (what `CLASSIFICATION_METRICS` declares).
pub const RESULTS_CSV_HEADER: &str =
    "step,train_loss,train_accuracy,valid_loss,valid_accuracy,valid_f1";

/// OpenAI's results CSV for chat / prompt-completion fine-tunes.
pub const SFT_RESULTS_CSV_HEADER: &str = "step,train_loss,train_mean_token_accuracy,valid_loss,valid_mean_token_accuracy,full_valid_loss,full_valid_mean_token_accuracy";

#[derive(Debug)]
pub enum TrainOutcome {
    Completed(TrainSummary),
    /// Paused or shut down after saving a checkpoint at `step` (no checkpoint at step 0:
    /// a job stopped before its first step simply starts over).
    Stopped {
        step: usize,
    },
    Cancelled,
}

#[derive(Debug)]
pub struct TrainSummary {
    pub best_step: usize,
    pub best_checkpoint: PathBuf,
    /// Non-padding tokens over all steps trained (every epoch counts).
    pub trained_tokens: u64,
    /// `step,<the task's metrics…>` (`results_csv`).
    pub results_csv: String,
    /// The task's report of the best checkpoint (classification report + confusion
    /// matrix, SFT training report, …).
    pub report: serde_json::Value,
    pub checkpoints: Vec<SavedCheckpoint>,
}

/// The metric that picks the best checkpoint (`metric_for_best_model`), one of the task's
/// declared names.
#[derive(Debug, Clone, PartialEq)]
pub struct BestMetric {
    pub name: &'static str,
}

impl BestMetric {
    /// `requested`, or the task's default when there is validation data; none (the last
    /// checkpoint is the best) otherwise. A validation metric without validation data, or
    /// a name the task does not report, falls back to none with a warning.
    pub fn resolve(
        requested: Option<&str>,
        names: &MetricNames,
        has_valid: bool,
        observer: &mut dyn TrainObserver,
    ) -> Option<Self> {
        let asked = match requested {
            Some(name) => name,
            None if has_valid => names.default_best,
            None => return None,
        };
        let Some(name) = names.resolve(asked) else {
            let known: Vec<&str> = names.columns().collect();
            observer.on_event(
                EventLevel::Warn,
                format!(
                    "`metric_for_best_model` is `{asked}`, which this task does not report (it reports {}); the last checkpoint is used",
                    known.join(", ")
                ),
            );
            return None;
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

    /// The metric's value in `row`; `None` on steps that did not compute it.
    pub fn value(&self, row: &MetricsRow) -> Option<f64> {
        row.get(self.name)
    }
}

/// One line per optimizer step, a column per declared metric; cells are blank on steps
/// that did not compute the metric.
pub fn results_csv(history: &[MetricsRow], names: &MetricNames) -> String {
    let mut out = names.csv_header();
    out.push('\n');
    for row in history {
        let _ = write!(out, "{}", row.step);
        for name in names.columns() {
            let _ = write!(out, ",{}", cell(row.get(name)));
        }
        out.push('\n');
    }
    out
}

fn cell(value: Option<f64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// The metrics JSON of the checkpoint at `step` (OpenAI puts one in each checkpoint): the
/// declared metrics that step computed.
pub fn checkpoint_metrics(history: &[MetricsRow], step: usize, names: &MetricNames) -> Value {
    let mut metrics = Map::new();
    metrics.insert("step".into(), json!(step));
    if let Some(row) = history.iter().rev().find(|r| r.step == step) {
        for name in names.columns() {
            if let Some(value) = row.get(name) {
                metrics.insert(name.into(), json!(value));
            }
        }
    }
    Value::Object(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::sequence_classification::CLASSIFICATION_METRICS;
    use crate::tasks::sft::SFT_METRICS;
    use crate::train::{Control, StepMetrics};

    fn row(step: usize, valid: Option<f64>) -> MetricsRow {
        let mut row = MetricsRow::new(step);
        row.set("train_loss", 0.5);
        row.set("train_accuracy", 0.75);
        if let Some(v) = valid {
            for name in ["valid_loss", "valid_accuracy", "valid_f1"] {
                row.set(name, v);
            }
        }
        row
    }

    fn sft_row(step: usize, valid: Option<f64>, full: Option<(f64, f64)>) -> MetricsRow {
        let mut row = MetricsRow::new(step);
        row.set("train_loss", 0.5);
        row.set("train_mean_token_accuracy", 0.75);
        if let Some(v) = valid {
            row.set("valid_loss", v);
            row.set("valid_mean_token_accuracy", v);
        }
        if let Some((loss, accuracy)) = full {
            row.set("full_valid_loss", loss);
            row.set("full_valid_mean_token_accuracy", accuracy);
        }
        row
    }

    #[derive(Default)]
    struct Events(Vec<String>);

    impl TrainObserver for Events {
        fn on_event(&mut self, _level: EventLevel, message: String) {
            self.0.push(message);
        }
        fn on_step(&mut self, _metrics: &StepMetrics) {}
        fn on_checkpoint(&mut self, _checkpoint: &SavedCheckpoint) {}
        fn control(&mut self) -> Control {
            Control::Continue
        }
    }

    fn best(requested: Option<&str>, names: &MetricNames, has_valid: bool) -> Option<BestMetric> {
        BestMetric::resolve(requested, names, has_valid, &mut Events::default())
    }

    #[test]
    fn headers_are_the_declared_names() {
        assert_eq!(CLASSIFICATION_METRICS.csv_header(), RESULTS_CSV_HEADER);
        assert_eq!(SFT_METRICS.csv_header(), SFT_RESULTS_CSV_HEADER);
    }

    #[test]
    fn csv_leaves_cells_blank_without_evaluation() {
        let csv = results_csv(&[row(1, None), row(2, Some(0.25))], &CLASSIFICATION_METRICS);
        assert_eq!(
            csv,
            format!("{RESULTS_CSV_HEADER}\n1,0.5,0.75,,,\n2,0.5,0.75,0.25,0.25,0.25\n")
        );
    }

    #[test]
    fn best_metric_defaults_aliases_and_unknown_names() {
        let classify = &CLASSIFICATION_METRICS;
        assert_eq!(
            best(None, classify, true).map(|b| b.name),
            Some("valid_accuracy")
        );
        assert_eq!(best(None, classify, false), None);
        assert_eq!(
            best(None, &SFT_METRICS, true).map(|b| b.name),
            Some("full_valid_loss")
        );
        // Classification evaluates the whole validation set: `full_valid_*` are `valid_*`.
        let full = best(Some("full_valid_loss"), classify, true).expect("alias");
        assert_eq!(full.value(&row(1, Some(0.3))), Some(0.3));
        assert_eq!(
            best(Some("train_accuracy"), &SFT_METRICS, false).map(|b| b.name),
            Some("train_mean_token_accuracy")
        );
        let mut events = Events::default();
        assert_eq!(
            BestMetric::resolve(Some("valid_f1"), &SFT_METRICS, true, &mut events),
            None
        );
        assert!(events.0[0].contains("does not report"), "{:?}", events.0);
        let mut events = Events::default();
        assert_eq!(
            BestMetric::resolve(Some("valid_loss"), classify, false, &mut events),
            None
        );
        assert!(events.0[0].contains("no validation file"), "{:?}", events.0);
    }

    #[test]
    fn losses_are_minimised() {
        let loss = BestMetric { name: "valid_loss" };
        assert!(loss.is_better(0.1, 0.2));
        let acc = BestMetric {
            name: "valid_accuracy",
        };
        assert!(acc.is_better(0.9, 0.8) && !acc.is_better(0.8, 0.8));
    }

    #[test]
    fn sft_full_metrics_come_from_full_validation_only() {
        let batch_only = sft_row(1, Some(0.3), None);
        let full_loss = best(Some("full_valid_loss"), &SFT_METRICS, true).expect("full");
        assert_eq!(full_loss.value(&batch_only), None);
        let full = sft_row(1, Some(0.3), Some((0.2, 0.6)));
        assert_eq!(full_loss.value(&full), Some(0.2));
        let full_accuracy = best(Some("full_valid_accuracy"), &SFT_METRICS, true).expect("a");
        assert_eq!(full_accuracy.value(&full), Some(0.6));
        let batch_accuracy = best(Some("valid_mean_token_accuracy"), &SFT_METRICS, true);
        assert_eq!(batch_accuracy.expect("b").value(&full), Some(0.3));
    }

    #[test]
    fn sft_csv_and_checkpoint_metrics_use_openai_names() {
        let full = sft_row(2, Some(0.25), Some((0.2, 0.6)));
        let csv = results_csv(&[sft_row(1, None, None), full.clone()], &SFT_METRICS);
        assert_eq!(
            csv,
            format!("{SFT_RESULTS_CSV_HEADER}\n1,0.5,0.75,,,,\n2,0.5,0.75,0.25,0.25,0.2,0.6\n")
        );
        assert_eq!(
            checkpoint_metrics(&[full], 2, &SFT_METRICS),
            json!({"step": 2, "train_loss": 0.5, "train_mean_token_accuracy": 0.75,
                   "valid_loss": 0.25, "valid_mean_token_accuracy": 0.25,
                   "full_valid_loss": 0.2, "full_valid_mean_token_accuracy": 0.6})
        );
    }

    #[test]
    fn checkpoint_metrics_skip_missing_validation() {
        let m = checkpoint_metrics(&[row(1, None)], 1, &CLASSIFICATION_METRICS);
        assert_eq!(
            m,
            json!({"step": 1, "train_loss": 0.5, "train_accuracy": 0.75})
        );
    }

    #[test]
    fn a_new_task_adds_metrics_without_train_changes() {
        const QA: MetricNames = MetricNames {
            train: &["train_loss"],
            valid: &["valid_loss", "valid_exact_match", "valid_f1"],
            train_accuracy: None,
            default_best: "valid_f1",
            aliases: &[],
        };
        let mut r = MetricsRow::new(3);
        r.set("train_loss", 1.5);
        r.set("valid_exact_match", 0.5);
        assert_eq!(
            results_csv(&[r.clone()], &QA),
            "step,train_loss,valid_loss,valid_exact_match,valid_f1\n3,1.5,,0.5,\n"
        );
        assert_eq!(
            checkpoint_metrics(&[r], 3, &QA),
            json!({"step": 3, "train_loss": 1.5, "valid_exact_match": 0.5})
        );
        assert_eq!(best(None, &QA, true).map(|b| b.name), Some("valid_f1"));
    }
}
