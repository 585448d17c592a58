use serde_json::json;

use super::*;

fn sentences(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|row| row.iter().map(|s| s.to_string()).collect())
        .collect()
}

fn spans(rows: &[&[&str]]) -> Vec<(String, usize, usize)> {
    let rows = sentences(rows);
    entities(rows.iter().map(Vec::as_slice))
        .into_iter()
        .map(|e| (e.kind, e.start, e.end))
        .collect()
}

fn span(kind: &str, start: usize, end: usize) -> (String, usize, usize) {
    (kind.to_string(), start, end)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn seqeval_default_mode_reads_spans_leniently() {
    // An `I-` after `O` starts an entity (IOB1 data scores as spans, not as errors).
    assert_eq!(
        spans(&[&["I-PER", "I-PER", "O", "I-LOC"]]),
        [span("PER", 0, 1), span("LOC", 3, 3)]
    );
    // A type change splits a span; `B-` after `B-` starts a new one.
    assert_eq!(
        spans(&[&["B-PER", "I-LOC", "I-LOC", "B-PER", "B-PER"]]),
        [
            span("PER", 0, 0),
            span("LOC", 1, 2),
            span("PER", 3, 3),
            span("PER", 4, 4)
        ]
    );
    // BIOES prefixes.
    assert_eq!(
        spans(&[&["S-PER", "B-LOC", "E-LOC", "E-LOC"]]),
        [span("PER", 0, 0), span("LOC", 1, 2), span("LOC", 3, 3)]
    );
    // Sentences are joined with an `O`: no entity crosses them, positions count it.
    assert_eq!(
        spans(&[&["B-PER"], &["I-PER", "I-PER"]]),
        [span("PER", 0, 0), span("PER", 2, 3)]
    );
    // A tag without a scheme prefix: first character as prefix, `_` as type.
    assert_eq!(spans(&[&["O", "B", "I"]]), [span("_", 1, 2)]);
}

#[test]
fn seqeval_documentation_example() {
    // seqeval's README: f1 0.50, accuracy 0.80.
    let gold = sentences(&[
        &["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"],
        &["B-PER", "I-PER", "O"],
    ]);
    let predicted = sentences(&[
        &["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"],
        &["B-PER", "I-PER", "O"],
    ]);
    let metrics = TagMetrics::compute(&gold, &predicted);
    assert!(close(metrics.micro.f1, 0.5));
    assert!(close(metrics.micro.precision, 0.5) && close(metrics.micro.recall, 0.5));
    assert_eq!(metrics.micro.support, 2);
    assert!(close(metrics.accuracy, 0.8));
    assert_eq!(metrics.per_type["MISC"].f1, 0.0);
    assert_eq!(metrics.per_type["PER"].f1, 1.0);
}

#[test]
fn micro_macro_and_weighted_averages_by_hand() {
    let gold = sentences(&[&["B-PER", "I-PER", "O", "B-LOC"], &["B-PER", "O"]]);
    let predicted = sentences(&[&["B-PER", "I-PER", "O", "B-PER"], &["O", "O"]]);
    let metrics = TagMetrics::compute(&gold, &predicted);
    // True PER(0,1) LOC(3,3) PER(5,5); predicted PER(0,1) PER(3,3).
    let per = metrics.per_type["PER"];
    assert_eq!(
        (per.precision, per.recall, per.f1, per.support),
        (0.5, 0.5, 0.5, 2)
    );
    let loc = metrics.per_type["LOC"];
    assert_eq!(
        (loc.precision, loc.recall, loc.f1, loc.support),
        (0.0, 0.0, 0.0, 1)
    );
    assert!(close(metrics.micro.precision, 0.5));
    assert!(close(metrics.micro.recall, 1.0 / 3.0));
    assert!(close(metrics.micro.f1, 0.4));
    assert!(close(metrics.accuracy, 4.0 / 6.0));

    let report = metrics.report();
    assert_eq!(report["entity_types"], json!(["LOC", "PER"]));
    assert_eq!(
        report["per_type"]["PER"],
        json!({"precision": 0.5, "recall": 0.5, "f1-score": 0.5, "support": 2})
    );
    assert_eq!(report["macro_avg"]["f1-score"], json!(0.25));
    assert_eq!(report["macro_avg"]["support"], json!(3));
    let weighted = report["weighted_avg"]["precision"].as_f64().unwrap_or(-1.0);
    assert!(close(weighted, 1.0 / 3.0), "{weighted}");
    assert!(close(
        report["micro_avg"]["f1-score"].as_f64().unwrap_or(-1.0),
        0.4
    ));
    assert!(close(
        report["accuracy"].as_f64().unwrap_or(-1.0),
        4.0 / 6.0
    ));
}

#[test]
fn undefined_ratios_are_zero() {
    let gold = sentences(&[&["B-PER", "O"]]);
    let none = sentences(&[&["O", "O"]]);
    let metrics = TagMetrics::compute(&gold, &none);
    assert_eq!(
        (
            metrics.micro.precision,
            metrics.micro.recall,
            metrics.micro.f1
        ),
        (0.0, 0.0, 0.0)
    );
    assert!(close(metrics.accuracy, 0.5));
    let empty = TagMetrics::compute::<String>(&[], &[]);
    assert_eq!((empty.micro.f1, empty.accuracy), (0.0, 0.0));
    assert!(empty.per_type.is_empty());
    assert_eq!(empty.report()["macro_avg"]["f1-score"], json!(0.0));
}

/// `scripts/seqeval_fixture.py`: 200 seeded random sentences (IOB2, IOB1-style and BIOES
/// tags mixed) scored by Python's `seqeval` 1.2.2 (default mode, `zero_division=0`).
#[test]
fn matches_python_seqeval_on_the_committed_fixture() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("testdata/seqeval_fixture.json"))
            .expect("fixture is JSON");
    let sequences = |key: &str| -> Vec<Vec<String>> {
        serde_json::from_value(fixture[key].clone()).expect("lists of tags")
    };
    let metrics = TagMetrics::compute(&sequences("gold"), &sequences("predicted"));
    let number = |value: &serde_json::Value| value.as_f64().expect("a number");
    assert!(close(
        metrics.micro.precision,
        number(&fixture["precision"])
    ));
    assert!(close(metrics.micro.recall, number(&fixture["recall"])));
    assert!(close(metrics.micro.f1, number(&fixture["f1"])));
    assert!(close(metrics.accuracy, number(&fixture["accuracy"])));
    let theirs = &fixture["report"];
    let ours = metrics.report();
    assert_eq!(metrics.per_type.len(), 3);
    for (kind, row) in ours["per_type"].as_object().expect("per type") {
        for field in ["precision", "recall", "f1-score", "support"] {
            assert!(
                close(number(&row[field]), number(&theirs[kind][field])),
                "{kind} {field}"
            );
        }
    }
    for (ours_key, theirs_key) in [
        ("micro_avg", "micro avg"),
        ("macro_avg", "macro avg"),
        ("weighted_avg", "weighted avg"),
    ] {
        for field in ["precision", "recall", "f1-score", "support"] {
            assert!(
                close(
                    number(&ours[ours_key][field]),
                    number(&theirs[theirs_key][field])
                ),
                "{ours_key} {field}"
            );
        }
    }
}
