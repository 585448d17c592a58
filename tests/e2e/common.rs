//! `TestServer`: the real service on `127.0.0.1:0` over a temp data dir, with the tiny BERT
//! fixture as base model `test-org/tiny-bert` and a tiny Llama as `test-org/tiny-llama`, driven through a real HTTP client.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use temper::config::{ApiKey, Config, ServerConfig, StorageConfig, WorkerConfig};

pub const BASE_MODEL: &str = "test-org/tiny-bert";
/// A tiny random Llama with a byte-level BPE tokenizer and a ChatML template.
pub const DECODER_MODEL: &str = "test-org/tiny-llama";
/// Generous guard for CI machines shared by many builds; tests never assert durations.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    pub api_keys: Vec<String>,
    pub max_upload_bytes: Option<u64>,
}

pub struct TestServer {
    pub base_url: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    /// Sent as `Authorization: Bearer …` by the helpers.
    pub token: Option<String>,
    root: Option<TempDir>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn spawn() -> TestServer {
        TestServer::spawn_with(TestOptions::default()).await
    }

    pub async fn spawn_with(options: TestOptions) -> TestServer {
        let root = tempfile::tempdir().expect("temp dir");
        temper::zoo::testing::write_tiny_bert(&root.path().join("models").join(BASE_MODEL), 7)
            .expect("tiny BERT fixture");
        temper::zoo::testing::write_tiny_decoder(
            &root.path().join("models").join(DECODER_MODEL),
            temper::zoo::decoder::DecoderArch::Llama,
            7,
        )
        .expect("tiny decoder fixture");
        TestServer::start(root, options).await
    }

    /// Starts a server over an existing root (a restart on the same data dir).
    pub async fn start(root: TempDir, options: TestOptions) -> TestServer {
        // Captured per test (shown only on failure); RUST_LOG widens it.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("temper=info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
        let data_dir = root.path().join("data");
        let config = Config {
            server: ServerConfig {
                port: 0,
                api_keys: options.api_keys.iter().map(ApiKey::new).collect(),
                max_upload_bytes: options.max_upload_bytes.unwrap_or(64 * 1024 * 1024),
                ..ServerConfig::default()
            },
            storage: StorageConfig {
                data_dir: data_dir.clone(),
                models_dir: root.path().join("models"),
                // A small reserve keeps every server start cheap.
                disk_reserve_bytes: 1024 * 1024,
                ..StorageConfig::default()
            },
            workers: WorkerConfig {
                worker_lease_secs: 2,
                worker_poll_ms: 100,
                ..WorkerConfig::default()
            },
            ..Config::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(temper::app::run(config, listener, shutdown.clone()));
        let server = TestServer {
            base_url,
            client: reqwest::Client::new(),
            data_dir,
            token: options.api_keys.first().cloned(),
            root: Some(root),
            shutdown,
            handle: Some(handle),
        };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&self) {
        for _ in 0..300 {
            if let Ok(reply) = self.client.get(self.url("/health")).send().await {
                if reply.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server at {} never became healthy", self.base_url);
    }

    /// Graceful shutdown (what SIGTERM does); returns the root for a restart.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server result");
        }
        self.root.take().expect("root is present until stop")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Status and JSON body of a request.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let reply = self.authorized(request).send().await.expect("request sent");
        let status = reply.status().as_u16();
        let text = reply.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.client.post(self.url(path)).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.client.delete(self.url(path))).await
    }

    pub async fn upload(&self, purpose: &str, filename: &str, content: Vec<u8>) -> (u16, Value) {
        let part = reqwest::multipart::Part::bytes(content).file_name(filename.to_string());
        let form = reqwest::multipart::Form::new()
            .text("purpose", purpose.to_string())
            .part("file", part);
        self.send(self.client.post(self.url("/v1/files")).multipart(form))
            .await
    }

    /// Uploads and returns the file id, asserting success.
    pub async fn upload_ok(&self, filename: &str, content: Vec<u8>) -> String {
        let (status, file) = self.upload("fine-tune", filename, content).await;
        assert_eq!(status, 200, "{file}");
        file["id"].as_str().expect("file id").to_string()
    }

    pub async fn create_job(&self, body: Value) -> Value {
        let (status, job) = self.post("/v1/fine_tuning/jobs", body).await;
        assert_eq!(status, 200, "{job}");
        job
    }

