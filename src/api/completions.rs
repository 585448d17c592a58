//! `POST /v1/completions`: OpenAI's legacy text completions (prompt in, text out, no
//! chat template), as one `text_completion` object or SSE chunks of the same shape.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Serialize;
use serde_json::{Map, Value};

use super::chat::SYSTEM_FINGERPRINT;
use super::error::{ApiError, ApiJson};
use super::generation::{
    common_params, forward_events, generation_error, invalid, json_event, sse_response,
    token_limit, EventSender, Fields, Streaming, UsageWire,
};
use super::wire::unix_now;
use super::AppState;
use crate::domain::ids::random_base62;
use crate::infer::{Generation, GenerationEvent, GenerationParams, GenerationStream, TokenLogprob};

pub const ROUTES: &[(Method, &str)] = &[(Method::POST, "/v1/completions")];

/// OpenAI's default for this endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;
/// Alternatives per token, as OpenAI's legacy `logprobs` integer.
pub const MAX_LOGPROBS: i64 = 5;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/completions", post(create))
}

#[derive(Debug, PartialEq)]
pub struct ValidCompletion {
    pub model: String,
    pub prompt: String,
    pub params: GenerationParams,
    pub streaming: Streaming,
}

pub fn parse(fields: &Fields) -> Result<ValidCompletion, ApiError> {
    let model = fields.model()?;
    let prompt = match fields.raw("prompt") {
        Some(Value::String(prompt)) => prompt.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_string()
        }
        _ => {
            return Err(invalid(
                "prompt",
                "`prompt` must be a string (or a list of exactly one string) on this server.",
            ))
        }
    };
    if fields.get::<bool>("echo")?.unwrap_or(false) {
        return Err(invalid("echo", "`echo` is not supported on this server."));
    }
    if fields
        .get::<String>("suffix")?
        .is_some_and(|s| !s.is_empty())
    {
        return Err(invalid(
            "suffix",
            "`suffix` is not supported on this server.",
        ));
    }
    if fields.get::<i64>("best_of")?.is_some_and(|b| b != 1) {
        return Err(invalid(
            "best_of",
            "Only `best_of` = 1 is supported on this server.",
        ));
    }
    let max_tokens = token_limit(fields, "max_tokens")?.unwrap_or(DEFAULT_MAX_TOKENS);
    let (mut params, streaming) = common_params(fields, Some(max_tokens))?;
    params.logprobs = match fields.get::<i64>("logprobs")? {
        None => None,
        Some(k) if (0..=MAX_LOGPROBS).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(invalid(
                "logprobs",
                format!("`logprobs` must be between 0 and {MAX_LOGPROBS}, got {k}."),
            ))
        }
    };
    Ok(ValidCompletion {
        model,
        prompt,
        params,
        streaming,
    })
}

/// The legacy logprobs shape: parallel lists, alternatives as `{token: logprob}` maps.
#[derive(Debug, Serialize)]
struct CompletionLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    /// f32 like `token_logprobs`, so equal values print identically.
    top_logprobs: Vec<BTreeMap<String, f32>>,
    /// Character offset of each token in the choice's text.
    text_offset: Vec<usize>,
}

/// `offset`: characters of the choice's text before these tokens (advanced here).
fn logprobs_wire(tokens: Vec<TokenLogprob>, offset: &mut usize) -> CompletionLogprobs {
    let mut wire = CompletionLogprobs {
        tokens: Vec::new(),
        token_logprobs: Vec::new(),
        top_logprobs: Vec::new(),
        text_offset: Vec::new(),
    };
    for token in tokens {
        wire.text_offset.push(*offset);
        *offset += token.token.chars().count();
        wire.token_logprobs.push(token.logprob);
        wire.top_logprobs.push(
            token
                .top
                .into_iter()
                .map(|alt| (alt.token, alt.logprob))
                .collect(),
        );
        wire.tokens.push(token.token);
    }
    wire
}

#[derive(Debug, Serialize)]
struct CompletionChoice {
    text: String,
    index: usize,
    logprobs: Option<CompletionLogprobs>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct TextCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<CompletionChoice>,
    /// Always present in a whole response; in chunks only with `include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageWire>>,
}

struct Header {
    id: String,
    created: i64,
    model: String,
}

impl Header {
    fn new(model: String) -> Self {
        Self {
            id: format!("cmpl-{}", random_base62(29)),
            created: unix_now(),
            model,
        }
    }

    fn object(
        &self,
        choices: Vec<CompletionChoice>,
        usage: Option<Option<UsageWire>>,
    ) -> TextCompletion<'_> {
        TextCompletion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage,
        }
    }
}

