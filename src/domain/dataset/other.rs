//! The smaller formats: legacy prompt/completion pairs, preference pairs for DPO and
//! token-tagging examples.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::chat::{chat_example, chat_message, ChatExample, ChatMessage, ChatRole};
use super::lines::collect_objects;
use super::{json_type, DatasetError, ExampleAt};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptCompletion {
    pub prompt: String,
    pub completion: String,
}

/// A DPO pair: a conversation and two candidate final assistant turns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferenceExample {
    pub input: ChatExample,
    pub preferred: ChatMessage,
    pub non_preferred: ChatMessage,
}

/// Token classification: one tag per token (integer tags are kept as strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenTagsExample {
    pub tokens: Vec<String>,
    pub tags: Vec<String>,
}

fn reject_extra_keys(
    at: ExampleAt,
    object: &Map<String, Value>,
    allowed: &[&str],
) -> Result<(), DatasetError> {
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(extra) => Err(at.error(format_args!(" contains an extra \"{extra}\"."))),
        None => Ok(()),
    }
}

fn required<'a>(
    at: ExampleAt,
    object: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a Value, DatasetError> {
    object
        .get(key)
        .filter(|value| !value.is_null())
        .ok_or_else(|| at.missing_key(key))
}

fn required_string(
    at: ExampleAt,
    object: &Map<String, Value>,
    key: &str,
) -> Result<String, DatasetError> {
    match required(at, object, key)? {
        Value::String(text) => Ok(text.clone()),
        other => Err(at.error(format_args!(
            ": '{key}' must be a string, got {}.",
            json_type(other)
        ))),
    }
}

/// Parses a `{"prompt","completion"}` file. An empty prompt is allowed, an empty completion
/// (nothing to learn) is not.
pub fn parse_prompt_completion(bytes: &[u8]) -> Result<Vec<PromptCompletion>, DatasetError> {
    collect_objects(bytes, prompt_completion)
}

pub(super) fn prompt_completion(
    at: ExampleAt,
    object: &Map<String, Value>,
) -> Result<PromptCompletion, DatasetError> {
    let prompt = required_string(at, object, "prompt")?;
    let completion = required_string(at, object, "completion")?;
    reject_extra_keys(at, object, &["prompt", "completion"])?;
    if completion.is_empty() {
        return Err(at.error(": 'completion' is empty."));
    }
    Ok(PromptCompletion { prompt, completion })
}

/// Parses a DPO file. Both spellings of the outputs are accepted: OpenAI's guide says
/// `preferred_output`, its API spec `preferred_completion`.
pub fn parse_preference(bytes: &[u8]) -> Result<Vec<PreferenceExample>, DatasetError> {
    collect_objects(bytes, preference_example)
}

pub(super) fn preference_example(
    at: ExampleAt,
    object: &Map<String, Value>,
) -> Result<PreferenceExample, DatasetError> {
    let input = match required(at, object, "input")? {
        Value::Object(input) => chat_example(at, input, ", input")?,
        other => {
            return Err(at.error(format_args!(
                ": 'input' must be an object, got {}.",
                json_type(other)
            )))
        }
    };
    reject_extra_keys(
        at,
        object,
        &[
            "input",
            "preferred_output",
            "non_preferred_output",
            "preferred_completion",
            "non_preferred_completion",
        ],
    )?;
    let preferred = preference_output(at, object, "preferred")?;
    let non_preferred = preference_output(at, object, "non_preferred")?;
    Ok(PreferenceExample {
        input,
        preferred,
        non_preferred,
    })
}

/// `{which}_output` (or `{which}_completion`): a list holding exactly one assistant message.
fn preference_output(
    at: ExampleAt,
    object: &Map<String, Value>,
    which: &str,
) -> Result<ChatMessage, DatasetError> {
    let output_key = format!("{which}_output");
    let completion_key = format!("{which}_completion");
    let (key, value) = match (object.get(&output_key), object.get(&completion_key)) {
        (Some(value), _) => (output_key, value),
        (None, Some(value)) => (completion_key, value),
        (None, None) => return Err(at.missing_key(&output_key)),
    };
    let messages = match value {
        Value::Array(messages) if messages.len() == 1 => messages,
        _ => {
            return Err(at.error(format_args!(
                ": '{key}' must be a list holding exactly one assistant message."
            )))
        }
    };
    let message = chat_message(at, &format!(", {key} message 1"), &messages[0])?;
    if message.role != ChatRole::Assistant {
        return Err(at.error(format_args!(
            ", {key} message 1: role must be 'assistant', got '{}'.",
            message.role.as_str()
        )));
    }
    Ok(message)
}

/// Parses a `{"tokens": [...], "tags": [...]}` file; both lists must have the same length.
pub fn parse_token_tags(bytes: &[u8]) -> Result<Vec<TokenTagsExample>, DatasetError> {
    collect_objects(bytes, token_tags_example)
}

pub(super) fn token_tags_example(
    at: ExampleAt,
    object: &Map<String, Value>,
) -> Result<TokenTagsExample, DatasetError> {
    let tokens = string_list(at, object, "tokens", false)?;
    let tags = string_list(at, object, "tags", true)?;
    reject_extra_keys(at, object, &["tokens", "tags"])?;
    if tokens.is_empty() {
        return Err(at.error(": 'tokens' is empty."));
    }
    if tokens.len() != tags.len() {
        return Err(at.error(format_args!(
            " has {} token(s) but {} tag(s); they must match one to one.",
            tokens.len(),
            tags.len()
        )));
    }
    Ok(TokenTagsExample { tokens, tags })
}

fn string_list(
    at: ExampleAt,
    object: &Map<String, Value>,
    key: &str,
    integers_allowed: bool,
) -> Result<Vec<String>, DatasetError> {
    let bad = || {
        let what = if integers_allowed {
            "strings or integers"
        } else {
            "strings"
        };
        at.error(format_args!(": '{key}' must be a list of {what}."))
    };
    let Value::Array(items) = required(at, object, key)? else {
        return Err(bad());
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) if integers_allowed && (n.is_i64() || n.is_u64()) => Ok(n.to_string()),
            _ => Err(bad()),
        })
        .collect()
}
