//! Uploads against the real binary: a large fine-tune upload validates within a fixed memory
//! bound, and truncated or abandoned uploads are the client's error, leave nothing behind and
//! log no server error.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::binary::BinaryServer;

/// What validating an upload may add to the server's peak resident memory, whatever the
/// file's size (the bound `domain::dataset` documents, with margin).
const UPLOAD_MEMORY_BOUND_BYTES: u64 = 200_000_000;

/// Size of the generated upload; `TEMPER_UPLOAD_MEMORY_TEST_BYTES` overrides it (the 1 GiB
/// measurement in the report used 1073741824).
const DEFAULT_UPLOAD_BYTES: u64 = 256 * 1024 * 1024;

/// Guard against a hung server; no test asserts a duration.
const GUARD: Duration = Duration::from_secs(120);

/// A classification JSONL file of `lines` fixed-width lines, generated chunk by chunk.
///
/// Line `i` has text `t` = 0 when `i % 10 == 9` (a duplicate of line 0), else `i`, and label
/// `["pos", "neg", "neu"][t % 3]`; lines with `i % 10 == 8` repeat text 0 with `neg` (the
/// first is a conflicting duplicate, the others duplicates of it).
struct GeneratedFile {
    lines: u64,
}

impl GeneratedFile {
    const LINES_PER_CHUNK: u64 = 16 * 1024;

    fn line(i: u64) -> String {
        let (text, label) = match i % 10 {
            9 => (0, "pos"),
            8 => (0, "neg"),
            _ => (i, ["pos", "neg", "neu"][(i % 3) as usize]),
        };
        format!(
            "{{\"text\":\"review {text:012} of a film I watched twice\",\"label\":\"{label}\"}}\n"
        )
    }

    fn with_size(bytes: u64) -> GeneratedFile {
        let width = GeneratedFile::line(0).len() as u64;
        GeneratedFile {
            lines: bytes / width,
        }
    }

    fn len(&self) -> u64 {
        self.lines * GeneratedFile::line(0).len() as u64
    }

    fn duplicates(&self) -> u64 {
        let nines = self.lines / 10;
        let eights = (self.lines + 1) / 10;
        nines + eights.saturating_sub(1)
    }

