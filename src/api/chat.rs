//! `POST /v1/chat/completions`: OpenAI's chat completions over a served language model,
//! as one `chat.completion` object or as SSE `chat.completion.chunk`s ending in
//! `data: [DONE]`.

use axum::extract::State;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{ApiError, ApiJson};
use super::generation::{
    common_params, forward_events, generation_error, invalid, json_event, logprobs_wire,
    sse_response, token_limit, ChoiceLogprobs, EventSender, Fields, Streaming, UsageWire,
};
use super::wire::unix_now;
use super::AppState;
use crate::domain::ids::random_base62;
use crate::infer::{Generation, GenerationEvent, GenerationParams, GenerationStream};

pub const ROUTES: &[(Method, &str)] = &[(Method::POST, "/v1/chat/completions")];

/// Alternatives per token, as OpenAI.
pub const MAX_TOP_LOGPROBS: i64 = 20;
/// Reported as `system_fingerprint`: the serving stack, not a model revision.
pub const SYSTEM_FINGERPRINT: &str = "fp_temper";

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/chat/completions", post(create))
}

/// A validated chat request.
#[derive(Debug, PartialEq)]
pub struct ValidChat {
    pub model: String,
    /// Template-ready messages: `developer` mapped to `system`, content as one string.
    pub messages: Vec<Value>,
    pub params: GenerationParams,
    pub streaming: Streaming,
}

pub fn parse(fields: &Fields) -> Result<ValidChat, ApiError> {
    let model = fields.model()?;
    let messages = messages(fields)?;
    unsupported_features(fields)?;
    let (max_tokens, max_tokens_param) = match token_limit(fields, "max_completion_tokens")? {
        Some(limit) => (Some(limit), "max_completion_tokens"),
        None => (token_limit(fields, "max_tokens")?, "max_tokens"),
    };
    let (mut params, streaming) = common_params(fields, max_tokens)?;
    params.max_tokens_param = max_tokens_param;
    let logprobs = fields.get::<bool>("logprobs")?.unwrap_or(false);
    let top = fields.get::<i64>("top_logprobs")?;
    match top {
        Some(k) if !(0..=MAX_TOP_LOGPROBS).contains(&k) => {
            return Err(invalid(
                "top_logprobs",
                format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}."),
            ))
        }
        Some(_) if !logprobs => {
            return Err(invalid(
                "top_logprobs",
                "`logprobs` must be set to true when `top_logprobs` is given.",
            ))
        }
        _ => {}
    }
    params.logprobs = logprobs.then(|| top.unwrap_or(0) as usize);
    Ok(ValidChat {
        model,
        messages,
        params,
        streaming,
    })
}

fn messages(fields: &Fields) -> Result<Vec<Value>, ApiError> {
    let items = match fields.raw("messages") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        _ => {
            return Err(invalid(
                "messages",
                "`messages` must be a non-empty list of messages.",
            ))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| message(i, item))
        .collect()
}

fn message(i: usize, item: &Value) -> Result<Value, ApiError> {
    let Value::Object(fields) = item else {
        return Err(invalid(
            &format!("messages[{i}]"),
            format!("`messages[{i}]` must be an object."),
        ));
    };
    let role = match fields.get("role").and_then(Value::as_str) {
        Some(role) if ROLES.contains(&role) => role,
        other => {
            return Err(invalid(
                &format!("messages[{i}].role"),
                format!(
                    "`messages[{i}].role` must be one of {}, got {}.",
                    ROLES.join(", "),
                    other.map_or("nothing".to_string(), |r| format!(
                        "`{}`",
                        super::error::echo(r)
                    ))
                ),
            ))
        }
    };
    let content = content_text(i, role, fields.get("content"))?;
    let mut message: Map<String, Value> = fields.clone();
    // Chat templates know `system`; OpenAI's `developer` role plays that part.
    let role = if role == "developer" { "system" } else { role };
    message.insert("role".into(), Value::from(role));
    message.insert("content".into(), Value::from(content));
    Ok(Value::Object(message))
}

/// Content as one string: a string, or the concatenated text parts. Assistant turns
/// may have none (tool calls).
fn content_text(i: usize, role: &str, content: Option<&Value>) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match content {
        Some(Value::String(text)) => Ok(text.clone()),
        None | Some(Value::Null) if role == "assistant" => Ok(String::new()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(
                |part| match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(text))) => Ok(text.as_str()),
                    _ => Err(invalid(
                        &param,
                        format!("`{param}` may only hold text parts on this server."),
                    )),
                },
            )
            .collect::<Result<String, ApiError>>(),
        _ => Err(invalid(
            &param,
            format!("`{param}` must be a string or a list of text parts."),
        )),
    }
}