    /// Polls the job until `done(status)` holds; panics after `JOB_TIMEOUT`.
    pub async fn wait_for(&self, job_id: &str, done: impl Fn(&str) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
        loop {
            let (status, job) = self.get(&format!("/v1/fine_tuning/jobs/{job_id}")).await;
            assert_eq!(status, 200, "{job}");
            if done(job["status"].as_str().unwrap_or_default()) {
                return job;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("job {job_id} stuck: {job}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls the job's events until its first training step is reported (a `metrics`
    /// event): `running` is set at the claim, before the trainer has taken any step.
    pub async fn wait_for_first_step(&self, job_id: &str) {
        let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
        loop {
            let (status, events) = self
                .get(&format!("/v1/fine_tuning/jobs/{job_id}/events?limit=100"))
                .await;
            assert_eq!(status, 200, "{events}");
            let stepped = events["data"]
                .as_array()
                .is_some_and(|events| events.iter().any(|e| e["type"] == "metrics"));
            if stepped {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("job {job_id} never reported a step: {events}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_for_status(&self, job_id: &str, wanted: &str) -> Value {
        let job = self
            .wait_for(job_id, |s| {
                s == wanted || matches!(s, "succeeded" | "failed" | "cancelled")
            })
            .await;
        assert_eq!(job["status"], wanted, "{job}");
        job
    }

    /// Creates a job and waits for it to succeed: the finished job and its model's id.
    pub async fn fine_tune_to_success(&self, body: Value) -> (Value, String) {
        let job = self.create_job(body).await;
        let id = job["id"].as_str().expect("id");
        let done = self.wait_for_status(id, "succeeded").await;
        let model = done["fine_tuned_model"]
            .as_str()
            .expect("model")
            .to_string();
        (done, model)
    }

    /// [`Self::fine_tune_to_success`], first asking `POST /v1/fine_tuning/estimates` for the
    /// same body: the job then trains the tokens and runs the steps the estimate said.
    pub async fn fine_tune_as_estimated(&self, body: Value) -> (Value, String) {
        let (status, estimate) = self.post("/v1/fine_tuning/estimates", body.clone()).await;
        assert_eq!(status, 200, "{estimate}");
        let (done, model) = self.fine_tune_to_success(body).await;
        assert_eq!(
            done["trained_tokens"], estimate["trained_tokens"],
            "{estimate}"
        );
        let id = done["id"].as_str().expect("id");
        let last_step = self
            .metrics_data(id)
            .await
            .iter()
            .filter_map(|data| data["step"].as_u64())
            .max();
        assert_eq!(last_step, estimate["total_steps"].as_u64(), "{estimate}");
        (done, model)
    }

    /// The `data` of the job's `metrics` events (the first 100 events, newest first).
    pub async fn metrics_data(&self, job_id: &str) -> Vec<Value> {
        let (status, events) = self
            .get(&format!("/v1/fine_tuning/jobs/{job_id}/events?limit=100"))
            .await;
        assert_eq!(status, 200, "{events}");
        events["data"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["type"] == "metrics")
            .map(|e| e["data"].clone())
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `n` labelled JSONL lines over two classes with distinct words.
pub fn sentiment_jsonl(n: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..n {
        let (text, label) = if i % 2 == 0 {
            ("good great happy film", "positive")
        } else {
            ("bad awful sad film", "negative")
        };
        out.push_str(&json!({"text": format!("{text} {i}"), "label": label}).to_string());
        out.push('\n');
    }
    out.into_bytes()
}

/// The same classes as a CSV with a header.
pub fn sentiment_csv(n: usize) -> Vec<u8> {
    let mut out = String::from("text,label\n");
    for i in 0..n {
        if i % 2 == 0 {
            out.push_str(&format!("\"good happy {i}\",positive\n"));
        } else {
            out.push_str(&format!("\"bad sad {i}\",negative\n"));
        }
    }
    out.into_bytes()
}

/// A supervised job on the tiny model with explicit hyperparameters.
pub fn job_body(training_file: &str, hyperparameters: Value) -> Value {
    json!({
        "model": BASE_MODEL,
        "training_file": training_file,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    })
}

/// Asserts OpenAI's envelope: all four keys, `type`, and `param`.
pub fn assert_envelope(body: &Value, param: Option<&str>) -> Value {
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("no envelope: {body}"));
    for key in ["message", "type", "param", "code"] {
        assert!(error.get(key).is_some(), "missing `{key}` in {body}");
    }
    assert_eq!(error["type"], "invalid_request_error", "{body}");
    assert_eq!(error["param"].as_str(), param, "{body}");
    error.clone()
}
