//! Handler tests: `router(state).oneshot(request)` over an in-memory store, a temp data dir
//! and a stub inference engine. Each asserts the status and the envelope.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::config::ApiKey;
use crate::infer::{
    Aggregation, ClassPrediction, GenerationParams, GenerationStream, InferError, TokenEntity,
};
use crate::jobs::JobService;
use crate::store::ModelRow;

mod adapters;
mod classifier_adapters;
mod dashboard;
mod disk;
mod download;
mod generation;
mod hardening;
mod health;
mod job_knobs;
mod jobs;
mod metrics;
mod token_classification;

/// A model whose engine the stub reports as saturated (429).
const BUSY_MODEL: &str = "ft:test-org/tiny:temper::busy0000";

/// Records evictions; classifies everything as `pos` unless the model is unknown or busy.
#[derive(Default)]
struct StubInference {
    evicted: Mutex<Vec<String>>,
}

impl Inference for StubInference {
    fn classify(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> BoxFuture<'static, Result<Vec<ClassPrediction>, InferError>> {
        Box::pin(async move {
            if model == BUSY_MODEL {
                return Err(InferError::Overloaded);
            }
            if model != "ft:test-org/tiny:temper::abcd1234" {
                return Err(InferError::ModelNotFound(model));
            }
            Ok(inputs
                .iter()
                .map(|_| ClassPrediction {
                    label: "pos".into(),
                    score: 0.75,
                    scores: vec![("neg".into(), 0.25), ("pos".into(), 0.75)],
                })
                .collect())
        })
    }

    fn export(&self, _request: ExportRequest) -> BoxFuture<'static, Result<(), InferError>> {
        Box::pin(async { Err(InferError::Engine("not in handler tests".into())) })
    }

    /// `NER_MODEL` tags the first word of each text `LOC`, token by token or grouped.
    fn classify_tokens(
        &self,
        model: String,
        inputs: Vec<String>,
        aggregation: Aggregation,
    ) -> BoxFuture<'static, Result<Vec<Vec<TokenEntity>>, InferError>> {
        Box::pin(async move {
            if model == BUSY_MODEL {
                return Err(InferError::Overloaded);
            }
            if model != token_classification::NER_MODEL {
                return Err(InferError::ModelNotFound(model));
            }
            Ok(inputs
                .iter()
                .map(|text| {
                    let word = text.split(' ').next().unwrap_or_default();
                    let (label, index) = match aggregation {
                        Aggregation::Simple => ("LOC", None),
                        Aggregation::None => ("B-LOC", Some(1)),
                    };
                    vec![TokenEntity {
                        label: label.into(),
                        score: 0.75,
                        index,
                        word: word.into(),
                        start: 0,
                        end: word.chars().count(),
                    }]
                })
                .collect())
        })
    }

    fn chat(
        &self,
        model: String,
        _messages: Vec<Value>,
        _tools: Option<Value>,
        _params: GenerationParams,
    ) -> BoxFuture<'static, Result<GenerationStream, InferError>> {
        Box::pin(async move { Err(InferError::ModelNotFound(model)) })
    }

    fn complete(
        &self,
        model: String,
        _prompt: String,
        _params: GenerationParams,
    ) -> BoxFuture<'static, Result<GenerationStream, InferError>> {
        Box::pin(async move { Err(InferError::ModelNotFound(model)) })
    }

    fn evict(&self, model: &str) {
        self.evicted.lock().expect("lock").push(model.to_string());
    }

    /// The classifier the stub answers with, as loaded.
    fn loaded_models(&self) -> Vec<crate::telemetry::metrics::LoadedModel> {
        vec![crate::telemetry::metrics::LoadedModel {
            name: "ft:test-org/tiny:temper::abcd1234".into(),
            kind: "model",
            bytes: 4096,
        }]
    }
}

struct Harness {
    state: AppState,
    stub: Arc<StubInference>,
    _dir: tempfile::TempDir,
}

fn write_fake_model(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("config.json"), r#"{"model_type":"bert"}"#).expect("config");
    std::fs::write(dir.join("model.safetensors"), b"x").expect("weights");
    std::fs::write(dir.join("tokenizer.json"), b"{}").expect("tokenizer");
}

async fn harness(api_keys: &[&str], max_upload_bytes: u64) -> Harness {
    let dir = tempfile::tempdir().expect("tmp");
    let models_dir = dir.path().join("models");
    write_fake_model(&models_dir.join("test-org/tiny"));
    let stub = Arc::new(StubInference::default());
    let store = Store::open_in_memory().await.expect("store");
    let blobs = Blobs::new(dir.path().join("data")).expect("blobs");
    let estimates = crate::jobs::EstimateSetup::new(blobs.clone(), vec!["cpu".into()]);
    let state = AppState {
        jobs: JobService::new(
            store.clone(),
            Arc::new(|| {}),
            models_dir.clone(),
            estimates,
        ),
        store,
        blobs,
        inference: stub.clone(),
        workers: crate::jobs::WorkerLiveness::default(),
        settings: Arc::new(ApiSettings {
            api_keys: api_keys.iter().map(|k| ApiKey::new(*k)).collect(),
            max_upload_bytes,
            models_dir,
        }),
        metrics: crate::telemetry::metrics::Metrics::new(),
    };
    Harness {
        state,
        stub,
        _dir: dir,
    }
}

