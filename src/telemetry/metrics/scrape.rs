//! Prometheus text as a scraper reads it, for tests: parsed with a Prometheus parser into
//! series, and the one series a test asks for by name and labels. Shared by the unit tests
//! (`#[cfg(test)] mod scrape` in `telemetry/metrics.rs`) and the e2e suite, which includes
//! this file by path (`tests/e2e/main.rs`): each uses part of it.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;

use openmetrics_parser::{HistogramValue, PrometheusValue};

/// One parsed series: its name, labels and value.
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) labels: HashMap<String, String>,
    pub(crate) value: PrometheusValue,
}

impl Series {
    /// Its `route` label.
    pub(crate) fn route(&self) -> Option<&str> {
        self.labels.get("route").map(String::as_str)
    }
}

/// Prometheus text as a scraper reads it (a text that does not parse fails the test).
pub(crate) fn parse(text: &str) -> Vec<Series> {
    let exposition = openmetrics_parser::prometheus::parse_prometheus(text)
        .unwrap_or_else(|e| panic!("not Prometheus text ({e:?}):\n{text}"));
    let mut series = Vec::new();
    for (name, family) in exposition.families {
        for sample in family.iter_samples() {
            let labels = sample.get_labelset().unwrap();
            series.push(Series {
                name: name.clone(),
                labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                value: sample.value.clone(),
            });
        }
    }
    series
}

/// The one series `name` whose labels include `labels`, if any.
fn find<'a>(scrape: &'a [Series], name: &str, labels: &[(&str, &str)]) -> Option<&'a Series> {
    let found: Vec<&Series> = scrape
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        found.len() <= 1,
        "{name} {labels:?} matches {} series",
        found.len()
    );
    found.first().copied()
}

/// The value of the counter or gauge `name` with `labels` (None: no such series).
pub(crate) fn value(scrape: &[Series], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    find(scrape, name, labels).map(|series| match &series.value {
        PrometheusValue::Counter(counter) => counter.value.as_f64(),
        PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
        other => panic!("{name} is not a single number: {other:?}"),
    })
}

/// The histogram `name` with `labels`.
pub(crate) fn histogram(scrape: &[Series], name: &str, labels: &[(&str, &str)]) -> HistogramValue {
    match find(scrape, name, labels).map(|s| &s.value) {
        Some(PrometheusValue::Histogram(histogram)) => histogram.clone(),
        other => panic!("{name} {labels:?} is no histogram: {other:?}"),
    }
}

/// The cumulative count of `histogram`'s bucket bounded by `bound`.
pub(crate) fn bucket(histogram: &HistogramValue, bound: f64) -> f64 {
    histogram
        .buckets
        .iter()
        .find(|b| b.upper_bound == bound)
        .map(|b| b.count.as_f64())
        .unwrap_or_else(|| panic!("no bucket {bound} in {histogram:?}"))
}
