use serde_json::json;

use super::assert_error;
use crate::domain::dataset::{parse_chat, ChatRole};

/// One JSONL line per value.
fn jsonl(lines: &[serde_json::Value]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

fn good() -> serde_json::Value {
    json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "weight": 0},
        {"role": "user", "content": [{"type": "text", "text": "Bye "}, {"type": "text", "text": "now"}]},
        {"role": "assistant", "content": "Bye", "weight": 1}
    ]})
}

#[test]
fn parses_roles_parts_and_weights() {
    let examples = parse_chat(jsonl(&[good()]).as_bytes()).expect("valid chat");
    assert_eq!(examples.len(), 1);
    let messages = &examples[0].messages;
    let roles: Vec<ChatRole> = messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            ChatRole::System,
            ChatRole::User,
            ChatRole::Assistant,
            ChatRole::User,
            ChatRole::Assistant
        ]
    );
    assert_eq!(messages[3].content, "Bye now");
    assert_eq!(messages[2].weight, Some(0));
    let trained: Vec<bool> = messages.iter().map(|m| m.is_trained()).collect();
    assert_eq!(trained, [false, false, false, false, true]);
    assert_eq!(examples[0].tools, None);
}

#[test]
fn tool_calls_without_content_and_tools_are_kept() {
    let example = json!({
        "tools": [{"type": "function", "function": {"name": "get_weather"}}],
        "parallel_tool_calls": false,
        "messages": [
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny.", "name": "bot"}
        ]
    });
    let examples = parse_chat(jsonl(&[example]).as_bytes()).expect("valid chat");
    let messages = &examples[0].messages;
    assert_eq!(messages[2].content, "");
    assert_eq!(
        messages[2]
            .tool_calls
            .as_ref()
            .map(|c| c.to_string().len() > 10),
        Some(true)
    );
    assert_eq!(messages[3].tool_call_id.as_deref(), Some("c1"));
    assert_eq!(messages[4].name.as_deref(), Some("bot"));
    assert_eq!(
        examples[0]
            .tools
            .as_ref()
            .and_then(|t| t.as_array())
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn errors_name_example_and_message() {
    let user = json!({"role": "user", "content": "hi"});
    let assistant = json!({"role": "assistant", "content": "yo"});
    let with = |message: serde_json::Value| json!({"messages": [user, message, assistant]});
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"messages": [user]}), "Example 2 is missing an assistant message."),
        (json!({"conversation": []}), "Example 2 is missing key 'messages'."),
        (json!({"messages": [user, assistant], "weight": 1}), "Example 2 contains an extra \"weight\"."),
        (json!({"messages": "hi"}), "Example 2: 'messages' must be a list, got a string."),
        (json!({"messages": []}), "Example 2: 'messages' is empty."),
        (json!({"messages": [user, assistant], "tools": {}}), "Example 2: 'tools' must be a list"),
        (with(json!({"role": "bot", "content": "x"})), "Example 2, message 2: unrecognized role \"bot\""),
        (with(json!({"content": "x"})), "Example 2, message 2 is missing key 'role'."),
        (with(json!({"role": "assistant"})), "Example 2, message 2 is missing key 'content'."),
        (with(json!({"role": "user", "content": null})), "Example 2, message 2 is missing key 'content'."),
        (with(json!({"role": "assistant", "content": "x", "mood": "happy"})), "Example 2, message 2: unrecognized key 'mood'."),
        (with(json!({"role": "assistant", "content": "x", "weight": 2})), "Example 2, message 2: 'weight' must be 0 or 1, got 2."),
        (with(json!({"role": "assistant", "content": "x", "weight": "1"})), "'weight' must be 0 or 1, got \"1\"."),
        (with(json!({"role": "user", "content": "x", "weight": 1})), "Example 2, message 2: 'weight' is only allowed on assistant messages, not on a user message."),
        (with(json!({"role": "user", "content": 3})), "Example 2, message 2: 'content' must be a string or a list of text parts, got a number."),
        (with(json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]})), "Example 2, message 2: content part 1 has type 'image_url'; only 'text' parts are supported."),
        (with(json!({"role": "user", "content": [{"type": "text"}]})), "content part 1 is missing key 'text'."),
        (with(json!({"role": "user", "content": "x", "tool_calls": []})), "Example 2, message 2: 'tool_calls' is only allowed on assistant messages."),
        (with(json!({"role": "user", "content": "x", "name": 5})), "Example 2, message 2: 'name' must be a string, got a number."),
        (with(json!("hello")), "Example 2, message 2: must be a JSON object, got a string."),
        (json!([1]), "Example 2 must be a JSON object, got an array."),
    ];
    for (bad, fragment) in cases {
        let file = jsonl(&[good(), bad, good()]);
        assert_error(parse_chat(file.as_bytes()), 2, fragment);
    }
}

#[test]
fn line_number_is_added_when_it_differs_from_the_example_number() {
    let file = format!(
        "\n\n{}\n{}\n",
        good(),
        json!({"messages": [{"role": "user", "content": "x"}]})
    );
    let error = parse_chat(file.as_bytes()).expect_err("no assistant");
    assert_eq!(error.line, 4);
    assert_eq!(
        error.to_string(),
        "Invalid file format. Example 2 (line 4) is missing an assistant message."
    );
}

/// A bad value of any size is repeated at most 64 characters long (then `…`), so a hostile
/// file cannot make a huge error message.
#[test]
fn bad_values_are_echoed_short() {
    let long_role = "r".repeat(10_000);
    let long_key = "k".repeat(10_000);
    let good = json!({"messages": [{"role": "user", "content": "hi"},
                                   {"role": "assistant", "content": "yo"}]});
    for bad in [
        json!({"messages": [{"role": long_role, "content": "hi"}]}),
        json!({"messages": [{"role": "user", "content": "hi", long_key.clone(): 1}]}),
        json!({"messages": [{"role": "user", "content": [{"type": long_key, "text": "x"}]}]}),
    ] {
        let file = format!("{good}\n{bad}\n");
        let error = parse_chat(file.as_bytes()).expect_err("rejected");
        assert_eq!(error.line, 2);
        assert!(
            error.message.contains("rrrrrrrr…") || error.message.contains("kkkkkkkk…"),
            "{}",
            error.message
        );
        assert!(error.message.len() < 400, "{} bytes", error.message.len());
    }
}
