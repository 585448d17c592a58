//! `/v1/chat/completions` and `/v1/completions` over the real `InferenceHandle`, registry
//! and generation engine, serving the deterministic fake language model
//! (`infer::generate::fake`; greedy text after any prompt ending in `:` is
//! `Hello world! STOP andé more`, after `Hello` it is ` world! STOP andé more`).

use std::sync::Arc;

use futures::future::BoxFuture;

use super::*;
use crate::app::InferenceService;
use crate::infer::generate::fake::{FakeLm, FakePrompts, FakeStats, GREEDY_TEXT, GREEDY_TOKENS};
use crate::infer::generate::PromptEncoder;
use crate::infer::{
    GenEngine, GenEngineConfig, InferenceHandle, LoadedModel, ModelCatalog, ModelLoader,
    ServableModel, ServedKind,
};

const MODEL: &str = "ft:fake-lm:temper::abcd1234";
/// A fake that never stops on its own (no stop token, a huge context).
const ENDLESS: &str = "ft:endless:temper::abcd1234";

struct FakeCatalog;

impl ModelCatalog for FakeCatalog {
    fn resolve(&self, model: &str) -> BoxFuture<'_, Result<Option<ServableModel>, String>> {
        let found = [MODEL, ENDLESS].contains(&model).then(|| ServableModel {
            name: model.to_string(),
            dir: "/nonexistent".into(),
            kind: ServedKind::CausalLm,
            adapter_of: None,
            serve_dtype: None,
            gguf: None,
        });
        Box::pin(async move { Ok(found) })
    }
}

/// Serves the fake; `endless_stats` sees the steps of the endless one.
#[derive(Default)]
struct FakeLoader {
    endless_stats: Arc<FakeStats>,
}

impl ModelLoader<LoadedModel> for FakeLoader {
    fn load(&self, model: &ServableModel) -> Result<LoadedModel, InferError> {
        let fake = if model.name == ENDLESS {
            FakeLm {
                context_len: 10_000_000,
                stop_tokens: Vec::new(),
                stats: self.endless_stats.clone(),
                ..FakeLm::default()
            }
        } else {
            FakeLm::default()
        };
        GenEngine::spawn(&model.name, fake, GenEngineConfig::default()).map(LoadedModel::Generator)
    }
}

async fn lm_harness() -> Harness {
    lm_harness_with(Arc::new(FakeLoader::default())).await
}

async fn lm_harness_with(loader: Arc<FakeLoader>) -> Harness {
    let mut h = harness(&[], 1 << 20).await;
    let handle = InferenceHandle::with_loader(
        Arc::new(FakeCatalog),
        loader,
        1 << 30,
        tokio_util::sync::CancellationToken::new(),
    );
    h.state.inference = Arc::new(InferenceService {
        handle,
        models_dir: h.state.settings.models_dir.clone(),
    });
    h
}

fn user_hi() -> Value {
    json!([{"role": "user", "content": "hi"}])
}

/// Tokens of the fake's rendering of `user_hi()`.
fn chat_prompt_tokens() -> usize {
    let text = FakePrompts
        .render_chat(&[json!({"role": "user", "content": "hi"})], None)
        .expect("render");
    FakePrompts.encode(&text).expect("encode").len()
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(reply: &Reply) -> Vec<String> {
    let text = String::from_utf8(reply.body.clone()).expect("utf-8 body");
    text.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                .to_string()
        })
        .collect()
}

/// Chunks before `[DONE]` (which must be last).
fn sse_chunks(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, StatusCode::OK);
    let data = sse_data(reply);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect()
}

