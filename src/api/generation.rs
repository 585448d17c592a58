//! What `/v1/chat/completions` and `/v1/completions` share: reading request fields with
//! the offending param named in every 400, the sampling settings both accept, usage on
//! the wire, and the SSE plumbing (`data: {chunk}` events, then `data: [DONE]`).

use std::convert::Infallible;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::shorten_quoted;
use super::ApiError;
use crate::domain::model_name::normalize_model_id;
use crate::infer::{
    GenerationEvent, GenerationParams, GenerationStream, InferError, TokenLogprob, Usage,
};

/// Most choices per request (each one is a sequence in the model's batch).
pub const MAX_N: i64 = 8;
/// Most stop strings, as OpenAI.
pub const MAX_STOP: usize = 4;
/// Most `logit_bias` entries a request may carry (each costs an addition per sampled
/// token; the bound keeps a request's sampling work and memory small).
pub const MAX_LOGIT_BIAS: usize = 1024;
/// SSE events buffered per response before the generator waits for the client.
const SSE_BUFFER: usize = 64;

/// A JSON request body read field by field, so type errors name their param.
pub struct Fields(pub Map<String, Value>);

impl Fields {
    /// `None` when absent or `null`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => serde_json::from_value(value.clone())
                .map(Some)
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "Invalid type for `{name}`: {}.",
                        shorten_quoted(&e.to_string())
                    ))
                    .with_param(name)
                }),
        }
    }

    pub fn raw(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// The `model`, normalised (`normalize_model_id`) so one model has one id.
    pub fn model(&self) -> Result<String, ApiError> {
        let model = self
            .get::<String>("model")?
            .map(|m| normalize_model_id(&m))
            .unwrap_or_default();
        if model.is_empty() {
            return Err(
                ApiError::bad_request("you must provide a model parameter").with_param("model")
            );
        }
        Ok(model)
    }
}

pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).with_param(param)
}

/// A generation error on the wire, mapped as every inference error is (prompt + completion
/// beyond the context is OpenAI's 400 `context_length_exceeded`).
pub fn generation_error(error: InferError) -> ApiError {
    ApiError::from(error)
}

/// Streaming switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Streaming {
    pub stream: bool,
    /// Every chunk carries `"usage": null` and a last chunk the usage.
    pub include_usage: bool,
}

/// The fields both endpoints read the same way. `max_tokens` is the caller's (chat
/// also reads `max_completion_tokens`); logprobs are endpoint-specific.
pub fn common_params(
    fields: &Fields,
    max_tokens: Option<usize>,
) -> Result<(GenerationParams, Streaming), ApiError> {
    let temperature = fields.get::<f64>("temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(invalid(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {temperature}."),
        ));
    }
    let top_p = fields.get::<f64>("top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid(
            "top_p",
            format!("`top_p` must be greater than 0 and at most 1, got {top_p}."),
        ));
    }
    let n = fields.get::<i64>("n")?.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(invalid(
            "n",
            format!("`n` must be between 1 and {MAX_N} on this server, got {n}."),
        ));
    }
    for penalty in ["frequency_penalty", "presence_penalty"] {
        let value = fields.get::<f64>(penalty)?.unwrap_or(0.0);
        if value != 0.0 {
            return Err(invalid(
                penalty,
                format!("`{penalty}` is not supported; only 0 is accepted, got {value}."),
            ));
        }
    }
    let logit_bias = logit_bias(fields)?;
    let params = GenerationParams {
        max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        n: n as usize,
        stop: stop_strings(fields)?,
        // Any 64-bit seed is fine; negative seeds wrap to distinct u64 values.
        seed: fields.get::<i64>("seed")?.map(|s| s as u64),
        logprobs: None,
        logit_bias,
        ..GenerationParams::default()
    };
    Ok((params, streaming(fields)?))
}

