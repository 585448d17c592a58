use std::io::Cursor;

use serde_json::json;

use super::assert_error;
use crate::domain::dataset::{
    detect_format, parse_squad, scan, validate_upload, DataFormat, QaAnswer, QaExample,
    MAX_RECORD_BYTES,
};

fn jsonl(lines: &[serde_json::Value]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

/// "Zürich" starts at character 16 but byte 17: offsets count characters, as Python does.
const CAFE: &str = "Café au lait in Zürich is good.";

#[test]
fn jsonl_in_both_answer_layouts_with_unanswerable_questions() {
    let file = jsonl(&[
        json!({"id": "q1", "title": "T", "context": CAFE, "question": "Where?",
               "answers": {"text": ["Zürich", "in Zürich"], "answer_start": [16, 13]}}),
        json!({"context": CAFE, "question": "What?",
               "answers": [{"text": "Café au lait", "answer_start": 0}]}),
        json!({"id": 7, "context": CAFE, "question": "Who?",
               "answers": {"text": [], "answer_start": []}}),
        json!({"context": CAFE, "question": "When?", "is_impossible": true}),
    ]);
    let examples = parse_squad(file.as_bytes()).expect("valid file");
    assert_eq!(examples.len(), 4);
    assert_eq!(
        examples[0],
        QaExample {
            id: Some("q1".into()),
            question: "Where?".into(),
            context: CAFE.into(),
            answers: vec![
                QaAnswer {
                    text: "Zürich".into(),
                    answer_start: 16
                },
                QaAnswer {
                    text: "in Zürich".into(),
                    answer_start: 13
                },
            ],
        }
    );
    assert_eq!(examples[0].answers[0].answer_end(), 22);
    assert_eq!(examples[1].id, None);
    assert_eq!(examples[1].answers[0].text, "Café au lait");
    assert_eq!(examples[2].id.as_deref(), Some("7"));
    assert!(examples[0].is_answerable());
    assert!(!examples[2].is_answerable() && !examples[3].is_answerable());
    assert_eq!(
        detect_format(file.as_bytes()),
        Ok(DataFormat::QuestionAnswering)
    );
    assert_eq!(
        validate_upload(file.as_bytes()),
        Ok((DataFormat::QuestionAnswering, 4))
    );
}

#[test]
fn jsonl_errors_name_the_example_its_id_and_line() {
    let good = json!({"context": CAFE, "question": "Where?",
                      "answers": {"text": ["Zürich"], "answer_start": [16]}});
    let cases = [
        (
            // answer_start counted in bytes (17) instead of characters.
            json!({"id": "q2", "context": CAFE, "question": "Where?",
                   "answers": {"text": ["Zürich"], "answer_start": [17]}}),
            "Example 2 (id 'q2'): answer 1 \"Zürich\" is not in the context at answer_start 17: \
             that offset points at \"ürich \".",
        ),
        (
            json!({"context": CAFE, "question": "Where?",
                   "answers": {"text": ["x"], "answer_start": [99]}}),
            "Example 2: answer 1 \"x\" is not in the context at answer_start 99: that offset is \
             past the context's end (31 characters).",
        ),
        (
            json!({"context": CAFE, "question": "Where?",
                   "answers": {"text": ["a", "b"], "answer_start": [0]}}),
            "Example 2: 'answers' has 2 text(s) but 1 answer_start(s)",
        ),
        (
            json!({"context": CAFE, "question": "Where?",
                   "answers": {"text": ["Café"], "answer_start": [-1]}}),
            "answer 1: 'answer_start' must be a non-negative integer.",
        ),
        (
            json!({"context": CAFE, "answers": {"text": [], "answer_start": []}}),
            "Example 2 is missing key 'question'.",
        ),
        (
            json!({"context": " ", "question": "q", "answers": []}),
            "Example 2: 'context' is empty.",
        ),
        (
            json!({"context": CAFE, "question": "q"}),
            "Example 2 is missing key 'answers'.",
        ),
        (
            json!({"context": CAFE, "question": "q", "answers": "Zürich"}),
            "'answers' must be {\"text\": [...], \"answer_start\": [...]}",
        ),
        (
            json!({"context": CAFE, "question": "q", "is_impossible": true,
                   "answers": [{"text": "Café", "answer_start": 0}]}),
            "'is_impossible' is true but 'answers' is not empty.",
        ),
        (
            json!({"context": CAFE, "question": "q", "answers": [], "answer": "x"}),
            "Example 2 contains an extra \"answer\".",
        ),
    ];
    for (bad, fragment) in cases {
        let file = jsonl(&[good.clone(), bad]);
        assert_error(parse_squad(file.as_bytes()), 2, fragment);
        assert_error(validate_upload(file.as_bytes()), 2, fragment);
    }
}

/// A SQuAD v2 file as the official one is laid out, pretty-printed so lines are meaningful.
fn nested_v2() -> serde_json::Value {
    json!({
        "version": "v2.0",
        "data": [
            {"title": "Food", "paragraphs": [
                {"context": CAFE, "qas": [
                    {"id": "a1", "question": "Where?", "is_impossible": false,
                     "answers": [{"text": "Zürich", "answer_start": 16}]},
                    {"id": "a2", "question": "Who?", "is_impossible": true, "answers": [],
                     "plausible_answers": [{"text": "Café", "answer_start": 0}]}
                ]}
            ]},
            {"title": "Sky", "paragraphs": [
                {"context": "The sky is blue.", "qas": [
                    {"id": "b1", "question": "Colour?",
                     "answers": [{"text": "blue", "answer_start": 11},
                                 {"text": "blue", "answer_start": 11}]}
                ]}
            ]}
        ]
    })
}

#[test]
fn nested_squad_json_is_read_paragraph_by_paragraph() {
    let file = serde_json::to_string_pretty(&nested_v2()).expect("json");
    let examples = parse_squad(file.as_bytes()).expect("valid file");
    let ids: Vec<&str> = examples.iter().filter_map(|e| e.id.as_deref()).collect();
    assert_eq!(ids, ["a1", "a2", "b1"]);
    assert_eq!(examples[0].context, CAFE);
    assert_eq!(examples[2].context, "The sky is blue.");
    assert_eq!(examples[2].answers.len(), 2);
    assert!(!examples[1].is_answerable());
    assert_eq!(
        detect_format(file.as_bytes()),
        Ok(DataFormat::QuestionAnswering)
    );
    let summary = scan(Cursor::new(file.as_bytes())).expect("summary");
    assert_eq!(
        (summary.format, summary.examples, summary.duplicates),
        (DataFormat::QuestionAnswering, 3, 0)
    );
    // One line, with a BOM: the same examples.
    let compact = format!("\u{feff}{}", nested_v2());
    assert_eq!(parse_squad(compact.as_bytes()), Ok(examples));
}

/// A hand-laid-out nested file (`version` before `data`), whose second paragraph's closing
/// brace is on line 8; `b1_answers` is that question's answer list.
fn nested_text(b1_answers: &str) -> String {
    format!(
        "{{\"version\": \"v2.0\", \"data\": [\n\
         {{\"title\": \"Food\", \"paragraphs\": [\n\
         {{\"context\": \"{CAFE}\", \"qas\": [{{\"id\": \"a1\", \"question\": \"Where?\", \
         \"answers\": [{{\"text\": \"Zürich\", \"answer_start\": 16}}]}}]}}\n\
         ]}},\n\
         {{\"title\": \"Sky\", \"paragraphs\": [\n\
         {{\"context\": \"The sky is blue.\",\n\
         \"qas\": [{{\"id\": \"b1\", \"question\": \"Colour?\", \"answers\": {b1_answers}}}]\n\
         }}\n\
         ]}}\n\
         ]}}\n"
    )
}

#[test]
fn nested_errors_name_the_question_by_position_id_and_line() {
    let good = nested_text(r#"[{"text": "blue", "answer_start": 11}]"#);
    let examples = parse_squad(good.as_bytes()).expect("valid file");
    let ids: Vec<&str> = examples.iter().filter_map(|e| e.id.as_deref()).collect();
    assert_eq!(ids, ["a1", "b1"]);

    let bad = nested_text(
        r#"[{"text": "blue", "answer_start": 11}, {"text": "blue", "answer_start": 4}]"#,
    );
    assert_error(
        parse_squad(bad.as_bytes()),
        8,
        "Invalid file format. Example 2 (data[1].paragraphs[0].qas[0] (id 'b1'), in the \
         paragraph ending on line 8): answer 2 \"blue\" is not in the context at answer_start 4: \
         that offset points at \"sky \".",
    );

    let mut missing = nested_v2();
    missing["data"][0]["paragraphs"][0]
        .as_object_mut()
        .expect("paragraph")
        .remove("context");
    let text = serde_json::to_string_pretty(&missing).expect("json");
    let error = parse_squad(text.as_bytes()).expect_err("no context");
    assert!(
        error.message.starts_with(
            "Invalid file format. The SQuAD JSON file is not valid: missing field `context`"
        ),
        "{}",
        error.message
    );
    assert!(error.line > 1, "serde's line is kept: {}", error.line);

    let truncated = &nested_v2().to_string()[..60];
    let error = parse_squad(truncated.as_bytes()).expect_err("truncated");
    assert!(
        error.message.contains("EOF while parsing"),
        "{}",
        error.message
    );
}

#[test]
fn a_nested_file_on_one_line_longer_than_the_record_limit_is_read() {
    let long_context = format!("{} answer.", "word ".repeat(MAX_RECORD_BYTES / 5 + 10));
    let start = long_context.chars().count() - "answer.".len();
    let file = json!({"data": [{"paragraphs": [{"context": long_context, "qas": [
        {"id": "x", "question": "Which?", "answers": [{"text": "answer", "answer_start": start}]}
    ]}]}]})
    .to_string();
    assert!(file.len() > MAX_RECORD_BYTES);
    assert_eq!(
        validate_upload(file.as_bytes()),
        Ok((DataFormat::QuestionAnswering, 1))
    );
}

#[test]
fn equal_questions_count_as_duplicates() {
    let line = json!({"context": CAFE, "question": "Where?",
                      "answers": {"text": ["Zürich"], "answer_start": [16]}});
    let file = jsonl(&[line.clone(), line]);
    let summary = scan(Cursor::new(file.as_bytes())).expect("summary");
    assert_eq!((summary.examples, summary.duplicates), (2, 1));
}
