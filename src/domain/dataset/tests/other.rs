use serde_json::json;

use super::assert_error;
use crate::domain::dataset::{parse_preference, parse_prompt_completion, PromptCompletion};

fn jsonl(lines: &[serde_json::Value]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

#[test]
fn prompt_completion_pairs() {
    let file = jsonl(&[
        json!({"prompt": "2+2=", "completion": " 4"}),
        json!({"prompt": "", "completion": "anything"}),
    ]);
    let pairs = parse_prompt_completion(file.as_bytes()).expect("valid file");
    assert_eq!(
        pairs,
        [
            PromptCompletion {
                prompt: "2+2=".into(),
                completion: " 4".into()
            },
            PromptCompletion {
                prompt: String::new(),
                completion: "anything".into()
            }
        ]
    );
}

#[test]
fn prompt_completion_errors() {
    let good = json!({"prompt": "a", "completion": "b"});
    let cases = [
        (
            json!({"completion": "b"}),
            "Example 2 is missing key 'prompt'.",
        ),
        (
            json!({"prompt": "a"}),
            "Example 2 is missing key 'completion'.",
        ),
        (
            json!({"prompt": "a", "completion": ""}),
            "Example 2: 'completion' is empty.",
        ),
        (
            json!({"prompt": ["a"], "completion": "b"}),
            "Example 2: 'prompt' must be a string, got an array.",
        ),
        (
            json!({"prompt": "a", "completion": "b", "label": 1}),
            "Example 2 contains an extra \"label\".",
        ),
    ];
    for (bad, fragment) in cases {
        let file = jsonl(&[good.clone(), bad]);
        assert_error(parse_prompt_completion(file.as_bytes()), 2, fragment);
    }
}

fn preference() -> serde_json::Value {
    json!({
        "input": {"messages": [{"role": "user", "content": "Hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "What."}]
    })
}

#[test]
fn preference_pairs_in_both_spellings() {
    let spec = json!({
        "input": {"messages": [{"role": "user", "content": "Hi"}], "tools": []},
        "preferred_completion": [{"role": "assistant", "content": "A"}],
        "non_preferred_completion": [{"role": "assistant", "content": "B"}]
    });
    let pairs = parse_preference(jsonl(&[preference(), spec]).as_bytes()).expect("valid file");
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[0].preferred.content, "Hello!");
    assert_eq!(pairs[0].non_preferred.content, "What.");
    assert_eq!(pairs[1].preferred.content, "A");
    assert_eq!(pairs[1].input.messages[0].content, "Hi");
}

#[test]
fn preference_errors() {
    let without = |key: &str| {
        let mut value = preference();
        value.as_object_mut().map(|o| o.remove(key));
        value
    };
    let with = |key: &str, replacement: serde_json::Value| {
        let mut value = preference();
        value[key] = replacement;
        value
    };
    let cases = [
        (without("input"), "Example 2 is missing key 'input'."),
        (
            without("preferred_output"),
            "Example 2 is missing key 'preferred_output'.",
        ),
        (
            without("non_preferred_output"),
            "Example 2 is missing key 'non_preferred_output'.",
        ),
        (
            with("input", json!("hi")),
            "Example 2: 'input' must be an object, got a string.",
        ),
        (
            with(
                "input",
                json!({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}),
            ),
            "Example 2, input contains an extra \"prompt\".",
        ),
        (
            with(
                "input",
                json!({"messages": [{"role": "human", "content": "x"}]}),
            ),
            "Example 2, input, message 1: unrecognized role \"human\"",
        ),
        (
            with("preferred_output", json!([])),
            "Example 2: 'preferred_output' must be a list holding exactly one assistant message.",
        ),
        (
            with(
                "non_preferred_output",
                json!([{"role": "user", "content": "x"}]),
            ),
            "Example 2, non_preferred_output message 1: role must be 'assistant', got 'user'.",
        ),
        (
            with("preferred_output", json!([{"role": "assistant"}])),
            "Example 2, preferred_output message 1 is missing key 'content'.",
        ),
    ];
    for (bad, fragment) in cases {
        let file = jsonl(&[preference(), bad]);
        assert_error(parse_preference(file.as_bytes()), 2, fragment);
    }
}