fn whole_response(header: &Header, generation: Generation) -> TextCompletion<'_> {
    let choices = generation
        .choices
        .into_iter()
        .map(|choice| CompletionChoice {
            text: choice.text,
            index: choice.index,
            logprobs: choice.logprobs.map(|t| logprobs_wire(t, &mut 0)),
            finish_reason: Some(choice.finish_reason.as_str()),
        })
        .collect();
    header.object(choices, Some(Some(generation.usage.into())))
}

/// Feeds the SSE response: a chunk per event, the usage chunk if asked, `[DONE]`.
async fn stream_chunks(
    stream: GenerationStream,
    header: Header,
    include_usage: bool,
    events: EventSender,
) {
    let logprobs = stream.logprobs();
    let mut offsets = vec![0usize; stream.n()];
    let usage_field = |usage: Option<UsageWire>| include_usage.then_some(usage);
    forward_events(stream, &events, |event| match event {
        GenerationEvent::Delta {
            choice,
            text,
            logprobs: tokens,
        } => {
            let offset = offsets.get_mut(choice)?;
            let choice = CompletionChoice {
                text,
                index: choice,
                logprobs: logprobs.then(|| logprobs_wire(tokens, offset)),
                finish_reason: None,
            };
            Some(json_event(&header.object(vec![choice], usage_field(None))))
        }
        GenerationEvent::Finished { choice, reason } => {
            let choice = CompletionChoice {
                text: String::new(),
                index: choice,
                logprobs: None,
                finish_reason: Some(reason.as_str()),
            };
            Some(json_event(&header.object(vec![choice], usage_field(None))))
        }
        GenerationEvent::Usage(usage) if include_usage => Some(json_event(
            &header.object(Vec::new(), Some(Some(usage.into()))),
        )),
        GenerationEvent::Usage(_) => None,
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
        .complete(request.model.clone(), request.prompt, request.params)
        .await
        .map_err(generation_error)?;
    let header = Header::new(request.model);
    if !request.streaming.stream {
        let generation = stream.collect().await.map_err(generation_error)?;
        return Ok(ApiJson(whole_response(&header, generation)).into_response());
    }
    let include_usage = request.streaming.include_usage;
    Ok(sse_response(move |events| {
        stream_chunks(stream, header, include_usage, events)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(value: Value) -> Result<ValidCompletion, ApiError> {
        match value {
            Value::Object(map) => parse(&Fields(map)),
            _ => panic!("object"),
        }
    }

    #[test]
    fn defaults_and_accepted_shapes() {
        let one = parse_json(json!({"model": "m", "prompt": "hi"})).expect("valid");
        assert_eq!(one.prompt, "hi");
        assert_eq!(one.params.max_tokens, Some(16));
        assert_eq!(one.params.logprobs, None);
        let listed = parse_json(json!({"model": "m", "prompt": ["hi"], "logprobs": 2,
            "best_of": 1, "echo": false, "suffix": null}))
        .expect("valid");
        assert_eq!(listed.prompt, "hi");
        assert_eq!(listed.params.logprobs, Some(2));
    }

    #[test]
    fn bad_completion_fields_name_their_param() {
        for (body, param) in [
            (json!({"prompt": "x"}), "model"),
            (json!({"model": "m"}), "prompt"),
            (json!({"model": "m", "prompt": ["a", "b"]}), "prompt"),
            (json!({"model": "m", "prompt": [1, 2]}), "prompt"),
            (
                json!({"model": "m", "prompt": "x", "logprobs": 6}),
                "logprobs",
            ),
            (json!({"model": "m", "prompt": "x", "echo": true}), "echo"),
            (
                json!({"model": "m", "prompt": "x", "suffix": "end"}),
                "suffix",
            ),
            (
                json!({"model": "m", "prompt": "x", "best_of": 3}),
                "best_of",
            ),
            (
                json!({"model": "m", "prompt": "x", "max_tokens": 0}),
                "max_tokens",
            ),
            (json!({"model": "m", "prompt": "x", "n": 20}), "n"),
        ] {
            let err = parse_json(body.clone()).expect_err("400");
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn text_offsets_count_characters() {
        let token = |t: &str| TokenLogprob {
            token: t.to_string(),
            logprob: -0.5,
            top: Vec::new(),
        };
        let mut offset = 3;
        let wire = logprobs_wire(vec![token("é"), token("ab")], &mut offset);
        assert_eq!(wire.text_offset, [3, 4]);
        assert_eq!(offset, 6);
    }
}
