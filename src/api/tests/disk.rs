//! A full disk through the API, by fault injection: `BlobFaults` (ENOSPC/EIO at write,
//! fsync, rename; free space pinned) and `PageCap` (a real `SQLITE_FULL`). The database
//! is a file here, and a second `Store` on it stands for the service after a restart.

use super::*;
use crate::blobs::{BlobError, BlobOp};
use crate::store::{EventRow, JobRow, PageCap, StoreError};

const RESERVE: u64 = 2 * 1024 * 1024;

struct FullDisk {
    h: Harness,
    cap: PageCap,
    dir: tempfile::TempDir,
}

impl FullDisk {
    async fn new() -> FullDisk {
        FullDisk::with_upload_limit(1 << 20).await
    }

    async fn with_upload_limit(max_upload_bytes: u64) -> FullDisk {
        let mut h = harness(&[], max_upload_bytes).await;
        let dir = tempfile::tempdir().expect("tmp");
        let cap = PageCap::default();
        h.state.store = Store::open_with_page_cap(&dir.path().join("temper.db"), cap.clone(), 1)
            .await
            .expect("store");
        h.state.blobs = Blobs::new(dir.path().join("data"))
            .expect("blobs")
            .with_reserve(RESERVE);
        assert!(h.state.blobs.reserve().arm().await);
        FullDisk { h, cap, dir }
    }

    /// Caps the database at its current size: every growing write fails with SQLITE_FULL.
    async fn fill_database(&self) {
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(self.h.state.store.pool())
            .await
            .expect("page_count");
        self.cap.cap_at(u32::try_from(pages).expect("pages"));
    }

    /// The data dir's files (blobs) and tmp entries.
    fn on_disk(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join("data").join(sub))
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn reserve_present(&self) -> bool {
        self.dir.path().join("data/space-reserve").exists()
    }

    /// The file ids a fresh process would find (what survives a restart).
    async fn durable_file_ids(&self) -> Vec<String> {
        let other = Store::open(&self.dir.path().join("temper.db"))
            .await
            .expect("second store");
        let mut ids = other.file_ids().await.expect("ids");
        other.close().await;
        ids.sort();
        ids
    }

    async fn upload(&self, name: &str) -> Reply {
        self.h.upload("user_data", name, b"some user data\n").await
    }

    /// An upload whose row is larger than a page, so writing it must grow the database.
    async fn upload_with_a_big_row(&self) -> Reply {
        self.upload(&format!("{}.txt", "n".repeat(6000))).await
    }
}

/// A job row whose metadata carries `note_len` bytes (enough to need new pages).
fn job_row(id: &str, note_len: usize) -> JobRow {
    let mut job = JobRow::new(
        id.to_string(),
        "test-org/tiny".to_string(),
        "file-train".to_string(),
        1,
        10,
    );
    job.metadata = Some(json!({"note": "x".repeat(note_len)}));
    job
}

async fn create_job(store: &Store, id: &str) {
    store
        .create_job(&job_row(id, 0), &EventRow::info(id, "Created", 10))
        .await
        .expect("create job");
}

