//! Injected `ENOSPC`/`EIO` at each write point, the reserve and the leftover sweep.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::reserve::RESERVE_FILE;
use super::*;

const RESERVE: u64 = 3 * 1024 * 1024 + 17;

fn blobs_with_reserve() -> (tempfile::TempDir, Blobs) {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::new(dir.path().join("data"))
        .unwrap()
        .with_reserve(RESERVE);
    (dir, blobs)
}

fn entries(blobs: &Blobs, sub: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(blobs.path(sub))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn reserve_len(blobs: &Blobs) -> Option<u64> {
    std::fs::metadata(blobs.root().join(RESERVE_FILE))
        .ok()
        .map(|m| m.len())
}

fn two_chunks() -> impl futures::Stream<Item = Result<Bytes, io::Error>> + Unpin {
    futures::stream::iter(vec![
        Ok(Bytes::from_static(b"first chunk\n")),
        Ok(Bytes::from_static(b"second chunk\n")),
    ])
}

#[tokio::test]
async fn an_injected_full_disk_at_any_write_point_keeps_nothing_and_releases_the_reserve() {
    for op in [BlobOp::Write, BlobOp::Sync, BlobOp::Rename, BlobOp::SyncDir] {
        let (_dir, blobs) = blobs_with_reserve();
        assert!(blobs.reserve().arm().await);
        assert_eq!(reserve_len(&blobs), Some(RESERVE));

        blobs.faults().fail(op, libc::ENOSPC);
        let streamed = blobs
            .stream_to_file("files/file-a", two_chunks(), 1 << 20)
            .await
            .unwrap_err();
        assert!(streamed.is_storage_full(), "{op:?}: {streamed:?}");
        let written = blobs
            .write_atomic("files/file-b", b"whole")
            .await
            .unwrap_err();
        assert!(written.is_storage_full(), "{op:?}: {written:?}");

        assert!(entries(&blobs, FILES_DIR).is_empty(), "{op:?}");
        assert!(entries(&blobs, TMP_DIR).is_empty(), "{op:?}");
        assert_eq!(reserve_len(&blobs), None, "{op:?}: reserve still held");
        assert!(!blobs.reserve().is_armed());
    }
}

#[tokio::test]
async fn an_injected_eio_fails_the_write_but_keeps_the_reserve() {
    for op in [BlobOp::Write, BlobOp::Sync, BlobOp::Rename, BlobOp::SyncDir] {
        let (_dir, blobs) = blobs_with_reserve();
        assert!(blobs.reserve().arm().await);
        blobs.faults().fail(op, libc::EIO);
        let error = blobs
            .stream_to_file("files/file-a", two_chunks(), 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(error, BlobError::Io(_)), "{op:?}: {error:?}");
        assert!(!error.is_storage_full(), "{op:?}");
        assert!(entries(&blobs, FILES_DIR).is_empty(), "{op:?}");
        assert!(entries(&blobs, TMP_DIR).is_empty(), "{op:?}");
        assert_eq!(reserve_len(&blobs), Some(RESERVE), "{op:?}");

        blobs.faults().clear();
        let total = blobs
            .stream_to_file("files/file-a", two_chunks(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(total, 25);
        assert_eq!(
            blobs.read("files/file-a").await.unwrap(),
            b"first chunk\nsecond chunk\n"
        );
    }
}

#[tokio::test]
async fn uploads_are_refused_until_the_disk_has_room_for_the_reserve_twice() {
    let (_dir, blobs) = blobs_with_reserve();
    assert!(blobs.ensure_space().await.is_ok());
    assert!(blobs.reserve().release().await);
    // The disk stays nearly full: one reserve's worth is not enough to re-arm.
    blobs.faults().pin_free_space(2 * RESERVE - 1);
    let refused = blobs.ensure_space().await.unwrap_err();
    assert!(refused.is_storage_full(), "{refused:?}");
    assert_eq!(reserve_len(&blobs), None);

    blobs.faults().pin_free_space(2 * RESERVE);
    blobs.ensure_space().await.unwrap();
    assert_eq!(reserve_len(&blobs), Some(RESERVE));
    assert!(blobs.reserve().is_armed());
}

#[tokio::test]
async fn a_reserve_that_cannot_be_written_leaves_no_partial_file() {
    let (_dir, blobs) = blobs_with_reserve();
    blobs.faults().fail(BlobOp::Write, libc::ENOSPC);
    assert!(!blobs.reserve().arm().await);
    assert_eq!(reserve_len(&blobs), None);
    assert!(blobs.ensure_space().await.unwrap_err().is_storage_full());
    blobs.faults().clear();
    assert!(blobs.reserve().arm().await);
    assert_eq!(reserve_len(&blobs), Some(RESERVE));
}

#[tokio::test]
async fn no_reserve_means_no_refusal_and_nothing_to_release() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::new(dir.path().join("data")).unwrap();
    blobs.faults().pin_free_space(0);
    blobs.ensure_space().await.unwrap();
    assert!(!blobs.reserve().release().await);
    assert_eq!(reserve_len(&blobs), None);
}

fn age(path: &std::path::Path, by: Duration) {
    // The owner may set times through a read-only handle (directories included).
    let file = std::fs::File::open(path).unwrap();
    file.set_modified(SystemTime::now() - by).unwrap();
}

#[tokio::test]
async fn the_sweep_removes_old_partial_writes_and_rowless_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::new(dir.path().join("data")).unwrap();
    let hour = Duration::from_secs(3600);
    std::fs::write(blobs.path("tmp/old.part"), vec![1u8; 1000]).unwrap();
    age(&blobs.path("tmp/old.part"), 2 * hour);
    std::fs::write(blobs.path("tmp/in-flight.part"), vec![2u8; 300]).unwrap();
    std::fs::create_dir_all(blobs.path("tmp/export-old/model")).unwrap();
    std::fs::write(blobs.path("tmp/export-old/model/w.bin"), vec![3u8; 50]).unwrap();
    age(&blobs.path("tmp/export-old"), 2 * hour);
    for (id, len) in [("file-kept", 10), ("file-orphan", 4000), ("file-young", 20)] {
        std::fs::write(blobs.file_path(id), vec![4u8; len]).unwrap();
    }
    age(&blobs.file_path("file-kept"), 2 * hour);
    age(&blobs.file_path("file-orphan"), 2 * hour);
    let known: HashSet<String> = ["file-kept".to_string()].into();

    let report = blobs.sweep_leftovers(known.clone(), hour).await.unwrap();
    assert_eq!(
        report,
        SweepReport {
            partial_writes: 2,
            orphan_files: 1,
            bytes: 1000 + 50 + 4000,
        }
    );
    assert_eq!(entries(&blobs, TMP_DIR), ["in-flight.part"]);
    assert_eq!(entries(&blobs, FILES_DIR), ["file-kept", "file-young"]);

    // With no grace the young ones go too, the file with a row never does.
    let report = blobs.sweep_leftovers(known, Duration::ZERO).await.unwrap();
    assert_eq!(
        report,
        SweepReport {
            partial_writes: 1,
            orphan_files: 1,
            bytes: 300 + 20,
        }
    );
    assert!(entries(&blobs, TMP_DIR).is_empty());
    assert_eq!(entries(&blobs, FILES_DIR), ["file-kept"]);
}