/// OpenAI's `logit_bias`: token ids (as strings) to a bias in [-100, 100], sorted by id.
/// Whether the ids exist in the model's vocabulary is the engine's check.
fn logit_bias(fields: &Fields) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = fields.get::<Map<String, Value>>("logit_bias")? else {
        return Ok(Vec::new());
    };
    if map.len() > MAX_LOGIT_BIAS {
        return Err(invalid(
            "logit_bias",
            format!(
                "`logit_bias` may name at most {MAX_LOGIT_BIAS} tokens, got {}.",
                map.len()
            ),
        ));
    }
    let mut bias = Vec::with_capacity(map.len());
    for (key, value) in &map {
        let id = key.parse::<u32>().map_err(|_| {
            invalid(
                "logit_bias",
                format!("`logit_bias` keys must be token ids, got \"{key}\"."),
            )
        })?;
        let value = value
            .as_f64()
            .filter(|v| (-100.0..=100.0).contains(v))
            .ok_or_else(|| {
                invalid(
                    "logit_bias",
                    format!("`logit_bias` values must be numbers between -100 and 100, got {value} for token {id}."),
                )
            })?;
        bias.push((id, value as f32));
    }
    bias.sort_by_key(|&(id, _)| id);
    Ok(bias)
}

/// `max_tokens`-style limits: absent, or at least 1 (any larger value is accepted here
/// and checked against the model's context by the engine).
pub fn token_limit(fields: &Fields, name: &str) -> Result<Option<usize>, ApiError> {
    match fields.get::<i64>(name)? {
        None => Ok(None),
        Some(limit) if limit >= 1 => Ok(Some(usize::try_from(limit).unwrap_or(usize::MAX))),
        Some(limit) => Err(invalid(
            name,
            format!("`{name}` must be at least 1, got {limit}."),
        )),
    }
}

fn stop_strings(fields: &Fields) -> Result<Vec<String>, ApiError> {
    let bad = || {
        invalid(
            "stop",
            format!("`stop` must be a string or a list of at most {MAX_STOP} strings."),
        )
    };
    match fields.raw("stop") {
        None => Ok(Vec::new()),
        Some(Value::String(stop)) => Ok(vec![stop.clone()]),
        Some(Value::Array(items)) if items.len() <= MAX_STOP => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

fn streaming(fields: &Fields) -> Result<Streaming, ApiError> {
    let stream = fields.get::<bool>("stream")?.unwrap_or(false);
    let include_usage = match fields.get::<Map<String, Value>>("stream_options")? {
        None => false,
        Some(_) if !stream => {
            return Err(invalid(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true.",
            ))
        }
        Some(options) => match options.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(flag)) => *flag,
            Some(_) => {
                return Err(invalid(
                    "stream_options",
                    "`stream_options.include_usage` must be a boolean.",
                ))
            }
        },
    };
    Ok(Streaming {
        stream,
        include_usage,
    })
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct UsageWire {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl From<Usage> for UsageWire {
    fn from(usage: Usage) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
        }
    }
}

/// The UTF-8 bytes of a token, as OpenAI reports them next to logprobs.
fn token_bytes(token: &str) -> Vec<u8> {
    token.as_bytes().to_vec()
}

#[derive(Debug, Serialize)]
pub struct TopLogprobWire {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Serialize)]
pub struct LogprobWire {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprobWire>,
}

#[derive(Debug, Serialize)]
pub struct ChoiceLogprobs {
    pub content: Vec<LogprobWire>,
    pub refusal: Option<String>,
}

/// Chat's logprobs shape (`content` entries with the UTF-8 bytes of each token).
pub fn logprobs_wire(tokens: Vec<TokenLogprob>) -> ChoiceLogprobs {
    let content = tokens
        .into_iter()
        .map(|t| LogprobWire {
            bytes: token_bytes(&t.token),
            top_logprobs: t
                .top
                .into_iter()
                .map(|alt| TopLogprobWire {
                    bytes: token_bytes(&alt.token),
                    token: alt.token,
                    logprob: alt.logprob,
                })
                .collect(),
            token: t.token,
            logprob: t.logprob,
        })
        .collect();
    ChoiceLogprobs {
        content,
        refusal: None,
    }
}

/// `data: {"error": …}`: the SDK raises it as an `APIError` mid-stream.
pub fn error_event(error: InferError) -> Event {
    let error = generation_error(error);
    let body = serde_json::json!({"error": {
        "message": error.message,
        "type": error.kind,
        "param": error.param,
        "code": error.code,
    }});
    Event::default().data(body.to_string())
}

/// `data: {chunk}` for any serializable chunk.
pub fn json_event<T: Serialize>(chunk: &T) -> Event {
    match serde_json::to_string(chunk) {
        Ok(json) => Event::default().data(json),
        Err(e) => error_event(InferError::engine(format!("serializing a chunk: {e}"))),
    }
}

pub fn done_event() -> Event {
    Event::default().data("[DONE]")
}

