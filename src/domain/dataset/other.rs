//! The smaller formats: legacy prompt/completion pairs and preference pairs for DPO
//! (token-tagging examples are in `token_tags.rs`).

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
