use super::assert_error;
use crate::domain::dataset::{detect_format, validate_upload, DataFormat, UNEXPECTED_FORMAT};

const CHAT: &str =
    r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#;
const PREFERENCE: &str = r#"{"input":{"messages":[{"role":"user","content":"hi"}]},"preferred_output":[{"role":"assistant","content":"hello"}],"non_preferred_output":[{"role":"assistant","content":"go away"}]}"#;

#[test]
fn every_format_is_detected_and_counted() {
    let spec_spelling = PREFERENCE
        .replace("preferred_output", "preferred_completion")
        .replace("non_preferred_output", "non_preferred_completion");
    let cases: [(String, DataFormat, usize); 7] = [
        (
            "{\"text\":\"a\",\"label\":1}\n{\"text\":\"b\",\"label\":2}\n".into(),
            DataFormat::Classification,
            2,
        ),
        (
            "\u{feff}\r\nTitle,Text,Label\r\nt,a,1\r\n".into(),
            DataFormat::Classification,
            1,
        ),
        (format!("\n{CHAT}\n{CHAT}\n{CHAT}\n"), DataFormat::Chat, 3),
        (
            "{\"prompt\":\"2+2=\",\"completion\":\"4\"}\n".into(),
            DataFormat::PromptCompletion,
            1,
        ),
        (
            format!("{PREFERENCE}\n{PREFERENCE}"),
            DataFormat::Preference,
            2,
        ),
        (spec_spelling, DataFormat::Preference, 1),
        (
            "{\"tokens\":[\"Paris\",\"is\"],\"tags\":[\"B-LOC\",\"O\"]}\n".into(),
            DataFormat::TokenTags,
            1,
        ),
    ];
    for (file, format, count) in cases {
        assert_eq!(detect_format(file.as_bytes()), Ok(format), "{file}");
        assert_eq!(
            validate_upload(file.as_bytes()),
            Ok((format, count)),
            "{file}"
        );
    }
}

#[test]
fn a_partial_record_gets_its_format_so_the_missing_key_is_named() {
    assert_eq!(
        detect_format(b"{\"text\":\"a\"}"),
        Ok(DataFormat::Classification)
    );
    assert_error(
        validate_upload(b"{\"text\":\"a\"}"),
        1,
        "Example 1 is missing key 'label'.",
    );
    assert_error(
        validate_upload(b"{\"preferred_output\":[]}"),
        1,
        "Example 1 is missing key 'input'.",
    );
}

#[test]
fn unknown_and_empty_files_are_rejected() {
    let cases: [(&[u8], usize, &str); 6] = [
        (b"\n{\"foo\": 1}\n", 2, UNEXPECTED_FORMAT),
        (b"sentence,category\nhi,1\n", 1, UNEXPECTED_FORMAT),
        (b"just some prose\n", 1, UNEXPECTED_FORMAT),
        (b"{\"messages\": ", 1, "Example 1 is not valid JSON"),
        (b"", 0, "The file contains no examples."),
        (b"\xEF\xBB\xBF\n  \r\n", 0, "The file contains no examples."),
    ];
    for (file, line, fragment) in cases {
        assert_error(validate_upload(file), line, fragment);
    }
    assert!(UNEXPECTED_FORMAT.starts_with("Unexpected file format, expected either"));
}

#[test]
fn csv_header_without_rows_has_no_examples() {
    assert_error(validate_upload(b"text,label\n"), 0, "contains no examples");
}

#[test]
fn a_later_line_in_another_format_is_an_error() {
    let file = format!("{CHAT}\n{{\"text\":\"a\",\"label\":\"x\"}}\n");
    assert_error(
        validate_upload(file.as_bytes()),
        2,
        "Example 2 is missing key 'messages'.",
    );
}

#[test]
fn formats_map_to_tasks_and_names() {
    use crate::domain::task::Task;
    let cases = [
        (
            DataFormat::Classification,
            "classification",
            Some(Task::SequenceClassification),
        ),
        (DataFormat::Chat, "chat", Some(Task::ChatSft)),
        (
            DataFormat::PromptCompletion,
            "prompt_completion",
            Some(Task::CompletionSft),
        ),
        (DataFormat::Preference, "preference", None),
        (DataFormat::TokenTags, "token_tags", None),
    ];
    for (format, name, task) in cases {
        assert_eq!(format.as_str(), name);
        assert_eq!(format.task_kind(), task);
        assert_eq!(
            serde_json::to_value(format).ok(),
            Some(serde_json::json!(name))
        );
    }
}