/// Sender side of an SSE response: the producer task pushes events; when the client
/// disconnects the body (and receiver) is dropped, `send` fails and the task ends,
/// which drops the generation stream and frees the sequences.
pub type EventSender = mpsc::Sender<Result<Event, Infallible>>;

/// Sends one SSE event per generation event (`None` skips it), an error event if the
/// generation fails midway, and `[DONE]` at the end; stops quietly when the client is gone.
pub async fn forward_events(
    mut stream: GenerationStream,
    events: &EventSender,
    mut to_event: impl FnMut(GenerationEvent) -> Option<Event>,
) {
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(event) => match to_event(event) {
                Some(event) => event,
                None => continue,
            },
            Err(error) => {
                let _ = events.send(Ok(error_event(error))).await;
                return;
            }
        };
        if events.send(Ok(event)).await.is_err() {
            return;
        }
    }
    let _ = events.send(Ok(done_event())).await;
}

/// Starts `produce` on its own task and answers with the SSE response it feeds.
pub fn sse_response<F, Fut>(produce: F) -> Response
where
    F: FnOnce(EventSender) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(SSE_BUFFER);
    // In the request's span: its lines carry the request id.
    tokio::spawn(tracing::Instrument::in_current_span(produce(sender)));
    Sse::new(ReceiverStream::new(receiver)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Fields {
        match value {
            Value::Object(map) => Fields(map),
            _ => panic!("object"),
        }
    }

    #[test]
    fn defaults_follow_openai() {
        let (params, streaming) = common_params(&fields(json!({"model": "m"})), None).expect("ok");
        assert_eq!(params, GenerationParams::default());
        assert_eq!(streaming, Streaming::default());
    }

    #[test]
    fn every_bad_field_is_named() {
        for (body, param) in [
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_p": 1.5}), "top_p"),
            (json!({"n": 9}), "n"),
            (json!({"n": 0}), "n"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"stop": 3}), "stop"),
            (json!({"frequency_penalty": 0.5}), "frequency_penalty"),
            (json!({"presence_penalty": -1}), "presence_penalty"),
            (json!({"logit_bias": {"x": 10}}), "logit_bias"),
            (json!({"logit_bias": {"-1": 10}}), "logit_bias"),
            (json!({"logit_bias": {"5": 101}}), "logit_bias"),
            (json!({"logit_bias": {"5": "up"}}), "logit_bias"),
            (json!({"logit_bias": [5]}), "logit_bias"),
            (
                json!({"stream_options": {"include_usage": true}}),
                "stream_options",
            ),
            (json!({"seed": "x"}), "seed"),
        ] {
            let err = common_params(&fields(body.clone()), None).expect_err("400");
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        }
        let err = token_limit(&fields(json!({"max_tokens": 0})), "max_tokens").expect_err("0");
        assert_eq!(err.param.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn accepted_values_are_carried_over() {
        let body = json!({"temperature": 0, "top_p": 0.5, "n": 8, "stop": "x", "seed": -1,
            "frequency_penalty": 0, "logit_bias": {}, "stream": true,
            "stream_options": {"include_usage": true}});
        let (params, streaming) = common_params(&fields(body), Some(7)).expect("ok");
        assert_eq!(params.temperature, 0.0);
        assert_eq!(params.top_p, 0.5);
        assert_eq!(params.n, 8);
        assert_eq!(params.stop, ["x"]);
        assert_eq!(params.seed, Some(u64::MAX));
        assert_eq!(params.max_tokens, Some(7));
        assert!(streaming.stream && streaming.include_usage);
        assert!(params.logit_bias.is_empty());
    }

    #[test]
    fn logit_bias_is_parsed_sorted_and_bounded() {
        let body = json!({"logit_bias": {"17": -100, "2": 0.5, "49151": 100}});
        let (params, _) = common_params(&fields(body), None).expect("ok");
        assert_eq!(params.logit_bias, [(2, 0.5), (17, -100.0), (49151, 100.0)]);
        let too_many: Map<String, Value> = (0..=MAX_LOGIT_BIAS)
            .map(|id| (id.to_string(), json!(1)))
            .collect();
        let err = common_params(&fields(json!({"logit_bias": too_many})), None).expect_err("400");
        assert_eq!(err.param.as_deref(), Some("logit_bias"));
        assert!(err.message.contains("at most 1024"), "{}", err.message);
    }
}
