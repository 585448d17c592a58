//! Crash leftovers: what a killed process leaves in the data dir is swept when the service
//! starts again, once it is older than the grace period.

use std::time::{Duration, SystemTime};

use crate::common::{sentiment_jsonl, TestOptions, TestServer};

fn write_aged(path: &std::path::Path, len: usize, age: Duration) {
    std::fs::write(path, vec![7u8; len]).expect("write leftover");
    let file = std::fs::File::open(path).expect("open leftover");
    file.set_modified(SystemTime::now() - age)
        .expect("age leftover");
}

#[tokio::test]
async fn a_restart_sweeps_partial_uploads_and_files_without_rows() {
    let server = TestServer::spawn().await;
    let kept = server.upload_ok("kept.jsonl", sentiment_jsonl(4)).await;
    let data = server.data_dir.clone();
    let root = server.stop().await;

    // What SIGKILL leaves: a partial upload, and a validated blob whose row never came.
    let hour = Duration::from_secs(3600);
    write_aged(&data.join("tmp/killed-upload.part"), 5000, hour);
    write_aged(&data.join("files/file-killedduringvalidation"), 7000, hour);
    // Younger than the grace period (15 minutes by default): could still be in flight.
    write_aged(&data.join("tmp/recent.part"), 100, Duration::from_secs(60));

    let server = TestServer::start(root, TestOptions::default()).await;
    assert!(!data.join("tmp/killed-upload.part").exists());
    assert!(!data.join("files/file-killedduringvalidation").exists());
    assert!(data.join("tmp/recent.part").exists());
    assert!(data.join(format!("files/{kept}")).exists());
    let (status, file) = server.get(&format!("/v1/files/{kept}")).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["filename"], "kept.jsonl");
}