struct Reply {
    status: StatusCode,
    request_id: Option<String>,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> Reply {
        let response = router(self.state.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec();
        Reply {
            status,
            request_id,
            headers,
            body,
        }
    }

    async fn post(&self, uri: &str, body: Value) -> Reply {
        self.call(Method::POST, uri, Some(body)).await
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let builder = Request::builder().method(method).uri(uri);
        let request = match body {
            Some(json) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json.to_string())),
            None => builder.body(Body::empty()),
        };
        self.send(request.expect("request")).await
    }

    async fn upload(&self, purpose: &str, filename: &str, content: &[u8]) -> Reply {
        self.send(upload_request(purpose, filename, content)).await
    }

    /// As `upload`, sending `Authorization: Bearer <key>`.
    async fn upload_with_key(
        &self,
        purpose: &str,
        filename: &str,
        content: &[u8],
        key: &str,
    ) -> Reply {
        let mut request = upload_request(purpose, filename, content);
        let bearer = format!("Bearer {key}").parse().expect("header value");
        request.headers_mut().insert(header::AUTHORIZATION, bearer);
        self.send(request).await
    }
}

/// A multipart upload of `content` as `filename` for `purpose`.
fn upload_request(purpose: &str, filename: &str, content: &[u8]) -> Request<Body> {
    let boundary = "XtemperBOUNDARYx";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Request::post("/v1/files")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .expect("request")
}

fn assert_envelope(reply: &Reply, status: StatusCode, param: Option<&str>) -> Value {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    let error = &body["error"];
    for key in ["message", "type", "param", "code"] {
        assert!(error.get(key).is_some(), "missing `{key}` in {body}");
    }
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["param"].as_str(), param, "{body}");
    error.clone()
}

fn labelled_jsonl(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            format!(
                "{{\"text\": \"example {i}\", \"label\": \"{}\"}}\n",
                if i % 2 == 0 { "pos" } else { "neg" }
            )
        })
        .collect::<String>()
        .into_bytes()
}

#[tokio::test]
async fn uploads_may_exceed_the_json_body_limit() {
    let h = harness(&[], 40 * 1024 * 1024).await;
    let content = vec![b'x'; 33 * 1024 * 1024];
    let reply = h.upload("batch", "big.bin", &content).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["bytes"], content.len());
}

#[tokio::test]
async fn unknown_routes_get_the_envelope_and_a_request_id() {
    let h = harness(&[], 1 << 20).await;
    let reply = h.call(Method::GET, "/v1/nothing-here", None).await;
    let error = assert_envelope(&reply, StatusCode::NOT_FOUND, None);
    assert_eq!(error["code"], "unknown_url");
    let id = reply.request_id.expect("x-request-id");
    assert!(id.starts_with("req_") && id.len() == 28, "{id}");
}

