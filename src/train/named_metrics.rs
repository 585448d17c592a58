//! Metrics as named values: a task declares its metric names ([`MetricNames`]) and fills
//! them; the runner, the best-model choice, early stopping, the results CSV, event data
//! and checkpoint metrics read them by name. A new task adds metrics here without any
//! change to `train/`.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What metrics a task reports, under the names OpenAI / transformers give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricNames {
    /// Computed on every optimizer step (`train_loss` first).
    pub train: &'static [&'static str],
    /// Computed at evaluation points only.
    pub valid: &'static [&'static str],
    /// The name the runner's per-step accuracy (right predictions / units) is reported
    /// under; `None` when the task has no such accuracy.
    pub train_accuracy: Option<&'static str>,
    /// `metric_for_best_model` when none is asked and there is validation data.
    pub default_best: &'static str,
    /// Other names accepted as `metric_for_best_model`: `(asked, declared name)`.
    pub aliases: &'static [(&'static str, &'static str)],
}

impl MetricNames {
    /// Train then validation names: the results CSV columns after `step`, and the order of
    /// event data and checkpoint metrics.
    pub fn columns(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.train.iter().chain(self.valid).copied()
    }

    /// `step,<columns…>`.
    pub fn csv_header(&self) -> String {
        std::iter::once("step")
            .chain(self.columns())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The declared name `asked` stands for (itself, or through an alias).
    pub fn resolve(&self, asked: &str) -> Option<&'static str> {
        self.columns().find(|name| *name == asked).or_else(|| {
            self.aliases
                .iter()
                .find(|(alias, _)| *alias == asked)
                .map(|(_, name)| *name)
        })
    }
}

/// Named values in the order they were first set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metrics(Vec<(String, f64)>);

impl Metrics {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// Sets `name` (replacing an earlier value).
    pub fn set(&mut self, name: &str, value: f64) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(n, v)| (n.as_str(), *v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One row of the results CSV: a step and the metrics computed at it.
///
/// Stored in `state.json` as a flat object `{"step": 3, "train_loss": 0.5, …}`; a `null`
/// value (as rows written with fixed columns have for steps without evaluation) is a
/// metric that step did not compute.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsRow {
    pub step: usize,
    pub values: Metrics,
}

impl MetricsRow {
    pub fn new(step: usize) -> Self {
        Self {
            step,
            values: Metrics::default(),
        }
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name)
    }

    pub fn set(&mut self, name: &str, value: f64) {
        self.values.set(name, value);
    }

    /// Moves each value stored under an alias of one of `names`' columns to that column,
    /// unless the row already holds it. Rows of a job that started before the upgrade keep
    /// SFT's accuracies under the fixed columns' names (`train_accuracy`, `valid_accuracy`,
    /// `full_valid_accuracy`): renamed, its results CSV and checkpoint metrics show them.
    pub fn rename_aliases(&mut self, names: &MetricNames) {
        let stored: Vec<(String, f64)> = std::mem::take(&mut self.values).0;
        for (name, value) in &stored {
            let declared = names.columns().any(|column| column == name);
            let current = names.resolve(name).filter(|_| !declared);
            let target = match current {
                Some(column) if !stored.iter().any(|(n, _)| n == column) => column,
                _ => name.as_str(),
            };
            self.values.set(target, *value);
        }
    }
}

