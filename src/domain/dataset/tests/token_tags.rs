//! Token classification files: JSONL and CoNLL, the label order and the IOB1 finding.

use std::io::Cursor;

use serde_json::json;

use super::assert_error;
use crate::domain::dataset::{
    detect_format, parse_token_tags, scan, tag_label_set, DataFormat, TokenTagsExample,
};

fn jsonl(lines: &[serde_json::Value]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

fn example(tokens: &[&str], tags: &[&str]) -> TokenTagsExample {
    TokenTagsExample {
        tokens: tokens.iter().map(|s| s.to_string()).collect(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn jsonl_with_string_and_integer_tags() {
    let file = jsonl(&[json!({"tokens": ["Paris", "is", "nice"], "tags": ["B-LOC", 0, "O"]})]);
    let data = parse_token_tags(file.as_bytes()).expect("valid file");
    assert_eq!(
        data.examples,
        vec![example(&["Paris", "is", "nice"], &["B-LOC", "0", "O"])]
    );
    assert_eq!(data.iob1, None);
}

#[test]
fn jsonl_errors_name_the_example() {
    let good = json!({"tokens": ["a"], "tags": ["O"]});
    let cases = [
        (
            json!({"tokens": ["a", "b"], "tags": ["O"]}),
            "Example 2 has 2 token(s) but 1 tag(s); they must match one to one.",
        ),
        (
            json!({"tokens": [], "tags": []}),
            "Example 2: 'tokens' is empty.",
        ),
        (
            json!({"tokens": [1], "tags": ["O"]}),
            "Example 2: 'tokens' must be a list of strings; item 1 is a number.",
        ),
        (
            json!({"tokens": ["a", "b"], "tags": ["O", 1.5]}),
            "Example 2: 'tags' must be a list of strings or integers; item 2 is a number.",
        ),
        (
            json!({"tokens": ["a"], "tags": [null]}),
            "Example 2: 'tags' must be a list of strings or integers; item 1 is null.",
        ),
        (
            json!({"tokens": ["a"], "tags": "O"}),
            "Example 2: 'tags' must be a list of strings or integers, got a string.",
        ),
        (
            json!({"tokens": ["a"], "tags": [" "]}),
            "Example 2: tag 1 is empty.",
        ),
        (json!({"tokens": ["a"]}), "Example 2 is missing key 'tags'."),
        (
            json!({"tokens": ["a"], "tags": ["O"], "id": 3}),
            "Example 2 contains an extra \"id\".",
        ),
    ];
    for (bad, fragment) in cases {
        let file = jsonl(&[good.clone(), bad]);
        assert_error(parse_token_tags(file.as_bytes()), 2, fragment);
    }
}

const CONLL: &str = "-DOCSTART- -X- -X- O\n\
\n\
EU NNP B-NP B-ORG\n\
rejects VBZ B-VP O\n\
German\tJJ\tB-NP\tB-MISC\r\n\
\n\
\n\
Peter B-PER\n\
Blackburn I-PER\n\
-DOCSTART- O\n\
London B-LOC";

#[test]
fn conll_sentences_split_on_blank_and_docstart_lines_and_take_the_last_column() {
    let data = parse_token_tags(CONLL.as_bytes()).expect("valid CoNLL");
    assert_eq!(
        data.examples,
        vec![
            example(&["EU", "rejects", "German"], &["B-ORG", "O", "B-MISC"]),
            example(&["Peter", "Blackburn"], &["B-PER", "I-PER"]),
            example(&["London"], &["B-LOC"]),
        ]
    );
    assert_eq!(detect_format(CONLL.as_bytes()), Ok(DataFormat::TokenTags));
    let summary = scan(Cursor::new(CONLL.as_bytes())).expect("valid CoNLL");
    assert_eq!(summary.format, DataFormat::TokenTags);
    assert_eq!((summary.examples, summary.duplicates), (3, 0));
    assert_eq!(
        summary.labels,
        ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER"]
    );
}

#[test]
fn conll_is_detected_from_a_tagged_first_line_only() {
    let detected = [
        "\u{feff}EU B-ORG\n",
        "word 3\n",
        "Paris\tO\n",
        "-DOCSTART-\n\nx O\n",
    ];
    for file in detected {
        assert_eq!(
            detect_format(file.as_bytes()),
            Ok(DataFormat::TokenTags),
            "{file:?}"
        );
    }
    // Prose, a one-column line or an unknown tag scheme stay unrecognised.
    for file in ["just some prose\n", "word\n", "word X-PER\n", "word B-\n"] {
        assert!(detect_format(file.as_bytes()).is_err(), "{file:?}");
    }
}

#[test]
fn conll_errors_name_the_sentence_and_the_line() {
    assert_error(
        parse_token_tags(b"a O\nb O\n\nc O\nlonely\n"),
        5,
        "Invalid file format. Sentence 2 (line 5): expected `token<TAB or space>tag`, found one \
         column.",
    );
    assert_error(
        parse_token_tags(b"a O\n\xFF O\n"),
        2,
        "Sentence 1 (line 2): the line is not valid UTF-8.",
    );
}

#[test]
fn upload_summary_counts_duplicate_sentences_and_collects_tags() {
    let file = jsonl(&[
        json!({"tokens": ["a", "b"], "tags": ["B-X", "I-X"]}),
        json!({"tokens": ["a", "b"], "tags": ["B-X", "I-X"]}),
        json!({"tokens": ["a", "b"], "tags": ["O", "B-A"]}),
    ]);
    let summary = scan(Cursor::new(file.as_bytes())).expect("valid file");
    assert_eq!((summary.examples, summary.duplicates), (3, 1));
    assert_eq!(summary.labels, ["O", "B-A", "B-X", "I-X"]);
}

#[test]
fn label_set_puts_o_first_then_groups_by_type_with_b_before_i() {
    let train = [
        example(&["x"; 5], &["I-PER", "O", "B-PER", "S-LOC", "misc"]),
        example(&["x"; 2], &["B-LOC", "I-LOC"]),
    ];
    let valid = [example(&["x"], &["E-LOC"])];
    assert_eq!(
        tag_label_set(train.iter().chain(&valid)),
        ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-PER", "I-PER", "misc"]
    );
    let numeric = [example(&["x"; 3], &["10", "2", "0"])];
    assert_eq!(tag_label_set(&numeric), ["0", "2", "10"]);
}

#[test]
fn iob1_entity_starts_are_found_with_their_first_place() {
    let file = "a I-PER\nb I-PER\nc O\n\nd B-LOC\ne I-LOC\nf I-ORG\ng O\nh I-ORG\n";
    let data = parse_token_tags(file.as_bytes()).expect("valid CoNLL");
    let finding = data.iob1.expect("IOB1 tags");
    // `I-PER` opening sentence 1, `I-ORG` after `I-LOC`, `I-ORG` after `O`.
    assert_eq!(
        (
            finding.example,
            finding.line,
            finding.tag.as_str(),
            finding.count
        ),
        (1, 1, "I-PER", 3)
    );
    assert!(finding
        .message()
        .starts_with("3 tag(s) begin an entity with `I-` (first: `I-PER` in example 1, line 1)"));
    let iob2 = "a B-PER\nb I-PER\nc O\nd B-LOC\n";
    assert_eq!(parse_token_tags(iob2.as_bytes()).expect("valid").iob1, None);
}