#[tokio::test]
async fn api_keys_guard_v1_but_not_health() {
    let h = harness(&["sk-good"], 1 << 20).await;
    let missing = h.call(Method::GET, "/v1/files", None).await;
    assert_eq!(
        assert_envelope(&missing, StatusCode::UNAUTHORIZED, None)["code"],
        "invalid_api_key"
    );
    let wrong = Request::get("/v1/files")
        .header(header::AUTHORIZATION, "Bearer sk-bad")
        .body(Body::empty());
    let wrong = h.send(wrong.expect("request")).await;
    assert_eq!(
        assert_envelope(&wrong, StatusCode::UNAUTHORIZED, None)["code"],
        "invalid_api_key"
    );
    let good = Request::get("/v1/files")
        .header(header::AUTHORIZATION, "Bearer sk-good")
        .body(Body::empty());
    assert_eq!(h.send(good.expect("request")).await.status, StatusCode::OK);
    assert_eq!(
        h.call(Method::GET, "/health", None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn uploads_are_validated_listed_served_and_deleted() {
    let h = harness(&[], 1 << 20).await;
    let content = labelled_jsonl(12);
    let file = h.upload("fine-tune", "train.jsonl", &content).await.json();
    assert_eq!(file["status"], "processed");
    assert_eq!(file["bytes"], content.len());
    assert_eq!(file["object"], "file");
    let id = file["id"].as_str().expect("id").to_string();
    let list = h
        .call(Method::GET, "/v1/files?purpose=fine-tune", None)
        .await
        .json();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["first_id"], id.as_str());
    assert_eq!(list["has_more"], false);
    let served = h
        .call(Method::GET, &format!("/v1/files/{id}/content"), None)
        .await;
    assert_eq!(served.body, content);
    let deleted = h
        .call(Method::DELETE, &format!("/v1/files/{id}"), None)
        .await
        .json();
    assert_eq!(
        deleted,
        json!({"id": id, "object": "file", "deleted": true})
    );
    let gone = h.call(Method::GET, &format!("/v1/files/{id}"), None).await;
    let error = assert_envelope(&gone, StatusCode::NOT_FOUND, Some("id"));
    assert_eq!(error["message"], format!("No such File object: {id}"));
}

#[tokio::test]
async fn bad_uploads_are_rejected_or_marked_as_errors() {
    let mut broken =
        b"{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": \"y\"}\n".to_vec();
    broken.extend_from_slice(b"{\"text\": oops\n");
    let h = harness(&[], 1 << 20).await;
    let file = h.upload("fine-tune", "broken.jsonl", &broken).await.json();
    assert_eq!(file["status"], "error");
    let details = file["status_details"].as_str().expect("details");
    assert!(details.contains("Example 3"), "{details}");
    let purpose = h.upload("homework", "a.jsonl", b"{}").await;
    assert_envelope(&purpose, StatusCode::BAD_REQUEST, Some("purpose"));
    let small = harness(&[], 16).await;
    let big = small
        .upload("fine-tune", "big.jsonl", &labelled_jsonl(3))
        .await;
    assert_envelope(&big, StatusCode::PAYLOAD_TOO_LARGE, Some("file"));
    assert_eq!(
        small.call(Method::GET, "/v1/files", None).await.json()["data"],
        json!([])
    );
}

fn model_row(id: &str) -> ModelRow {
    ModelRow {
        id: id.to_string(),
        created_at: 5,
        owned_by: "temper".into(),
        job_id: None,
        base_model: Some("test-org/tiny".into()),
        kind: "classifier".into(),
        artifact_dir: "jobs/x/checkpoints/step-3".into(),
        step: Some(3),
        is_checkpoint: false,
        registered_adapter: false,
    }
}

#[tokio::test]
async fn model_ids_with_slashes_and_colons_work_raw_and_encoded() {
    let h = harness(&[], 1 << 20).await;
    let name = "ft:test-org/tiny:temper::abcd1234";
    h.state
        .store
        .insert_model(&model_row(name))
        .await
        .expect("insert");
    let raw = h
        .call(Method::GET, &format!("/v1/models/{name}"), None)
        .await
        .json();
    assert_eq!(raw["id"], name);
    let encoded = h
        .call(
            Method::GET,
            "/v1/models/ft%3Atest-org%2Ftiny%3Atemper%3A%3Aabcd1234",
            None,
        )
        .await
        .json();
    assert_eq!(encoded["id"], name);
    let base = h
        .call(Method::GET, "/v1/models/test-org/tiny", None)
        .await
        .json();
    assert_eq!(base["owned_by"], "test-org");
    let ids: Vec<Value> = h.call(Method::GET, "/v1/models", None).await.json()["data"]
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [json!(name), json!("test-org/tiny")]);
    let deleted = h
        .call(Method::DELETE, &format!("/v1/models/{name}"), None)
        .await
        .json();
    assert_eq!(deleted["deleted"], true);
    assert_eq!(*h.stub.evicted.lock().expect("lock"), [name.to_string()]);
    let gone = h
        .call(Method::GET, &format!("/v1/models/{name}"), None)
        .await;
    assert_eq!(
        assert_envelope(&gone, StatusCode::NOT_FOUND, Some("model"))["code"],
        "model_not_found"
    );
}

#[tokio::test]
async fn classifications_return_labels_and_scores() {
    let h = harness(&[], 1 << 20).await;
    let reply = h
        .call(
            Method::POST,
            "/v1/classifications",
            Some(json!({"model": "ft:test-org/tiny:temper::abcd1234", "input": ["good", "bad"]})),
        )
        .await
        .json();
    assert_eq!(reply["object"], "list");
    assert_eq!(reply["data"][1]["index"], 1);
    assert_eq!(reply["data"][0]["label"], "pos");
    assert_eq!(
        reply["data"][0]["scores"],
        json!({"neg": 0.25, "pos": 0.75})
    );
    let unknown = h
        .call(
            Method::POST,
            "/v1/classifications",
            Some(json!({"model": "nope", "input": "x"})),
        )
        .await;
    assert_eq!(
        assert_envelope(&unknown, StatusCode::NOT_FOUND, Some("model"))["code"],
        "model_not_found"
    );
}

#[tokio::test]
async fn every_listed_route_is_served() {
    let h = harness(&[], 1 << 20).await;
    for (method, path) in routes() {
        let uri = path.replace("{*id}", "some/model").replace("{id}", "x-1");
        let reply = h.call(method.clone(), &uri, None).await;
        let unknown = reply.status == StatusCode::METHOD_NOT_ALLOWED
            || (reply.status == StatusCode::NOT_FOUND
                && reply.json()["error"]["code"] == "unknown_url");
        assert!(!unknown, "{method} {path} is not routed ({})", reply.status);
    }
}
