//! The `temper` binary itself: what `serve` says at start-up, in plain text when stderr is
//! not a terminal, and that a log output that fails (stderr on a full disk) never stops it
//! from answering.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::{BASE_MODEL, JOB_TIMEOUT};

fn serve(data_dir: &std::path::Path, models_dir: &std::path::Path, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_temper"));
    command
        .arg("serve")
        .arg("--port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--models-dir")
        .arg(models_dir)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Reads the child's stderr until a line contains `until`; returns everything read.
async fn read_log_until(child: &mut Child, until: &str) -> String {
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut log = String::new();
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            log.push_str(&line);
            log.push('\n');
            if line.contains(until) {
                return true;
            }
        }
        false
    };
    let found = tokio::time::timeout(JOB_TIMEOUT, read)
        .await
        .unwrap_or(false);
    assert!(found, "no `{until}` in the log:\n{log}");
    log
}

#[tokio::test]
async fn serve_logs_its_base_models_in_plain_text() {
    let root = tempfile::tempdir().expect("tmp");
    let models = root.path().join("models");
    temper::zoo::testing::write_tiny_bert(&models.join(BASE_MODEL), 7).expect("tiny BERT");
    std::fs::write(models.join("Tiny-GGUF.gguf"), b"GGUF").expect("gguf");
    let mut child = serve(&root.path().join("data"), &models, 0)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("temper serve");
    let log = read_log_until(&mut child, "base models in").await;
    assert!(log.contains("listening on http://127.0.0.1:"), "{log}");
    assert!(
        log.contains("2 base models in")
            && log.contains("Tiny-GGUF (decoder, GGUF), test-org/tiny-bert (encoder)"),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a piped log: {log:?}"
    );
    child.kill().await.expect("kill");

    let empty = root.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let mut child = serve(&root.path().join("data"), &empty, 0)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("temper serve");
    let log = read_log_until(&mut child, "no base models in the models dir").await;
    assert!(log.contains("WARN"), "{log}");
    child.kill().await.expect("kill");
}

/// The log says which library the CPU matrix products run on: the gemm crate when
/// `TEMPER_BLAS=off`, OpenBLAS by default where this machine has it.
#[tokio::test]
async fn serve_logs_which_library_runs_the_matrix_products() {
    let root = tempfile::tempdir().expect("tmp");
    let models = root.path().join("models");
    std::fs::create_dir_all(&models).expect("mkdir");
    let openblas_here = temper::zoo::cpu::blas::blas().is_some();
    for (choice, expected) in [
        ("off", "CPU matrix products on the gemm crate"),
        (
            "auto",
            if openblas_here {
                "CPU matrix products on OpenBLAS ("
            } else {
                "CPU matrix products on the gemm crate"
            },
        ),
    ] {
        let mut child = serve(&root.path().join("data"), &models, 0)
            .env(temper::zoo::cpu::blas::BLAS_ENV, choice)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("temper serve");
        let log = read_log_until(&mut child, "CPU matrix products on").await;
        assert!(log.contains(expected), "TEMPER_BLAS={choice}: {log}");
        child.kill().await.expect("kill");
    }
}

/// stdout and stderr on `/dev/full` (every write fails with ENOSPC), every log level on:
/// before, tracing-subscriber reported the failed write with `eprintln!`, which panicked
/// in whatever was logging (the first log line killed `main`; later ones, each request).
#[tokio::test]
async fn a_failing_log_output_never_stops_the_service() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("no /dev/full on this system: skipping");
        return;
    };
    let root = tempfile::tempdir().expect("tmp");
    let models = root.path().join("models");
    temper::zoo::testing::write_tiny_bert(&models.join(BASE_MODEL), 7).expect("tiny BERT");
    // The log cannot tell us the port, so pick a free one (released just before `serve`
    // binds it; another process taking it in between would fail the bind, not the test's
    // claim).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = serve(&root.path().join("data"), &models, port)
        .env("RUST_LOG", "trace")
        .stdout(full.try_clone().expect("dup"))
        .stderr(full)
        .spawn()
        .expect("temper serve");
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            panic!("temper exited with {status} while its log output was failing");
        }
        let reply = client.get(url("/health")).send().await;
        if reply.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        let health = client.get(url("/health")).send().await.expect("/health");
        assert_eq!(health.status(), 200);
        let health: serde_json::Value = health.json().await.expect("json");
        assert_eq!(
            (&health["status"], &health["store"]["status"]),
            (&"ok".into(), &"ok".into())
        );
        let models = client
            .get(url("/v1/models"))
            .send()
            .await
            .expect("/v1/models");
        assert_eq!(models.status(), 200);
        let listed: serde_json::Value = models.json().await.expect("json");
        assert_eq!(listed["data"][0]["id"], BASE_MODEL);
        let missing = client
            .get(url("/v1/files/file-nope"))
            .send()
            .await
            .expect("404");
        assert_eq!(missing.status(), 404);
    }
    assert!(child.try_wait().expect("status").is_none(), "temper died");
    child.kill().await.expect("kill");
}

#[tokio::test]
async fn a_worker_device_that_cannot_be_opened_stops_serve_at_start_up() {
    let root = tempfile::tempdir().expect("tmp");
    // Without the feature the message says how to build for GPUs; with it on a machine
    // without a driver, that no driver is installed.
    let no_cuda = if cfg!(feature = "cuda") {
        "no NVIDIA driver"
    } else {
        "--features cuda"
    };
    for (args, expected) in [
        (
            &["--devices", "cpu,tpu:0"][..],
            "expected `cpu` or `cuda:N`",
        ),
        (&["--devices", "cuda:0"], no_cuda),
        // Serving defaults to the first training device, and is checked the same way.
        (&["--devices", "cpu", "--serve-devices", "cuda:0"], no_cuda),
        (
            &["--serve-devices", "cpu,cpu"],
            "`--serve-devices` names `cpu` twice",
        ),
    ] {
        let devices = args.join(" ");
        let output = serve(&root.path().join("data"), root.path(), 0)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let output = tokio::time::timeout(JOB_TIMEOUT, output)
            .await
            .expect("serve exits")
            .expect("run temper serve");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{devices}: serve kept running");
        assert!(
            stderr.contains("cannot be used") && stderr.contains(expected),
            "{stderr}"
        );
        // Nothing was created for a server that never started.
        assert!(
            !root.path().join("data").exists(),
            "{devices}: data dir created"
        );
    }
}
