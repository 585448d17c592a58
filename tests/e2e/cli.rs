//! The `temper` binary as a client (`files`, `jobs`, `models`, `chat`) of the real server:
//! upload → create → watch to success → list → chat, the exit codes of a failed, paused and
//! cancelled job, and the server's errors as one line.

use std::path::Path;
use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::chat::chat_jsonl;
use crate::common::{
    sentiment_jsonl, TestOptions, TestServer, BASE_MODEL, DECODER_MODEL, JOB_TIMEOUT,
};

/// What one run of the binary left.
pub(crate) struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }

    /// The `id`s of a `--json` list's `data`.
    fn listed_ids(&self) -> Vec<String> {
        let list = self.json();
        list["data"]
            .as_array()
            .unwrap_or_else(|| panic!("not a list: {list}"))
            .iter()
            .filter_map(|item| Some(item["id"].as_str()?.to_string()))
            .collect()
    }

    /// Asserts exit code 0.
    fn ok(self) -> Ran {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// `temper <args>` against `base_url` (the server's, `/v1` added), with `api_key` and `stdin`.
pub(crate) async fn temper_at(
    base_url: &str,
    api_key: Option<&str>,
    args: &[&str],
    stdin: &str,
) -> Ran {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_temper"));
    command
        .args(args)
        .env("OPENAI_BASE_URL", format!("{base_url}/v1"))
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(key) = api_key {
        command.env("OPENAI_API_KEY", key);
    }
    let mut child = command.spawn().expect("temper starts");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("stdin written");
    drop(input);
    let output = tokio::time::timeout(JOB_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("temper {args:?} never ended"))
        .expect("temper ran");
    Ran {
        code: output.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn temper(server: &TestServer, args: &[&str]) -> Ran {
    temper_at(&server.base_url, server.token.as_deref(), args, "").await
}

fn write(dir: &Path, name: &str, content: Vec<u8>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("data file");
    path.to_string_lossy().into_owned()
}

/// Uploads through the CLI; the file id.
async fn upload(server: &TestServer, path: &str) -> String {
    let file = temper(server, &["files", "upload", path, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(file["status"], "processed", "{file}");
    file["id"].as_str().expect("file id").to_string()
}

/// The non-streamed greedy reply to `messages`, straight from the server.
async fn greedy_reply(server: &TestServer, model: &str, messages: Value) -> String {
    let (status, reply) = server
        .post(
            "/v1/chat/completions",
            json!({"model": model, "messages": messages, "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    reply["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string()
}

#[tokio::test]
async fn cli_fine_tunes_watches_lists_and_chats() {
    let server = TestServer::spawn().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let train = upload(&server, &write(dir.path(), "train.jsonl", chat_jsonl(12))).await;
    let spare = upload(&server, &write(dir.path(), "spare.jsonl", chat_jsonl(10))).await;

    // The estimate of the same flags: the numbers the job then trains with.
    let flags = [
        "--model",
        DECODER_MODEL,
        "--training-file",
        &train,
        "--epochs",
        "1",
        "--hyperparameter",
        "batch_size=4",
    ];
    let mut args = vec!["jobs", "estimate"];
    args.extend(flags);
    let shown = temper(&server, &args).await.ok();
    let lines: Vec<&str> = shown.stdout.lines().collect();
    assert!(lines.contains(&"task      chat"), "{}", shown.stdout);
    assert!(
        lines.contains(&"steps     3 an epoch, 3 in all (1 epochs)"),
        "{}",
        shown.stdout
    );
    args.push("--json");
    let estimate = temper(&server, &args).await.ok().json();
    assert_eq!(estimate["object"], "fine_tuning.estimate");
    assert_eq!(estimate["training_examples"], 12);
    let (_, jobs) = server.get("/v1/fine_tuning/jobs").await;
    assert_eq!(jobs["data"], json!([]), "an estimate creates no job");

    // The job of those flags (and LoRA, which changes no count).
    let mut args = vec!["jobs", "create"];
    args.extend(flags);
    args.extend([
        "--suffix",
        "cli",
        "--hyperparameter",
        "lora_rank=4",
        "--json",
    ]);
    let job = temper(&server, &args).await.ok().json();
    let id = job["id"].as_str().expect("job id").to_string();
    assert_eq!(
        job["method"]["supervised"]["hyperparameters"],
        json!({"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": "auto", "lora_rank": 4}),
        "the flags reach the job"
    );

    // stdout is a pipe here: plain lines, the last one the model's id.
    let watched = temper(&server, &["jobs", "watch", &id]).await.ok();
    let (_, done) = server.get(&format!("/v1/fine_tuning/jobs/{id}")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["trained_tokens"], estimate["trained_tokens"], "{done}");
    let model = done["fine_tuned_model"]
        .as_str()
        .expect("model")
        .to_string();
    let lines: Vec<&str> = watched.stdout.lines().collect();
    assert_eq!(lines.last(), Some(&model.as_str()), "{}", watched.stdout);
    // 12 examples / batch 4, one epoch: 3 steps, the last one shown with its loss.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("succeeded  step 3/3  loss ")),
        "{}",
        watched.stdout
    );
    assert!(
        lines.contains(&format!("Created fine-tuning job: {id}").as_str()),
        "{}",
        watched.stdout
    );

    let jobs = temper(&server, &["jobs", "list", "--json"])
        .await
        .ok()
        .listed_ids();
    assert!(jobs.contains(&id), "{jobs:?}");
    let shown = temper(&server, &["jobs", "get", &id]).await.ok();
    assert!(
        shown
            .stdout
            .lines()
            .any(|l| l == format!("fine_tuned_model  {model}")),
        "{}",
        shown.stdout
    );
    let events = temper(&server, &["jobs", "events", &id, "--limit", "100"])
        .await
        .ok();
    assert!(
        events.stdout.contains("Step 3/3: training loss="),
        "{}",
        events.stdout
    );

    let models = temper(&server, &["models", "list"]).await.ok();
    assert!(
        models
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("{model} "))),
        "{}",
        models.stdout
    );

    temper(&server, &["files", "delete", &spare]).await.ok();
    let files = temper(&server, &["files", "list", "--json"])
        .await
        .ok()
        .json();
    let file_ids: Vec<&str> = files["data"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert!(file_ids.contains(&train.as_str()), "{files}");
    assert!(!file_ids.contains(&spare.as_str()), "{files}");

    // Two turns, greedy: each reply is what the server answers to the whole conversation
    // so far, so the second proves the first reply went back as history.
    let chat_args = [
        "chat",
        model.as_str(),
        "--system",
        "Answer with a colour.",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
    ];
    let chatted = temper_at(
        &server.base_url,
        server.token.as_deref(),
        &chat_args,
        "item 3?\n\nitem 4?\n",
    )
    .await
    .ok();
    let system = json!({"role": "system", "content": "Answer with a colour."});
    let first = greedy_reply(
        &server,
        &model,
        json!([system, {"role": "user", "content": "item 3?"}]),
    )
    .await;
    let second = greedy_reply(
        &server,
        &model,
        json!([system, {"role": "user", "content": "item 3?"},
               {"role": "assistant", "content": first}, {"role": "user", "content": "item 4?"}]),
    )
    .await;
    assert!(
        !first.is_empty() && !second.is_empty(),
        "empty replies: {first:?} {second:?}"
    );
    assert_eq!(
        chatted.stdout,
        format!("{first}\n{second}\n"),
        "{}",
        chatted.stderr
    );
}

#[tokio::test]
async fn cli_watch_exits_with_the_jobs_ending() {
    let server = TestServer::spawn().await;
    let dir = tempfile::tempdir().expect("temp dir");

    // Four chat examples: the job fails validation.
    let few = upload(&server, &write(dir.path(), "few.jsonl", chat_jsonl(4))).await;
    let created = temper(
        &server,
        &[
            "jobs",
            "create",
            "--model",
            DECODER_MODEL,
            "--training-file",
            &few,
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let failing = created["id"].as_str().expect("id").to_string();
    let watched = temper(&server, &["jobs", "watch", &failing]).await;
    assert_eq!(watched.code, 3, "{}\n{}", watched.stdout, watched.stderr);
    assert!(
        watched
            .stderr
            .starts_with(&format!("error: job {failing} failed: "))
            && watched.stderr.contains("code `invalid_n_examples`"),
        "{}",
        watched.stderr
    );
    assert_eq!(
        watched
            .stdout
            .lines()
            .last()
            .map(|l| l.starts_with("failed")),
        Some(true),
        "{}",
        watched.stdout
    );

    // 15000 steps, so the pause lands mid-run even with a process start between the first
    // step and it: paused, watched (5), resumed, cancelled, watched (4).
    let long = upload(
        &server,
        &write(dir.path(), "long.jsonl", sentiment_jsonl(300)),
    )
    .await;
    let created = temper(
        &server,
        &[
            "jobs",
            "create",
            "--model",
            BASE_MODEL,
            "--training-file",
            &long,
            "--epochs",
            "50",
            "--hyperparameter",
            "batch_size=1",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let id = created["id"].as_str().expect("id").to_string();
    server.wait_for_first_step(&id).await;
    let pausing = temper(&server, &["jobs", "pause", &id]).await.ok();
    let status_line = |text: &str| -> Option<String> {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some("status"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    assert_eq!(
        status_line(&pausing.stdout),
        Some("status pausing".to_string()),
        "{}",
        pausing.stdout
    );
    server.wait_for_status(&id, "paused").await;
    let watched = temper(&server, &["jobs", "watch", &id]).await;
    assert_eq!(watched.code, 5, "{}\n{}", watched.stdout, watched.stderr);
    assert!(
        watched.stderr.contains(&format!("temper jobs resume {id}")),
        "{}",
        watched.stderr
    );
    let resumed = temper(&server, &["jobs", "resume", &id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(resumed["status"], "queued", "{resumed}");
    temper(&server, &["jobs", "cancel", &id]).await.ok();
    let watched = temper(&server, &["jobs", "watch", &id]).await;
    assert_eq!(watched.code, 4, "{}\n{}", watched.stdout, watched.stderr);
    assert_eq!(watched.stderr, format!("error: job {id} was cancelled\n"));
}

#[tokio::test]
async fn cli_prints_the_servers_errors_and_names_a_missing_server() {
    let server = TestServer::spawn_with(TestOptions {
        api_keys: vec!["sk-cli".to_string()],
        ..TestOptions::default()
    })
    .await;
    let missing = temper(&server, &["jobs", "get", "ftjob-nope"]).await;
    assert_eq!(missing.code, 1);
    assert_eq!(
        missing.stderr,
        "error: No such FineTuningJob object: ftjob-nope (HTTP 404, param `id`)\n"
    );
    assert_eq!(missing.stdout, "");
    let (_, envelope) = server.get("/v1/fine_tuning/jobs/ftjob-nope").await;
    assert_eq!(
        envelope["error"]["message"],
        "No such FineTuningJob object: ftjob-nope"
    );

    let anonymous = temper_at(&server.base_url, None, &["models", "list"], "").await;
    assert_eq!(anonymous.code, 1);
    assert!(
        anonymous.stderr.starts_with("error: ") && anonymous.stderr.contains("(HTTP 401"),
        "{}",
        anonymous.stderr
    );
    let models = temper(&server, &["models", "list", "--json"])
        .await
        .ok()
        .listed_ids();
    assert!(models.iter().any(|m| m == DECODER_MODEL), "{models:?}");

    let unreadable = temper(&server, &["files", "upload", "/nonexistent/train.jsonl"]).await;
    assert_eq!(unreadable.code, 1);
    assert!(
        unreadable
            .stderr
            .starts_with("error: reading /nonexistent/train.jsonl: "),
        "{}",
        unreadable.stderr
    );

    let twice = temper(
        &server,
        &[
            "jobs",
            "create",
            "--model",
            BASE_MODEL,
            "--training-file",
            "file-x",
            "--epochs",
            "2",
            "--hyperparameter",
            "n_epochs=3",
        ],
    )
    .await;
    assert_eq!(twice.code, 2, "{}", twice.stderr);
    assert!(
        twice.stderr.contains("`n_epochs` is given twice"),
        "{}",
        twice.stderr
    );
    let malformed = temper(
        &server,
        &[
            "jobs",
            "create",
            "--model",
            "m",
            "--training-file",
            "f",
            "--hyperparameter",
            "rank",
        ],
    )
    .await;
    assert_eq!(malformed.code, 2, "{}", malformed.stderr);

    // A port that was just free: bound, read, released.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nowhere = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    let refused = temper_at(&nowhere, None, &["jobs", "list"], "").await;
    assert_eq!(refused.code, 1);
    assert!(
        refused
            .stderr
            .starts_with(&format!("error: cannot connect to {nowhere}/v1: ")),
        "{}",
        refused.stderr
    );
}
