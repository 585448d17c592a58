//! `BinaryServer`: the real `temper serve` binary as a child process on port 0 over a temp
//! data dir, for what an in-process server cannot show: the process's own memory
//! (`/proc/<pid>/status`) and its log.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

pub struct BinaryServer {
    pub base_url: String,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    child: Child,
    /// Kept until the server is dropped; taken by a restart.
    root: Option<TempDir>,
}

impl BinaryServer {
    /// Starts `temper serve --port 0` with an empty models dir, `extra_args` appended, and
    /// waits for its `listening on` line.
    pub async fn spawn(extra_args: &[&str]) -> BinaryServer {
        BinaryServer::spawn_with_models(|_| {}, extra_args).await
    }

    /// `spawn`, with `write_models` filling the models dir before the server starts.
    pub async fn spawn_with_models(
        write_models: impl FnOnce(&Path),
        extra_args: &[&str],
    ) -> BinaryServer {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join("models")).expect("models dir");
        write_models(&root.path().join("models"));
        BinaryServer::start(root, extra_args).await
    }

    /// Kills the process with SIGKILL (no shutdown of any kind) and starts a new one on the
    /// same data and models dirs with `extra_args`.
    pub async fn kill_and_restart(mut self, extra_args: &[&str]) -> BinaryServer {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
        let root = self.root.take().expect("root is present until dropped");
        BinaryServer::start(root, extra_args).await
    }

    async fn start(root: TempDir, extra_args: &[&str]) -> BinaryServer {
        let data_dir = root.path().join("data");
        let models_dir = root.path().join("models");
        // Appended, so a restart's log follows the killed process's.
        let log_path = root.path().join("server.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let log_start = log.metadata().map_or(0, |m| m.len());
        // `TEMPER_TEST_BIN` runs another build (to measure it before a change).
        let binary = std::env::var_os("TEMPER_TEST_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_temper")),
            PathBuf::from,
        );
        let child = Command::new(binary)
            .arg("serve")
            .args(["--port", "0", "--host", "127.0.0.1"])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--models-dir")
            .arg(&models_dir)
            .args(extra_args)
            .env("RUST_LOG", "temper=debug,tower_http=info")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("temper binary starts");
        let mut server = BinaryServer {
            base_url: String::new(),
            data_dir,
            log_path,
            child,
            root: Some(root),
        };
        for _ in 0..600 {
            let log = server.log();
            let log = log
                .get(usize::try_from(log_start).expect("size")..)
                .unwrap_or_default();
            if let Some(at) = log.find("listening on http://") {
                let rest = &log[at + "listening on ".len()..];
                // Ends at a space (text logs) or at the closing quote (JSON logs).
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == '"')
                    .unwrap_or(rest.len());
                server.base_url = rest[..end].to_string();
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("temper exited with {status}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("temper never said where it listens:\n{}", server.log());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Uploads `content` as a `fine-tune` file named `train.jsonl` (no key); the raw
    /// response, for its headers.
    pub async fn upload_fine_tune(&self, content: Vec<u8>) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(content).file_name("train.jsonl");
        let form = reqwest::multipart::Form::new()
            .text("purpose", "fine-tune")
            .part("file", part);
        reqwest::Client::new()
            .post(self.url("/v1/files"))
            .multipart(form)
            .send()
            .await
            .expect("upload")
    }

    /// `POST path` with a JSON body, or none (no key); the answer's JSON.
    pub async fn post_json(&self, path: &str, body: Option<&Value>) -> Value {
        let request = reqwest::Client::new().post(self.url(path));
        let request = match body {
            Some(body) => request.json(body),
            None => request,
        };
        request
            .send()
            .await
            .expect("POST")
            .json()
            .await
            .expect("JSON answer")
    }

    /// `GET path` (no key); the answer's JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        reqwest::Client::new()
            .get(self.url(path))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON answer")
    }

    /// `host:port`, for raw sockets.
    pub fn address(&self) -> &str {
        self.base_url.trim_start_matches("http://")
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`: the peak resident set).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    /// The process's largest resident mappings, `Rss KiB  range  name` per line, largest
    /// first: what a memory assertion's failure message shows of where the bytes are.
    pub fn largest_mappings(&self, count: usize) -> String {
        let smaps =
            std::fs::read_to_string(format!("/proc/{}/smaps", self.child.id())).unwrap_or_default();
        let mut mappings: Vec<(u64, String)> = Vec::new();
        for line in smaps.lines() {
            if let Some(kib) = line.strip_prefix("Rss:") {
                let kib = kib
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                if let Some(last) = mappings.last_mut() {
                    last.0 = kib;
                }
            } else if line
                .split_whitespace()
                .next()
                .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
            {
                mappings.push((0, line.to_string()));
            }
        }
        mappings.sort_by_key(|m| std::cmp::Reverse(m.0));
        mappings
            .iter()
            .take(count)
            .map(|(kib, header)| format!("{kib:>8} KiB  {header}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// User + system CPU ticks of the whole process (unchanged between two reads: idle).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("/proc/<pid>/stat");
        // Fields after the command name, which may itself hold spaces: utime and stime are
        // the 12th and 13th.
        let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }

    /// Entries of a directory under the data dir (`files`, `tmp`).
    pub fn entries(&self, dir: &str) -> Vec<String> {
        std::fs::read_dir(self.data_dir.join(dir))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
