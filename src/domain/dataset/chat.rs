//! Chat files: one `{"messages": […], "tools"?: […]}` object per line, checked the way
//! OpenAI's validator and its cookbook notebook check them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::lines::collect_objects;
use super::{json_type, DatasetError, ExampleAt};
use crate::domain::echo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

impl ChatRole {
    pub fn parse(role: &str) -> Option<Self> {
        Some(match role {
            "system" => ChatRole::System,
            "developer" => ChatRole::Developer,
            "user" => ChatRole::User,
            "assistant" => ChatRole::Assistant,
            "tool" => ChatRole::Tool,
            "function" => ChatRole::Function,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::Developer => "developer",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
            ChatRole::Tool => "tool",
            ChatRole::Function => "function",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    /// Text parts are concatenated; empty for an assistant turn that only calls tools.
    pub content: String,
    pub name: Option<String>,
    /// Assistant messages only: 0 = not trained on, 1 = trained on; `None` = trained on.
    pub weight: Option<u8>,
    pub tool_calls: Option<Value>,
    pub tool_call_id: Option<String>,
    pub function_call: Option<Value>,
}

impl ChatMessage {
    /// Whether the trainer computes loss on this message.
    pub fn is_trained(&self) -> bool {
        self.role == ChatRole::Assistant && self.weight != Some(0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatExample {
    pub messages: Vec<ChatMessage>,
    pub tools: Option<Value>,
}

const MESSAGE_KEYS: [&str; 7] = [
    "role",
    "content",
    "name",
    "weight",
    "tool_calls",
    "tool_call_id",
    "function_call",
];
const EXAMPLE_KEYS: [&str; 4] = ["messages", "tools", "parallel_tool_calls", "functions"];

/// Parses a chat file; the first bad example or message is the error.
pub fn parse_chat(bytes: &[u8]) -> Result<Vec<ChatExample>, DatasetError> {
    collect_objects(bytes, |at, object| chat_example(at, object, ""))
}

/// Checks one `{"messages", "tools"?}` object. `within` names where the object sits inside
/// the example (`""` for a chat line, `", input"` for a preference line's input).
pub(super) fn chat_example(
    at: ExampleAt,
    object: &Map<String, Value>,
    within: &str,
) -> Result<ChatExample, DatasetError> {
    let messages = match object.get("messages") {
        None => return Err(at.error(format_args!("{within} is missing key 'messages'."))),
        Some(Value::Array(messages)) => messages,
        Some(other) => {
            return Err(at.error(format_args!(
                "{within}: 'messages' must be a list, got {}.",
                json_type(other)
            )))
        }
    };
    if let Some(extra) = object
        .keys()
        .find(|key| !EXAMPLE_KEYS.contains(&key.as_str()))
    {
        return Err(at.error(format_args!("{within} contains an extra \"{extra}\".")));
    }
    if messages.is_empty() {
        return Err(at.error(format_args!("{within}: 'messages' is empty.")));
    }
    let messages = messages
        .iter()
        .enumerate()
        .map(|(index, message)| {
            chat_message(at, &format!("{within}, message {}", index + 1), message)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tools = match object.get("tools") {
        None | Some(Value::Null) => None,
        Some(tools @ Value::Array(_)) => Some(tools.clone()),
        Some(other) => {
            return Err(at.error(format_args!(
                "{within}: 'tools' must be a list, got {}.",
                json_type(other)
            )))
        }
    };
    if within.is_empty() && !messages.iter().any(|m| m.role == ChatRole::Assistant) {
        return Err(at.error(" is missing an assistant message."));
    }
    Ok(ChatExample { messages, tools })
}

/// Checks one message. `place` continues the example label: `", message 2"`.
pub(super) fn chat_message(
    at: ExampleAt,
    place: &str,
    value: &Value,
) -> Result<ChatMessage, DatasetError> {
    let fail = |detail: String| at.error(format_args!("{place}: {detail}"));
    let Value::Object(object) = value else {
        return Err(fail(format!(
            "must be a JSON object, got {}.",
            json_type(value)
        )));
    };
    if let Some(key) = object
        .keys()
        .find(|key| !MESSAGE_KEYS.contains(&key.as_str()))
    {
        return Err(fail(format!("unrecognized key '{}'.", echo(key))));
    }
    let role = match object.get("role") {
        None => return Err(at.error(format_args!("{place} is missing key 'role'."))),
        Some(role) => role
            .as_str()
            .and_then(ChatRole::parse)
            .ok_or_else(|| fail(format!("unrecognized role {} (expected one of system, developer, user, assistant, tool, function).", echo(&role.to_string()))))?,
    };
    let is_assistant = role == ChatRole::Assistant;
    let calls_tools = object.contains_key("tool_calls") || object.contains_key("function_call");
    let content = match object.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => text_parts(parts).map_err(fail)?,
        None | Some(Value::Null) if is_assistant && calls_tools => String::new(),
        None | Some(Value::Null) => {
            return Err(at.error(format_args!("{place} is missing key 'content'.")))
        }
        Some(other) => {
            return Err(fail(format!(
                "'content' must be a string or a list of text parts, got {}.",
                json_type(other)
            )))
        }
    };
    let weight = match object.get("weight") {
        None => None,
        Some(_) if !is_assistant => {
            return Err(fail(format!(
                "'weight' is only allowed on assistant messages, not on a {} message.",
                role.as_str()
            )))
        }
        Some(weight) => match weight.as_u64() {
            Some(0) => Some(0),
            Some(1) => Some(1),
            _ => {
                return Err(fail(format!(
                    "'weight' must be 0 or 1, got {}.",
                    echo(&weight.to_string())
                )))
            }
        },
    };
    let optional_string = |key: &str| match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(fail(format!(
            "'{key}' must be a string, got {}.",
            json_type(other)
        ))),
    };
    let name = optional_string("name")?;
    let tool_call_id = optional_string("tool_call_id")?;
    let tool_calls = match object.get("tool_calls") {
        None | Some(Value::Null) => None,
        Some(calls @ Value::Array(_)) if is_assistant => Some(calls.clone()),
        Some(Value::Array(_)) => {
            return Err(fail(
                "'tool_calls' is only allowed on assistant messages.".to_string(),
            ))
        }
        Some(other) => {
            return Err(fail(format!(
                "'tool_calls' must be a list, got {}.",
                json_type(other)
            )))
        }
    };
    let function_call = object
        .get("function_call")
        .filter(|v| !v.is_null())
        .cloned();
    Ok(ChatMessage {
        role,
        content,
        name,
        weight,
        tool_calls,
        tool_call_id,
        function_call,
    })
}

/// Concatenates `[{"type":"text","text":…}, …]`; other part types (images) are refused.
fn text_parts(parts: &[Value]) -> Result<String, String> {
    let mut content = String::new();
    for (index, part) in parts.iter().enumerate() {
        let number = index + 1;
        let kind = part.get("type").and_then(Value::as_str);
        match (kind, part.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(text)) => content.push_str(text),
            (Some("text"), None) => {
                return Err(format!("content part {number} is missing key 'text'."))
            }
            (Some(other), _) => {
                return Err(format!(
                    "content part {number} has type '{}'; only 'text' parts are supported.",
                    echo(other)
                ))
            }
            (None, _) => return Err(format!("content part {number} is missing key 'type'.")),
        }
    }
    Ok(content)
}