    /// The content, produced only as the upload reads it.
    fn stream(&self) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        let lines = self.lines;
        let chunks = lines.div_ceil(GeneratedFile::LINES_PER_CHUNK);
        futures::stream::iter((0..chunks).map(move |chunk| {
            let first = chunk * GeneratedFile::LINES_PER_CHUNK;
            let last = (first + GeneratedFile::LINES_PER_CHUNK).min(lines);
            let text: String = (first..last).map(GeneratedFile::line).collect();
            Ok(Bytes::from(text))
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fine_tune_upload_is_validated_within_a_fixed_memory_bound() {
    let size = std::env::var("TEMPER_UPLOAD_MEMORY_TEST_BYTES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_UPLOAD_BYTES);
    let file = GeneratedFile::with_size(size);
    let limit = (2 * size).to_string();
    let server = BinaryServer::spawn(&["--max-upload-bytes", &limit]).await;
    let client = reqwest::Client::new();
    let (status, _) = get(&client, &server.url("/v1/files")).await;
    assert_eq!(status, 200);
    let baseline_kib = server.status_kib("VmHWM");

    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(file.stream()),
        file.len(),
    )
    .file_name("big.jsonl");
    let form = reqwest::multipart::Form::new()
        .text("purpose", "fine-tune")
        .part("file", part);
    let reply = tokio::time::timeout(
        GUARD,
        client.post(server.url("/v1/files")).multipart(form).send(),
    )
    .await
    .expect("upload finished")
    .expect("upload sent");
    assert_eq!(reply.status().as_u16(), 200);
    let uploaded: Value = reply.json().await.expect("file object");
    assert_eq!(uploaded["status"], "processed", "{uploaded}");
    assert_eq!(uploaded["bytes"].as_u64(), Some(file.len()));

    let peak_kib = server.status_kib("VmHWM");
    let growth = (peak_kib.saturating_sub(baseline_kib)) * 1024;
    eprintln!(
        "uploaded {} bytes ({} lines): peak RSS {} KiB, baseline {} KiB, growth {:.1} MB",
        file.len(),
        file.lines,
        peak_kib,
        baseline_kib,
        growth as f64 / 1e6
    );
    assert!(
        growth < UPLOAD_MEMORY_BOUND_BYTES,
        "validating a {} byte upload grew the server's peak RSS by {growth} bytes",
        file.len()
    );
    // What validation found, from the log (the file object does not carry it).
    let log = server.log();
    for field in [
        format!("examples={}", file.lines),
        format!("duplicates={}", file.duplicates()),
        "conflicting_duplicates=1".to_string(),
        "labels=3".to_string(),
    ] {
        assert!(log.contains(&field), "no `{field}` in the log:\n{log}");
    }
}

const BOUNDARY: &str = "temperboundary";

/// The multipart body of a fine-tune upload of `content`, without its closing boundary.
fn open_multipart(content: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body
}

fn request_head(content_length: usize) -> String {
    format!(
        "POST /v1/files HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: {content_length}\r\n\r\n"
    )
}

fn jsonl(lines: usize) -> Vec<u8> {
    (0..lines)
        .map(|i| format!("{{\"text\":\"example {i}\",\"label\":\"{}\"}}\n", i % 2))
        .collect::<String>()
        .into_bytes()
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let reply = client.get(url).send().await.expect("request");
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// Waits until the upload left nothing: no row, no file, no partial file.
async fn assert_nothing_left(server: &BinaryServer) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let (_, files) = get(&client, &server.url("/v1/files")).await;
        let left = (server.entries("files"), server.entries("tmp"));
        if files["data"] == serde_json::json!([]) && left.0.is_empty() && left.1.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: rows {files}, files {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `line` in the log; nothing may be logged as a server error meanwhile.
async fn assert_logged_without_errors(server: &BinaryServer, line: &str) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let log = server.log();
        assert!(
            !log.contains("ERROR") && !log.contains("status=500"),
            "a server error was logged:\n{log}"
        );
        if log.contains(line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{line}` in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_multipart_body_without_its_closing_boundary_is_a_400() {
    let server = BinaryServer::spawn(&[]).await;
    let body = open_multipart(&jsonl(20));
    let mut socket = TcpStream::connect(server.address()).await.expect("connect");
    socket
        .write_all(request_head(body.len()).as_bytes())
        .await
        .expect("head");
    socket.write_all(&body).await.expect("body");
    let mut reply = String::new();
    tokio::time::timeout(GUARD, socket.read_to_string(&mut reply))
        .await
        .expect("reply in time")
        .expect("reply");
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    let json = &reply[reply.find("\r\n\r\n").expect("head ends") + 4..];
    let envelope: Value = serde_json::from_str(json).expect("JSON body");
    assert_eq!(
        envelope["error"]["type"], "invalid_request_error",
        "{envelope}"
    );
    assert_eq!(
        envelope["error"]["message"],
        "Invalid multipart body: field \"file\" received with incomplete data.",
        "{envelope}"
    );
    assert_nothing_left(&server).await;
    assert_logged_without_errors(&server, "status=400").await;
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_not_a_server_error() {
    let server = BinaryServer::spawn(&[]).await;
    let body = open_multipart(&jsonl(5_000));
    let mut socket = TcpStream::connect(server.address()).await.expect("connect");
    // Announces a megabyte more than it sends, then closes its sending side.
    socket
        .write_all(request_head(body.len() + 1_000_000).as_bytes())
        .await
        .expect("head");
    socket.write_all(&body).await.expect("body");
    socket.shutdown().await.expect("half close");
    let mut reply = Vec::new();
    let read = tokio::time::timeout(GUARD, socket.read_to_end(&mut reply))
        .await
        .expect("the server answers or closes");
    read.expect("reply");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    let json = &reply[reply.find("\r\n\r\n").expect("head ends") + 4..];
    let envelope: Value = serde_json::from_str(json).expect("JSON body");
    assert_eq!(
        envelope["error"]["type"], "invalid_request_error",
        "{envelope}"
    );
    assert_eq!(envelope["error"]["param"], "file", "{envelope}");
    assert_eq!(
        envelope["error"]["message"],
        "The request body ended before the upload was complete (the client sent less than its \
         Content-Length, or disconnected).",
        "{envelope}"
    );
    assert_nothing_left(&server).await;
    assert_logged_without_errors(&server, "upload aborted").await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_nothing_and_no_server_error() {
    let server = BinaryServer::spawn(&[]).await;
    let body = open_multipart(&jsonl(50_000));
    let mut socket = TcpStream::connect(server.address()).await.expect("connect");
    socket
        .write_all(request_head(body.len() * 2).as_bytes())
        .await
        .expect("head");
    socket.write_all(&body).await.expect("body");
    // Waits until the server has started writing the file, then goes away.
    let deadline = tokio::time::Instant::now() + GUARD;
    while server.entries("tmp").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(socket);
    assert_nothing_left(&server).await;
    assert_logged_without_errors(&server, "upload aborted").await;
}

#[tokio::test]
async fn a_client_that_leaves_during_validation_still_gets_its_file_recorded() {
    let server = BinaryServer::spawn(&[]).await;
    let mut body = open_multipart(&jsonl(500_000));
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let mut socket = TcpStream::connect(server.address()).await.expect("connect");
    socket
        .write_all(request_head(body.len()).as_bytes())
        .await
        .expect("head");
    socket.write_all(&body).await.expect("body");
    // The whole request is sent; the client goes away before the reply.
    drop(socket);
    // The upload finishes anyway: a file and its row, never a file without one.
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let (_, files) = get(&client, &server.url("/v1/files")).await;
        let ids: Vec<&str> = files["data"]
            .as_array()
            .map(|data| data.iter().filter_map(|f| f["id"].as_str()).collect())
            .unwrap_or_default();
        if ids.len() == 1 && server.entries("files") == ids {
            assert_eq!(files["data"][0]["status"], "processed", "{files}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rows {files}, files {:?}:\n{}",
            server.entries("files"),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.entries("tmp").is_empty());
    assert!(server.log().contains("examples=500000"), "{}", server.log());
}