impl Serialize for MetricsRow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.values.0.len() + 1))?;
        map.serialize_entry("step", &self.step)?;
        for (name, value) in self.values.iter() {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for MetricsRow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowVisitor;

        impl<'de> Visitor<'de> for RowVisitor {
            type Value = MetricsRow;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object with `step` and named metric values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MetricsRow, A::Error> {
                let mut step = None;
                let mut values = Metrics::default();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "step" {
                        step = Some(map.next_value::<usize>()?);
                    } else if let Some(value) = map.next_value::<Option<f64>>()? {
                        values.set(&name, value);
                    }
                }
                let step =
                    step.ok_or_else(|| <A::Error as serde::de::Error>::missing_field("step"))?;
                Ok(MetricsRow { step, values })
            }
        }

        deserializer.deserialize_map(RowVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: MetricNames = MetricNames {
        train: &["train_loss", "train_accuracy"],
        valid: &["valid_loss", "valid_f1"],
        train_accuracy: Some("train_accuracy"),
        default_best: "valid_loss",
        aliases: &[("full_valid_loss", "valid_loss")],
    };

    #[test]
    fn names_give_header_and_resolve_aliases() {
        assert_eq!(
            NAMES.csv_header(),
            "step,train_loss,train_accuracy,valid_loss,valid_f1"
        );
        assert_eq!(NAMES.resolve("valid_f1"), Some("valid_f1"));
        assert_eq!(NAMES.resolve("full_valid_loss"), Some("valid_loss"));
        assert_eq!(NAMES.resolve("valid_entity_f1"), None);
    }

    #[test]
    fn set_replaces_and_keeps_order() {
        let mut m = Metrics::default();
        m.set("b", 1.0);
        m.set("a", 2.0);
        m.set("b", 3.0);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![("b", 3.0), ("a", 2.0)]);
        assert_eq!(m.get("a"), Some(2.0));
        assert_eq!(m.get("c"), None);
    }

    #[test]
    fn rows_round_trip_flat_and_old_rows_load() {
        let mut row = MetricsRow::new(4);
        row.set("train_loss", 0.5);
        row.set("valid_entity_f1", 0.25);
        let text = serde_json::to_string(&row).expect("serialize");
        assert_eq!(
            text,
            r#"{"step":4,"train_loss":0.5,"valid_entity_f1":0.25}"#
        );
        assert_eq!(
            serde_json::from_str::<MetricsRow>(&text).expect("load"),
            row
        );
        // A row as the fixed-column code wrote it.
        let old: MetricsRow = serde_json::from_str(
            r#"{"step":1,"train_loss":0.5,"train_accuracy":0.75,"valid_loss":null,"valid_accuracy":null,"valid_f1":null}"#,
        )
        .expect("old row");
        assert_eq!(old.step, 1);
        assert_eq!(
            old.values.iter().collect::<Vec<_>>(),
            vec![("train_loss", 0.5), ("train_accuracy", 0.75)]
        );
        assert!(serde_json::from_str::<MetricsRow>(r#"{"train_loss":0.5}"#).is_err());
    }

    #[test]
    fn an_sft_row_of_the_previous_version_is_renamed_to_the_current_columns() {
        // A history row of an SFT job's `state.json` as the fixed-column version wrote it.
        let mut row: MetricsRow = serde_json::from_str(
            r#"{"step":6,"train_loss":1.25,"train_accuracy":0.5,"valid_loss":1.5,"valid_accuracy":0.375,"valid_f1":null,"full_valid_loss":1.625,"full_valid_accuracy":0.25}"#,
        )
        .expect("old row");
        row.rename_aliases(&crate::tasks::sft::SFT_METRICS);
        assert_eq!(
            serde_json::to_string(&row).expect("serialize"),
            r#"{"step":6,"train_loss":1.25,"train_mean_token_accuracy":0.5,"valid_loss":1.5,"valid_mean_token_accuracy":0.375,"full_valid_loss":1.625,"full_valid_mean_token_accuracy":0.25}"#
        );
    }

    #[test]
    fn declared_names_and_names_already_present_are_kept() {
        let mut row = MetricsRow::new(2);
        row.set("valid_loss", 0.5);
        row.set("full_valid_loss", 0.25);
        row.set("valid_f1", 0.75);
        row.set("unknown", 1.0);
        // `full_valid_loss` is an alias of `valid_loss`, which the row already has.
        row.rename_aliases(&NAMES);
        assert_eq!(
            row.values.iter().collect::<Vec<_>>(),
            vec![
                ("valid_loss", 0.5),
                ("full_valid_loss", 0.25),
                ("valid_f1", 0.75),
                ("unknown", 1.0)
            ]
        );
        let mut old = MetricsRow::new(3);
        old.set("full_valid_loss", 0.25);
        old.rename_aliases(&NAMES);
        assert_eq!(
            old.values.iter().collect::<Vec<_>>(),
            vec![("valid_loss", 0.25)]
        );
    }
}