fn assert_insufficient_storage(reply: &Reply) {
    assert_eq!(
        reply.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    assert_eq!(body["error"]["param"], Value::Null, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("disk is full"), "{message}");
}

fn file_id(reply: &Reply) -> String {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn an_upload_on_a_full_disk_is_507_keeps_nothing_and_recovers_when_space_is_back() {
    for op in [BlobOp::Write, BlobOp::Sync, BlobOp::Rename, BlobOp::SyncDir] {
        let disk = FullDisk::new().await;
        disk.h.state.blobs.faults().fail(op, libc::ENOSPC);
        disk.h.state.blobs.faults().pin_free_space(0);
        assert_insufficient_storage(&disk.upload("a.txt").await);
        assert!(disk.on_disk("files").is_empty(), "{op:?}");
        assert!(disk.on_disk("tmp").is_empty(), "{op:?}");
        assert!(
            !disk.reserve_present(),
            "{op:?}: the reserve was not released"
        );
        assert!(disk.durable_file_ids().await.is_empty());

        // Still full: refused up front, before a byte is written.
        disk.h.state.blobs.faults().clear();
        disk.h.state.blobs.faults().pin_free_space(2 * RESERVE - 1);
        assert_insufficient_storage(&disk.upload("b.txt").await);
        assert!(disk.on_disk("tmp").is_empty());

        // Space is back: the next upload re-arms the reserve and succeeds, no restart.
        disk.h.state.blobs.faults().clear();
        let id = file_id(&disk.upload("c.txt").await);
        assert!(disk.reserve_present());
        assert_eq!(disk.on_disk("files"), std::slice::from_ref(&id));
        assert_eq!(disk.durable_file_ids().await, [id]);
    }
}

#[tokio::test]
async fn an_upload_whose_row_cannot_be_written_is_507_and_its_blob_removed() {
    let disk = FullDisk::new().await;
    disk.fill_database().await;
    assert_insufficient_storage(&disk.upload_with_a_big_row().await);
    assert!(disk.on_disk("files").is_empty());
    assert!(disk.on_disk("tmp").is_empty());
    assert!(disk.durable_file_ids().await.is_empty());
    assert!(
        !disk.reserve_present(),
        "SQLITE_FULL must release the reserve"
    );

    disk.cap.lift();
    let id = file_id(&disk.upload("b.txt").await);
    assert_eq!(disk.durable_file_ids().await, std::slice::from_ref(&id));
    assert_eq!(disk.on_disk("files"), [id]);
    assert!(disk.reserve_present());
}

/// The probe's "200 with a file id, then lost": a transaction failed by the full disk left
/// its connection poisoned, and the next upload's row was written into a transaction that
/// never committed (while every other connection got `database is locked`).
#[tokio::test]
async fn no_upload_is_acknowledged_unless_its_row_is_committed() {
    let disk = FullDisk::new().await;
    let store = &disk.h.state.store;
    create_job(store, "ftjob-1").await;
    disk.fill_database().await;
    let big = job_row("ftjob-2", 20_000);
    let full = store
        .create_job(&big, &EventRow::info("ftjob-2", "Created", 11))
        .await
        .expect_err("the database is full");
    assert!(full.is_storage_full(), "{full:?}");

    disk.cap.lift();
    let duplicate = job_row("ftjob-1", 0);
    let conflict = store
        .create_job(&duplicate, &EventRow::info("ftjob-1", "dup", 12))
        .await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict(_))),
        "{conflict:?}"
    );

    let id = file_id(&disk.upload("a.txt").await);
    assert_eq!(disk.durable_file_ids().await, std::slice::from_ref(&id));
    // And the store still writes, with nothing holding SQLite's write lock.
    let other = Store::open(&disk.dir.path().join("temper.db"))
        .await
        .expect("second store");
    create_job(&other, "ftjob-3").await;
    other.close().await;
    let deleted = disk
        .h
        .call(Method::DELETE, &format!("/v1/files/{id}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
}

#[tokio::test]
async fn files_can_be_deleted_while_the_disk_is_full() {
    let disk = FullDisk::new().await;
    let first = file_id(&disk.upload("a.txt").await);
    let second = file_id(&disk.upload("b.txt").await);

    // Full everywhere: the database cannot grow, blob writes fail, no free space.
    disk.fill_database().await;
    disk.h
        .state
        .blobs
        .faults()
        .fail(BlobOp::Write, libc::ENOSPC);
    disk.h.state.blobs.faults().pin_free_space(0);
    assert_insufficient_storage(&disk.upload("c.txt").await);

    let deleted = disk
        .h
        .call(Method::DELETE, &format!("/v1/files/{first}"), None)
        .await;
    assert_eq!(
        deleted.json(),
        json!({"id": first, "object": "file", "deleted": true})
    );
    assert_eq!(disk.on_disk("files"), std::slice::from_ref(&second));
    assert_eq!(disk.durable_file_ids().await, std::slice::from_ref(&second));
    let listed = disk.h.call(Method::GET, "/v1/files", None).await.json();
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1));

    // Space comes back: uploads work again and the reserve is back in place.
    disk.cap.lift();
    disk.h.state.blobs.faults().clear();
    let third = file_id(&disk.upload("d.txt").await);
    assert!(disk.reserve_present());
    let mut expected = vec![second, third];
    expected.sort();
    assert_eq!(disk.durable_file_ids().await, expected);
}

#[tokio::test]
async fn full_disk_errors_of_both_layers_map_to_507_and_others_stay_500() {
    let enospc = || std::io::Error::from_raw_os_error(libc::ENOSPC);
    let cases: [(ApiError, StatusCode); 4] = [
        (
            BlobError::Io(enospc()).into(),
            StatusCode::INSUFFICIENT_STORAGE,
        ),
        (
            StoreError::Database(sqlx::Error::Io(enospc())).into(),
            StatusCode::INSUFFICIENT_STORAGE,
        ),
        (
            BlobError::Io(std::io::Error::from_raw_os_error(libc::EIO)).into(),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        (
            StoreError::Database(sqlx::Error::PoolTimedOut).into(),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    ];
    for (error, status) in cases {
        assert_eq!(error.status, status, "{error:?}");
    }
}

/// A client that sends its whole body before it reads the reply (Python's http.client,
/// httpx and so the OpenAI SDK) reads the 507 of a full disk, not a broken connection: the
/// refused body is read to its end first. Over a real socket, with a body larger than the
/// socket buffers.
#[tokio::test]
async fn a_client_that_sends_its_whole_body_first_reads_the_507() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let disk = FullDisk::with_upload_limit(64 << 20).await;
    disk.h
        .state
        .blobs
        .faults()
        .fail(BlobOp::Write, libc::ENOSPC);
    disk.h.state.blobs.faults().pin_free_space(0);
    assert_insufficient_storage(&disk.upload("a.txt").await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let app = router(disk.h.state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut body = b"--B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n\
        --B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n\r\n"
        .to_vec();
    body.extend(std::iter::repeat_n(b'x', 24 << 20));
    body.extend(b"\r\n--B--\r\n");
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: temper\r\nContent-Type: multipart/form-data; \
         boundary=B\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    socket.write_all(head.as_bytes()).await.expect("head");
    socket
        .write_all(&body)
        .await
        .expect("the whole body is taken");
    let mut reply = String::new();
    socket.read_to_string(&mut reply).await.expect("reply");
    assert!(reply.starts_with("HTTP/1.1 507"), "{reply}");
    assert!(reply.contains("insufficient_storage"), "{reply}");
    assert!(disk.on_disk("tmp").is_empty());
}