#[tokio::test]
async fn chat_completions_answer_in_openai_shape() {
    let h = lm_harness().await;
    let reply = h
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": user_hi(), "temperature": 0,
                "user": "u-1", "store": false, "metadata": {"a": "b"}}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    assert!(body["id"].as_str().expect("id").starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert!(body["created"].as_i64().expect("created") > 1_600_000_000);
    assert_eq!(body["system_fingerprint"], "fp_temper");
    let text = format!("Hello{GREEDY_TEXT}");
    assert_eq!(
        body["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null, "finish_reason": "stop"}])
    );
    let prompt = chat_prompt_tokens();
    let completion = GREEDY_TOKENS + 1;
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion})
    );
}

#[tokio::test]
async fn chat_limits_stops_choices_and_logprobs() {
    let h = lm_harness().await;
    let call = |extra: Value| {
        let mut body = json!({"model": MODEL, "messages": user_hi(), "temperature": 0});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        h.post("/v1/chat/completions", body)
    };
    let short = call(json!({"max_completion_tokens": 2})).await.json();
    assert_eq!(short["choices"][0]["message"]["content"], "Hello world");
    assert_eq!(short["choices"][0]["finish_reason"], "length");
    let stopped = call(json!({"stop": ["STOP", "zzz"], "n": 2})).await.json();
    for i in 0..2 {
        assert_eq!(stopped["choices"][i]["index"], i);
        assert_eq!(stopped["choices"][i]["message"]["content"], "Hello world! ");
        assert_eq!(stopped["choices"][i]["finish_reason"], "stop");
    }
    let logprobs = call(json!({"max_tokens": 1, "logprobs": true, "top_logprobs": 2}))
        .await
        .json();
    let content = &logprobs["choices"][0]["logprobs"]["content"];
    assert_eq!(content.as_array().map(Vec::len), Some(1));
    assert_eq!(content[0]["token"], "Hello");
    assert_eq!(content[0]["bytes"], json!(b"Hello".to_vec()));
    assert!(content[0]["logprob"].as_f64().expect("logprob") < 0.0);
    let top = content[0]["top_logprobs"].as_array().expect("top");
    assert_eq!(top.len(), 2);
    assert_eq!(top[0]["token"], "Hello");
    assert_eq!(top[0]["logprob"], content[0]["logprob"]);
}

#[tokio::test]
async fn chat_streams_chunks_with_usage_then_done() {
    let h = lm_harness().await;
    let reply = h
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": user_hi(), "temperature": 0,
                "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    let chunks = sse_chunks(&reply);
    let id = chunks[0]["id"].as_str().expect("id");
    assert!(id.starts_with("chatcmpl-"));
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], MODEL);
    }
    assert_eq!(
        chunks[0]["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
            "logprobs": null, "finish_reason": null}])
    );
    let (last, body) = chunks.split_last().expect("chunks");
    assert!(body
        .iter()
        .all(|c| c["usage"].is_null() && c.get("usage").is_some()));
    assert_eq!(last["choices"], json!([]));
    let prompt = chat_prompt_tokens();
    assert_eq!(last["usage"]["prompt_tokens"], prompt);
    assert_eq!(last["usage"]["completion_tokens"], GREEDY_TOKENS + 1);
    let text: String = body
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, format!("Hello{GREEDY_TEXT}"));
    let finish = &body[body.len() - 1]["choices"][0];
    assert_eq!(finish["finish_reason"], "stop");
    assert_eq!(finish["delta"], json!({}));
    let finishes = body
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .count();
    assert_eq!(finishes, 1);
}

#[tokio::test]
async fn streams_without_include_usage_carry_no_usage_key() {
    let h = lm_harness().await;
    let reply = h
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": user_hi(), "stream": true,
                "max_tokens": 3, "n": 2, "seed": 3}),
        )
        .await;
    let chunks = sse_chunks(&reply);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    // Two role chunks, then deltas, then one finish per choice, all `length`.
    assert_eq!(chunks[0]["choices"][0]["index"], 0);
    assert_eq!(chunks[1]["choices"][0]["index"], 1);
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("length"), &json!("length")]);
}

