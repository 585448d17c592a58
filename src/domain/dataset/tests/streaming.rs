//! One streaming pass over a file: the summary an upload reports, and the limits that keep
//! its memory bounded.

use std::io::{Cursor, Write};

use serde_json::json;

use super::assert_error;
use crate::domain::dataset::{
    parse_classification, scan, validate_training_file, DataFormat, DatasetError, FileSummary,
    ScanError, DUPLICATE_TRACKING_LIMIT, MAX_LABELS, MAX_LABEL_BYTES, MAX_RECORD_BYTES,
};

fn summary(file: &[u8]) -> Result<FileSummary, DatasetError> {
    scan(Cursor::new(file)).map_err(|error| match error {
        ScanError::Invalid(error) => error,
        ScanError::Io(error) => panic!("in-memory reads cannot fail: {error}"),
    })
}

#[test]
fn classification_summary_counts_duplicates_conflicts_and_labels() {
    let csv = b"text,label\na,x\nb,10\na,x\na,x\na,2\nb,10\n";
    let expected = FileSummary {
        format: DataFormat::Classification,
        examples: 6,
        duplicates: 3,
        conflicting_duplicates: 1,
        // Not all integers: sorted as text.
        labels: vec!["10".into(), "2".into(), "x".into()],
    };
    assert_eq!(summary(csv), Ok(expected.clone()));
    let jsonl: String = [
        ("a", "x"),
        ("b", "10"),
        ("a", "x"),
        ("a", "x"),
        ("a", "2"),
        ("b", "10"),
    ]
    .iter()
    .map(|(text, label)| format!("{}\n", json!({"text": text, "label": label})))
    .collect();
    assert_eq!(summary(jsonl.as_bytes()), Ok(expected));
    // The same counts as the job's in-memory parse.
    let parsed = parse_classification(csv).expect("valid csv");
    assert_eq!((parsed.duplicates, parsed.conflicting_duplicates), (3, 1));
}

#[test]
fn other_formats_count_examples_and_equal_examples_as_duplicates() {
    let chat = json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]});
    // Same example, other key order and spacing: equal once parsed.
    let reordered = r#"{"messages": [{"content": "hi", "role": "user"}, {"content": "hello", "role": "assistant"}]}"#;
    let other = json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bye"}]});
    let file = format!("{chat}\n{reordered}\n\n{other}\n{chat}\n");
    let found = summary(file.as_bytes()).expect("valid chat");
    assert_eq!(found.format, DataFormat::Chat);
    assert_eq!((found.examples, found.duplicates), (4, 2));
    assert_eq!(found.format.task_kind(), DataFormat::Chat.task_kind());
    assert!(found.labels.is_empty());
    let pairs = "{\"prompt\":\"a\",\"completion\":\"b\"}\n".repeat(3);
    let found = summary(pairs.as_bytes()).expect("valid pairs");
    assert_eq!(
        (found.format, found.examples, found.duplicates),
        (DataFormat::PromptCompletion, 3, 2)
    );
}

#[test]
fn a_file_on_disk_is_validated_and_read_errors_are_not_the_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("train.csv");
    std::fs::write(&path, b"\xEF\xBB\xBFlabel,text\r\n1,good\r\n\r\n0,bad\r\n").expect("write");
    let found = validate_training_file(&path).expect("valid file");
    assert_eq!((found.examples, found.labels.len()), (2, 2));
    let missing = validate_training_file(&dir.path().join("gone.jsonl"));
    assert!(matches!(missing, Err(ScanError::Io(_))), "{missing:?}");
}

#[test]
fn a_jsonl_line_past_the_record_limit_is_refused_with_its_line() {
    let good = "{\"text\":\"a\",\"label\":\"x\"}\n";
    let long = format!(
        "{{\"text\":\"{}\",\"label\":\"x\"}}\n",
        "a".repeat(MAX_RECORD_BYTES)
    );
    let file = format!("{good}\n{long}{good}");
    assert_error(
        summary(file.as_bytes()),
        3,
        "Invalid file format. Example 2 (line 3) is longer than 4 MiB, the most one example may take.",
    );
    // Just under the limit is fine.
    let fits = format!(
        "{{\"text\":\"{}\",\"label\":\"x\"}}\n",
        "a".repeat(MAX_RECORD_BYTES - 30)
    );
    assert_eq!(summary(fits.as_bytes()).map(|s| s.examples), Ok(1));
}

#[test]
fn a_csv_record_past_the_record_limit_is_refused_with_its_line() {
    let mut file = b"text,label\na,x\n\n\"".to_vec();
    file.extend(std::iter::repeat_n(b'a', MAX_RECORD_BYTES + 100_000));
    file.extend_from_slice(b"\",y\nb,z\n");
    assert_error(
        summary(&file),
        4,
        "Invalid file format. Line 4 starts a record longer than 4 MiB",
    );
    assert_error(
        parse_classification(&file),
        4,
        "Line 4 starts a record longer than 4 MiB",
    );
}

#[test]
fn labels_are_capped_in_number_and_length() {
    let mut file = Vec::new();
    for i in 0..=MAX_LABELS {
        writeln!(
            file,
            "{}",
            json!({"text": "t", "label": format!("class {i}")})
        )
        .expect("write");
    }
    let message = format!(
        "Invalid file format. Example {n} brings label number {n}; a classification file may \
         have at most {MAX_LABELS} distinct labels.",
        n = MAX_LABELS + 1,
    );
    assert_error(summary(&file), MAX_LABELS + 1, &message);
    assert_error(parse_classification(&file), MAX_LABELS + 1, &message);
    // Exactly the maximum is accepted.
    let at_most: Vec<u8> = file
        .split_inclusive(|&b| b == b'\n')
        .take(MAX_LABELS)
        .flatten()
        .copied()
        .collect();
    assert_eq!(summary(&at_most).map(|s| s.labels.len()), Ok(MAX_LABELS));

    let long_label = "l".repeat(MAX_LABEL_BYTES + 1);
    let file = format!(
        "text,label\nok,{}\nfine,{long_label}\n",
        "l".repeat(MAX_LABEL_BYTES)
    );
    assert_error(
        summary(file.as_bytes()),
        3,
        "Example 2 (line 3): 'label' is 1025 bytes long; a label is a class name of at most 1024 bytes.",
    );
}

#[test]
fn past_the_tracking_limit_duplicates_of_remembered_examples_still_count() {
    let line = |i: usize| format!("{{\"prompt\":\"\",\"completion\":\"{i}\"}}\n");
    let mut file = String::with_capacity(DUPLICATE_TRACKING_LIMIT * 36);
    for i in 0..DUPLICATE_TRACKING_LIMIT {
        file.push_str(&line(i));
    }
    // Past the limit: a new example is not remembered, so its repeat is not counted, but a
    // repeat of a remembered one is.
    file.push_str(&line(usize::MAX));
    file.push_str(&line(usize::MAX));
    file.push_str(&line(7));
    let found = summary(file.as_bytes()).expect("valid pairs");
    assert_eq!(found.examples, DUPLICATE_TRACKING_LIMIT + 3);
    assert_eq!(found.duplicates, 1);
}
