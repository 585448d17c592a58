use super::assert_error;
use crate::domain::dataset::{label_set, parse_classification, LabeledText};

fn example(text: &str, label: &str) -> LabeledText {
    LabeledText {
        text: text.to_string(),
        label: label.to_string(),
    }
}

#[test]
fn jsonl_with_string_and_integer_labels() {
    let file = b"{\"text\": \"great\", \"label\": \"pos\"}\n\
                 {\"text\": \"bad\", \"label\": 0, \"id\": 7}\n\
                 {\"text\": \"fine\", \"label\": \" 1 \"}\n";
    let data = parse_classification(file).expect("valid file");
    assert_eq!(
        data.examples,
        vec![
            example("great", "pos"),
            example("bad", "0"),
            example("fine", "1")
        ]
    );
    assert_eq!(data.duplicates, 0);
    assert_eq!(data.conflicting_duplicates, 0);
}

#[test]
fn jsonl_blank_lines_crlf_and_bom() {
    let file = b"\xEF\xBB\xBF{\"text\":\"a\",\"label\":\"x\"}\r\n\r\n   \n{\"text\":\"b\",\"label\":\"y\"}\r\n";
    let data = parse_classification(file).expect("valid file");
    assert_eq!(data.examples, vec![example("a", "x"), example("b", "y")]);
}

#[test]
fn jsonl_errors_name_example_and_line() {
    let good = "{\"text\":\"ok\",\"label\":\"x\"}";
    let cases: [(&str, usize, &str); 9] = [
        (
            "{\"text\": \"a\", ",
            2,
            "Example 2 is not valid JSON: EOF while parsing",
        ),
        (
            "[1, 2]",
            2,
            "Example 2 must be a JSON object, got an array.",
        ),
        ("{\"label\": \"x\"}", 2, "Example 2 is missing key 'text'."),
        ("{\"text\": \"a\"}", 2, "Example 2 is missing key 'label'."),
        (
            "{\"text\": \"a\", \"label\": null}",
            2,
            "Example 2 is missing key 'label'.",
        ),
        (
            "{\"text\": \"  \", \"label\": \"x\"}",
            2,
            "Example 2: 'text' is empty.",
        ),
        (
            "{\"text\": \"a\", \"label\": \"\"}",
            2,
            "Example 2: 'label' is empty.",
        ),
        (
            "{\"text\": 5, \"label\": \"x\"}",
            2,
            "'text' must be a string, got a number.",
        ),
        (
            "{\"text\": \"a\", \"label\": 1.5}",
            2,
            "'label' must be a string or an integer, got 1.5.",
        ),
    ];
    for (bad_line, line, fragment) in cases {
        let file = format!("{good}\n{bad_line}\n{good}\n");
        assert_error(parse_classification(file.as_bytes()), line, fragment);
    }
}

#[test]
fn jsonl_error_after_blank_line_gives_both_numbers() {
    let file = b"{\"text\":\"a\",\"label\":\"x\"}\n\n{\"text\":\"b\"}\n";
    let error = parse_classification(file).expect_err("label missing");
    assert_eq!(error.line, 3);
    assert_eq!(
        error.to_string(),
        "Invalid file format. Example 2 (line 3) is missing key 'label'."
    );
}

#[test]
fn csv_any_column_order_case_and_extra_columns() {
    let file = b"id,Label,TEXT\n1,pos,great movie\n2,0,\"bad, really bad\"\n";
    let data = parse_classification(file).expect("valid csv");
    assert_eq!(
        data.examples,
        vec![
            example("great movie", "pos"),
            example("bad, really bad", "0")
        ]
    );
}

#[test]
fn csv_embedded_newline_keeps_later_line_numbers_right() {
    // Record 1 spans lines 2-4; record 2 is on line 5 and lacks its label field.
    let file = b"text,label\n\"first\nsecond\nthird\",a\nonly-text\n";
    assert_error(
        parse_classification(file),
        5,
        "Example 2 (line 5) has 1 field(s), but the header needs at least 2.",
    );
    let good = b"text,label\n\"first\nsecond\",a\n\"x, y\",b\n";
    let data = parse_classification(good).expect("valid csv");
    assert_eq!(
        data.examples,
        vec![example("first\nsecond", "a"), example("x, y", "b")]
    );
}

#[test]
fn csv_bom_crlf_and_blank_lines() {
    let file = b"\xEF\xBB\xBFtext,label\r\nhello,1\r\n\r\n,\r\nworld,2\r\n";
    let data = parse_classification(file).expect("valid csv");
    assert_eq!(
        data.examples,
        vec![example("hello", "1"), example("world", "2")]
    );
    let bad = b"\xEF\xBB\xBFtext,label\r\nhello,1\r\n\r\nworld,\r\n";
    assert_error(
        parse_classification(bad),
        4,
        "Example 2 (line 4): 'label' is empty.",
    );
}

#[test]
fn csv_crlf_inside_quotes_and_blank_lines_before_a_bad_record() {
    // Lines: 1 header, 2-3 record 1 (CRLF inside quotes), 4 blank, 5 record 2, 6-7 blank,
    // 8 record 3 with an empty text.
    let file = b"text,label\r\n\"a\r\nb\",x\r\n\r\nc,y\r\n\r\n\r\n\"\",z\r\n";
    assert_error(
        parse_classification(file),
        8,
        "Example 3 (line 8): 'text' is empty.",
    );
}

#[test]
fn csv_errors() {
    let cases: [(&[u8], usize, &str); 4] = [
        (
            b"sentence,label\nhi,1\n",
            1,
            "needs a header row with `text` and `label`",
        ),
        (
            b"label,text\n1,\n",
            2,
            "Example 1 (line 2): 'text' is empty.",
        ),
        (
            b"text,x,label\na,b,c\nshort,b\n",
            3,
            "Example 2 (line 3) has 2 field(s), but the header needs at least 3.",
        ),
        (
            b"text,label\na,1\n\"b\xFF\",2\n",
            3,
            "Line 3 is not valid UTF-8.",
        ),
    ];
    for (file, line, fragment) in cases {
        assert_error(parse_classification(file), line, fragment);
    }
}

#[test]
fn duplicates_are_kept_and_counted() {
    let file = b"text,label\na,x\nb,y\na,x\na,x\na,z\nb,y\n";
    let data = parse_classification(file).expect("valid csv");
    assert_eq!(data.examples.len(), 6);
    assert_eq!(data.duplicates, 3);
    assert_eq!(data.conflicting_duplicates, 1);
}

#[test]
fn label_set_is_sorted_and_numeric_when_all_integers() {
    let texts = |labels: &[&str]| -> Vec<LabeledText> {
        labels.iter().map(|label| example("t", label)).collect()
    };
    assert_eq!(
        label_set(&texts(&["10", "2", "-1", "2", "0"])),
        ["-1", "0", "2", "10"]
    );
    assert_eq!(
        label_set(&texts(&["pos", "neg", "10", "2", "neg"])),
        ["10", "2", "neg", "pos"]
    );
    assert!(label_set(&[]).is_empty());
}

#[test]
fn a_huge_bad_label_is_echoed_short() {
    let label = serde_json::json!({"nested": "x".repeat(10_000)});
    let file = format!("{{\"text\": \"a\", \"label\": {label}}}\n");
    let error = parse_classification(file.as_bytes()).expect_err("rejected");
    assert!(
        error.message.contains("must be a string or an integer"),
        "{}",
        error.message
    );
    assert!(error.message.ends_with("…."), "{}", error.message);
    assert!(error.message.len() < 300, "{} bytes", error.message.len());
}