#[tokio::test]
async fn completions_answer_text_completion_objects() {
    let h = lm_harness().await;
    let body = h
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "Hello", "temperature": 0}),
        )
        .await
        .json();
    assert!(body["id"].as_str().expect("id").starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");
    assert_eq!(
        body["choices"],
        json!([{"text": GREEDY_TEXT, "index": 0, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 1, "completion_tokens": GREEDY_TOKENS,
            "total_tokens": GREEDY_TOKENS + 1})
    );
    let with_logprobs = h
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "Hello", "temperature": 0,
                "max_tokens": 2, "logprobs": 1}),
        )
        .await
        .json();
    let choice = &with_logprobs["choices"][0];
    assert_eq!(choice["text"], " world!");
    assert_eq!(choice["finish_reason"], "length");
    let logprobs = &choice["logprobs"];
    assert_eq!(logprobs["tokens"], json!([" world", "!"]));
    assert_eq!(logprobs["text_offset"], json!([0, 6]));
    assert_eq!(
        logprobs["top_logprobs"][0]
            .as_object()
            .map(serde_json::Map::len),
        Some(1)
    );
    assert_eq!(
        logprobs["top_logprobs"][0][" world"],
        logprobs["token_logprobs"][0]
    );
}

#[tokio::test]
async fn completions_stream_with_usage() {
    let h = lm_harness().await;
    let reply = h
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "Hello", "temperature": 0, "max_tokens": 4,
                "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    let chunks = sse_chunks(&reply);
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let (last, body) = chunks.split_last().expect("chunks");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5})
    );
    assert!(body.iter().all(|c| c["usage"].is_null()));
    let text: String = body
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, " world! STOP");
    assert_eq!(
        body[body.len() - 1]["choices"][0]["finish_reason"],
        "length"
    );
}

#[tokio::test]
async fn unknown_models_and_long_prompts_are_client_errors() {
    let h = lm_harness().await;
    for (uri, body) in [
        (
            "/v1/chat/completions",
            json!({"model": "nope", "messages": user_hi()}),
        ),
        ("/v1/completions", json!({"model": "nope", "prompt": "x"})),
    ] {
        let reply = h.call(Method::POST, uri, Some(body)).await;
        let error = assert_envelope(&reply, StatusCode::NOT_FOUND, Some("model"));
        assert_eq!(error["code"], "model_not_found");
        // The harness's models dir holds only an encoder: no base model to chat with.
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("No base models are installed"),
            "{message}"
        );
    }
    // The fake's context is 64 tokens; "Hello " is 2.
    let long = "Hello ".repeat(40);
    let reply = h
        .post("/v1/completions", json!({"model": MODEL, "prompt": long}))
        .await;
    let error = assert_envelope(&reply, StatusCode::BAD_REQUEST, Some("prompt"));
    assert!(error["message"]
        .as_str()
        .expect("message")
        .contains("maximum context length is 64 tokens"));
}