/// Fields that would need constrained decoding, tool parsing or audio: a 400 naming
/// them rather than an answer that silently ignores them.
fn unsupported_features(fields: &Fields) -> Result<(), ApiError> {
    if let Some(format) = fields.raw("response_format") {
        if format.get("type").and_then(Value::as_str) != Some("text") {
            return Err(invalid(
                "response_format",
                "Only `response_format` of type `text` is supported on this server.",
            ));
        }
    }
    let tool_choice = fields.raw("tool_choice");
    let choice_none = tool_choice.and_then(Value::as_str) == Some("none");
    if let Some(choice) = tool_choice {
        if !matches!(choice.as_str(), Some("none" | "auto")) {
            return Err(invalid(
                "tool_choice",
                "Forcing a tool call is not supported on this server.",
            ));
        }
    }
    let has_tools = fields
        .raw("tools")
        .is_some_and(|t| t.as_array().is_none_or(|list| !list.is_empty()));
    if has_tools && !choice_none {
        return Err(invalid(
            "tools",
            "Tool calling is not supported on this server.",
        ));
    }
    let has_functions = fields
        .raw("functions")
        .is_some_and(|f| f.as_array().is_none_or(|list| !list.is_empty()));
    if has_functions {
        return Err(invalid("functions", "Function calling is not supported."));
    }
    if fields
        .raw("function_call")
        .is_some_and(|c| c.as_str() != Some("none"))
    {
        return Err(invalid(
            "function_call",
            "Function calling is not supported.",
        ));
    }
    if fields.raw("audio").is_some() {
        return Err(invalid("audio", "Audio output is not supported."));
    }
    if let Some(modalities) = fields.get::<Vec<String>>("modalities")? {
        if modalities.iter().any(|m| m != "text") {
            return Err(invalid(
                "modalities",
                "Only the `text` modality is supported.",
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct AssistantMessage {
    role: &'static str,
    content: String,
    refusal: Option<String>,
}

#[derive(Debug, Serialize)]
struct ChatChoice {
    index: usize,
    message: AssistantMessage,
    logprobs: Option<ChoiceLogprobs>,
    finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
struct ChatCompletion {
    id: String,
    object: &'static str,
    created: i64,
    model: String,
    choices: Vec<ChatChoice>,
    usage: UsageWire,
    system_fingerprint: &'static str,
}

fn completion_wire(model: String, generation: Generation) -> ChatCompletion {
    let choices = generation
        .choices
        .into_iter()
        .map(|choice| ChatChoice {
            index: choice.index,
            message: AssistantMessage {
                role: "assistant",
                content: choice.text,
                refusal: None,
            },
            logprobs: choice.logprobs.map(logprobs_wire),
            finish_reason: choice.finish_reason.as_str(),
        })
        .collect();
    ChatCompletion {
        id: new_id(),
        object: "chat.completion",
        created: unix_now(),
        model,
        choices,
        usage: generation.usage.into(),
        system_fingerprint: SYSTEM_FINGERPRINT,
    }
}

fn new_id() -> String {
    format!("chatcmpl-{}", random_base62(29))
}

#[derive(Debug, Default, Serialize)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
}

#[derive(Debug, Serialize)]
struct ChunkChoice {
    index: usize,
    delta: Delta,
    logprobs: Option<ChoiceLogprobs>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<ChunkChoice>,
    /// Absent without `include_usage`; with it `null`, and the usage in the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageWire>>,
}

/// What every chunk of one response repeats.
struct ChunkHeader {
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
}

impl ChunkHeader {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<UsageWire>) -> ChatChunk<'_> {
        ChatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage: self.include_usage.then_some(usage),
        }
    }

    /// The chunk for one generation event; `None` for usage when it was not asked for.
    fn event_chunk(&self, event: GenerationEvent, logprobs: bool) -> Option<ChatChunk<'_>> {
        let choice = match event {
            GenerationEvent::Delta {
                choice,
                text,
                logprobs: tokens,
            } => ChunkChoice {
                index: choice,
                delta: Delta {
                    role: None,
                    content: Some(text),
                },
                logprobs: logprobs.then(|| logprobs_wire(tokens)),
                finish_reason: None,
            },
            GenerationEvent::Finished { choice, reason } => ChunkChoice {
                index: choice,
                delta: Delta::default(),
                logprobs: None,
                finish_reason: Some(reason.as_str()),
            },
            GenerationEvent::Usage(usage) => {
                return self
                    .include_usage
                    .then(|| self.chunk(Vec::new(), Some(usage.into())))
            }
        };
        Some(self.chunk(vec![choice], None))
    }
}

/// Feeds the SSE response: a role chunk per choice, the events, then `[DONE]`.
async fn stream_chunks(stream: GenerationStream, header: ChunkHeader, events: EventSender) {
    for index in 0..stream.n() {
        let role = ChunkChoice {
            index,
            delta: Delta {
                role: Some("assistant"),
                content: Some(String::new()),
            },
            logprobs: None,
            finish_reason: None,
        };
        if events
            .send(Ok(json_event(&header.chunk(vec![role], None))))
            .await
            .is_err()
        {
            return;
        }
    }
    let logprobs = stream.logprobs();
    forward_events(stream, &events, |event| {
        header
            .event_chunk(event, logprobs)
            .map(|chunk| json_event(&chunk))
    })
    .await;
}

async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let request = parse(&Fields(body))?;
    let stream = state
        .inference
        .chat(
            request.model.clone(),
            request.messages,
            None,
            request.params,
        )
        .await
        .map_err(generation_error)?;
    if !request.streaming.stream {
        let generation = stream.collect().await.map_err(generation_error)?;
        return Ok(ApiJson(completion_wire(request.model, generation)).into_response());
    }
    let header = ChunkHeader {
        id: new_id(),
        created: unix_now(),
        model: request.model,
        include_usage: request.streaming.include_usage,
    };
    Ok(sse_response(move |events| {
        stream_chunks(stream, header, events)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(value: Value) -> Result<ValidChat, ApiError> {
        match value {
            Value::Object(map) => parse(&Fields(map)),
            _ => panic!("object"),
        }
    }

    #[test]
    fn messages_become_template_ready() {
        let chat = parse_json(json!({"model": "m", "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "name": "bot"}
        ], "user": "u-1", "store": false, "metadata": {"k": "v"}, "parallel_tool_calls": true,
           "service_tier": "auto", "frequency_penalty": 0, "presence_penalty": 0}))
        .expect("valid");
        assert_eq!(
            chat.messages,
            [
                json!({"role": "system", "content": "be brief"}),
                json!({"role": "user", "content": "ab"}),
                json!({"role": "assistant", "content": "", "name": "bot"}),
            ]
        );
        assert_eq!(chat.params.logprobs, None);
    }

    #[test]
    fn max_completion_tokens_wins_and_logprobs_carry_top_k() {
        let chat = parse_json(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 9, "max_completion_tokens": 4, "logprobs": true, "top_logprobs": 3}),
        )
        .expect("valid");
        assert_eq!(chat.params.max_tokens, Some(4));
        assert_eq!(chat.params.max_tokens_param, "max_completion_tokens");
        assert_eq!(chat.params.logprobs, Some(3));
        let plain = parse_json(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "logprobs": true}),
        )
        .expect("valid");
        assert_eq!(plain.params.logprobs, Some(0));
    }

    #[test]
    fn bad_chat_fields_name_their_param() {
        let user = json!([{"role": "user", "content": "x"}]);
        for (body, param) in [
            (json!({"messages": user}), "model"),
            (json!({"model": "m"}), "messages"),
            (json!({"model": "m", "messages": []}), "messages"),
            (
                json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "m", "messages": user, "top_logprobs": 2}),
                "top_logprobs",
            ),
            (
                json!({"model": "m", "messages": user, "logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (
                json!({"model": "m", "messages": user, "max_completion_tokens": 0}),
                "max_completion_tokens",
            ),
            (
                json!({"model": "m", "messages": user, "response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (
                json!({"model": "m", "messages": user, "tools": [{"type": "function"}]}),
                "tools",
            ),
            (
                json!({"model": "m", "messages": user, "tool_choice": "required"}),
                "tool_choice",
            ),
            (
                json!({"model": "m", "messages": user, "audio": {"voice": "x"}}),
                "audio",
            ),
        ] {
            let err = parse_json(body.clone()).expect_err("400");
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
        }
        // Tools the caller forbids the model to call are harmless.
        let ok = parse_json(json!({"model": "m", "messages": user,
            "tools": [{"type": "function"}], "tool_choice": "none", "response_format": {"type": "text"}}));
        assert!(ok.is_ok());
    }
}
