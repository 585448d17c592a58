//! Classification metrics: accuracy, macro F1, per-class precision/recall/F1/support and
//! the confusion matrix, plus a report JSON shaped like sklearn's `classification_report`
//! (with `zero_division=0`: an undefined ratio counts as 0).

use serde_json::{json, Value};

/// Confusion matrix over `n` classes: `counts[true][predicted]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    pub counts: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

impl Confusion {
    /// Labels outside `0..n_classes` are ignored; callers map every label to an id first.
    pub fn new(n_classes: usize, truth: &[usize], predicted: &[usize]) -> Self {
        let mut counts = vec![vec![0u64; n_classes]; n_classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            if t < n_classes && p < n_classes {
                counts[t][p] += 1;
            }
        }
        Self { counts }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let correct = (0..self.counts.len()).map(|i| self.counts[i][i]).sum();
        ratio(correct, self.total())
    }

    pub fn class_scores(&self, class: usize) -> ClassScores {
        let true_positive = self.counts[class][class];
        let support: u64 = self.counts[class].iter().sum();
        let predicted: u64 = self.counts.iter().map(|row| row[class]).sum();
        let precision = ratio(true_positive, predicted);
        let recall = ratio(true_positive, support);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        ClassScores {
            precision,
            recall,
            f1,
            support,
        }
    }

    /// Unweighted mean of the per-class F1 over all classes (sklearn `average="macro"`
    /// with `labels` = every class, so a class absent from the data counts as 0).
    pub fn macro_f1(&self) -> f64 {
        let n = self.counts.len();
        if n == 0 {
            return 0.0;
        }
        (0..n).map(|c| self.class_scores(c).f1).sum::<f64>() / n as f64
    }

    /// sklearn-like report: `labels`, `per_class`, `accuracy`, `macro_avg`, `weighted_avg`,
    /// `confusion_matrix` (rows = true label, columns = predicted label).
    pub fn report(&self, labels: &[String]) -> Value {
        let scores: Vec<ClassScores> = (0..self.counts.len())
            .map(|c| self.class_scores(c))
            .collect();
        let per_class: serde_json::Map<String, Value> = labels
            .iter()
            .zip(&scores)
            .map(|(label, s)| {
                (
                    label.clone(),
                    scores_json(s.precision, s.recall, s.f1, s.support),
                )
            })
            .collect();
        let total = self.total();
        let n = scores.len().max(1) as f64;
        let macro_avg = scores_json(
            scores.iter().map(|s| s.precision).sum::<f64>() / n,
            scores.iter().map(|s| s.recall).sum::<f64>() / n,
            scores.iter().map(|s| s.f1).sum::<f64>() / n,
            total,
        );
        let weighted = |field: fn(&ClassScores) -> f64| {
            if total == 0 {
                0.0
            } else {
                scores
                    .iter()
                    .map(|s| field(s) * s.support as f64)
                    .sum::<f64>()
                    / total as f64
            }
        };
        let weighted_avg = scores_json(
            weighted(|s| s.precision),
            weighted(|s| s.recall),
            weighted(|s| s.f1),
            total,
        );
        json!({
            "labels": labels,
            "per_class": per_class,
            "accuracy": self.accuracy(),
            "macro_avg": macro_avg,
            "weighted_avg": weighted_avg,
            "confusion_matrix": self.counts,
        })
    }
}

fn scores_json(precision: f64, recall: f64, f1: f64, support: u64) -> Value {
    json!({"precision": precision, "recall": recall, "f1-score": f1, "support": support})
}

#[cfg(test)]
mod tests {
    use super::*;

    // truth/pred chosen so every ratio is a simple fraction; numbers checked against
    // sklearn.metrics.classification_report by hand.
    fn example() -> Confusion {
        let truth = [0, 0, 0, 1, 1, 2];
        let predicted = [0, 0, 1, 1, 2, 2];
        Confusion::new(3, &truth, &predicted)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn confusion_rows_are_truth() {
        assert_eq!(
            example().counts,
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]
        );
        assert_eq!(example().total(), 6);
    }

    #[test]
    fn accuracy_and_class_scores() {
        let c = example();
        assert!(close(c.accuracy(), 4.0 / 6.0));
        let s0 = c.class_scores(0);
        assert!(close(s0.precision, 1.0) && close(s0.recall, 2.0 / 3.0) && close(s0.f1, 0.8));
        assert_eq!(s0.support, 3);
        let s1 = c.class_scores(1);
        assert!(close(s1.precision, 0.5) && close(s1.recall, 0.5) && close(s1.f1, 0.5));
        let s2 = c.class_scores(2);
        assert!(close(s2.precision, 0.5) && close(s2.recall, 1.0) && close(s2.f1, 2.0 / 3.0));
        assert!(close(c.macro_f1(), (0.8 + 0.5 + 2.0 / 3.0) / 3.0));
    }

    #[test]
    fn absent_class_scores_zero() {
        let c = Confusion::new(3, &[0, 1], &[0, 1]);
        let s = c.class_scores(2);
        assert_eq!((s.precision, s.recall, s.f1, s.support), (0.0, 0.0, 0.0, 0));
        assert!(close(c.macro_f1(), 2.0 / 3.0));
        assert_eq!(Confusion::new(2, &[], &[]).accuracy(), 0.0);
    }

    #[test]
    fn report_has_sklearn_fields() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let report = example().report(&labels);
        assert_eq!(report["labels"], json!(["a", "b", "c"]));
        assert_eq!(report["per_class"]["a"]["support"], json!(3));
        assert!(close(
            report["per_class"]["c"]["recall"].as_f64().expect("recall"),
            1.0
        ));
        assert!(close(
            report["accuracy"].as_f64().expect("accuracy"),
            4.0 / 6.0
        ));
        let macro_p = report["macro_avg"]["precision"]
            .as_f64()
            .expect("macro precision");
        assert!(close(macro_p, (1.0 + 0.5 + 0.5) / 3.0));
        let weighted_r = report["weighted_avg"]["recall"]
            .as_f64()
            .expect("weighted recall");
        // Weighted recall always equals accuracy.
        assert!(close(weighted_r, 4.0 / 6.0));
        let weighted_f1 = report["weighted_avg"]["f1-score"]
            .as_f64()
            .expect("weighted f1");
        assert!(close(
            weighted_f1,
            (3.0 * 0.8 + 2.0 * 0.5 + 2.0 / 3.0) / 6.0
        ));
        assert_eq!(report["macro_avg"]["support"], json!(6));
        assert_eq!(
            report["confusion_matrix"],
            json!([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
        );
    }
}