#[tokio::test]
async fn bad_generation_requests_are_400s_naming_the_param() {
    let h = lm_harness().await;
    let chat = |extra: Value| {
        let mut body = json!({"model": MODEL, "messages": user_hi()});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };
    let mut no_messages = chat(json!({}));
    no_messages
        .as_object_mut()
        .expect("object")
        .remove("messages");
    let cases = [
        (no_messages, "messages"),
        (
            chat(json!({"messages": [{"role": "wizard", "content": "x"}]})),
            "messages[0].role",
        ),
        (chat(json!({"temperature": 2.1})), "temperature"),
        (chat(json!({"top_p": 0})), "top_p"),
        (chat(json!({"n": 9})), "n"),
        (chat(json!({"max_tokens": 0})), "max_tokens"),
        (chat(json!({"stop": ["a", "b", "c", "d", "e"]})), "stop"),
        (
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
        ),
        (chat(json!({"top_logprobs": 1})), "top_logprobs"),
        (
            chat(json!({"response_format": {"type": "json_schema"}})),
            "response_format",
        ),
        (
            chat(json!({"tools": [{"type": "function", "function": {"name": "f"}}]})),
            "tools",
        ),
        (
            chat(json!({"tool_choice": {"type": "function"}})),
            "tool_choice",
        ),
        (chat(json!({"presence_penalty": 1})), "presence_penalty"),
        (
            chat(json!({"stream_options": {"include_usage": true}})),
            "stream_options",
        ),
    ];
    for (body, param) in cases {
        let reply = h
            .call(Method::POST, "/v1/chat/completions", Some(body.clone()))
            .await;
        let error = assert_envelope(&reply, StatusCode::BAD_REQUEST, Some(param));
        if param == "n" {
            assert!(error["message"].as_str().expect("message").contains('8'));
        }
    }
    for (body, param) in [
        (json!({"model": MODEL}), "prompt"),
        (
            json!({"model": MODEL, "prompt": "x", "logprobs": 9}),
            "logprobs",
        ),
        (json!({"model": MODEL, "prompt": "x", "echo": true}), "echo"),
    ] {
        let reply = h.call(Method::POST, "/v1/completions", Some(body)).await;
        assert_envelope(&reply, StatusCode::BAD_REQUEST, Some(param));
    }
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_stops_its_generation() {
    let loader = Arc::new(FakeLoader::default());
    let stats = loader.endless_stats.clone();
    let h = lm_harness_with(loader).await;
    let request = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"model": ENDLESS, "messages": user_hi(), "stream": true}).to_string(),
        ))
        .expect("request");
    let response = router(h.state.clone())
        .oneshot(request)
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let first = futures::StreamExt::next(&mut body)
        .await
        .expect("a first event")
        .expect("bytes");
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    drop(body);
    // Without the disconnect reaching the engine this would run for 10 million steps.
    let mut last = stats.steps();
    let mut still = 0;
    for _ in 0..2000 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let now = stats.steps();
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still >= 20 {
            break;
        }
    }
    assert!(still >= 20, "the engine kept stepping ({last} steps)");
    assert!(last < 1_000_000, "{last}");
}

#[tokio::test]
async fn token_limits_beyond_the_context_are_400s_before_any_stream_starts() {
    let h = lm_harness().await;
    let prompt = chat_prompt_tokens();
    let huge: u64 = 1_000_000_000_000;
    for (stream, field) in [
        (false, "max_tokens"),
        (true, "max_tokens"),
        (true, "max_completion_tokens"),
    ] {
        let mut body = json!({"model": MODEL, "messages": user_hi(), "stream": stream});
        body[field] = json!(huge);
        let reply = h.post("/v1/chat/completions", body).await;
        // A JSON envelope, not an SSE stream that breaks later.
        let error = assert_envelope(&reply, StatusCode::BAD_REQUEST, Some(field));
        assert_eq!(error["code"], "context_length_exceeded");
        assert_eq!(
            error["message"],
            format!(
                "This model's maximum context length is 64 tokens. However, you requested \
                 {} tokens ({prompt} in the messages, {huge} in the completion). Please \
                 reduce the length of the messages or completion.",
                huge + prompt as u64
            )
        );
    }
    for stream in [false, true] {
        let reply = h
            .post(
                "/v1/completions",
                json!({"model": MODEL, "prompt": "Hello", "max_tokens": 100_000, "stream": stream}),
            )
            .await;
        let error = assert_envelope(&reply, StatusCode::BAD_REQUEST, Some("max_tokens"));
        assert_eq!(error["code"], "context_length_exceeded");
        assert_eq!(
            error["message"],
            "This model's maximum context length is 64 tokens. However, you requested \
             100001 tokens (1 in your prompt, 100000 in the completion). Please reduce the \
             length of your prompt or completion."
        );
    }
    // Exactly the context is fine: 1 prompt token + 63.
    let reply = h
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "Hello", "max_tokens": 63, "temperature": 0}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}
