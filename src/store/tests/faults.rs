//! A full disk, for real: `PageCap` makes SQLite fail growing writes with `SQLITE_FULL`
//! (the error its VFS gives for `ENOSPC`), then lifts the cap as if space came back. These
//! run on a database file, the way production opens it, with a second `Store` on the same
//! file standing for another process (or the service after a restart).

use std::path::Path;

use super::create;
use super::files::file;
use crate::store::{PageCap, Store, StoreError};

async fn page_count(store: &Store) -> u32 {
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(store.pool())
        .await
        .unwrap();
    u32::try_from(pages).unwrap()
}

async fn capped_store(path: &Path) -> (Store, PageCap) {
    let cap = PageCap::default();
    let store = Store::open_with_page_cap(path, cap.clone(), 1)
        .await
        .unwrap();
    (store, cap)
}

/// Before the fix: the failed transaction left sqlx's depth at 1 on a connection SQLite
/// had already rolled back; the next transaction on it became a SAVEPOINT that a conflict
/// rolled back *to* without ending it, so the upload row written next was acknowledged
/// inside a transaction that was never committed, and every other connection got
/// `database is locked`.
#[tokio::test]
async fn a_transaction_failed_by_a_full_disk_poisons_no_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("temper.db");
    let (store, cap) = capped_store(&path).await;
    create(&store, "ftjob-1", 100).await;

    cap.cap_at(page_count(&store).await);
    let mut job = store.get_job("ftjob-1").await.unwrap().unwrap();
    job.id = "ftjob-2".to_string();
    job.metadata = Some(serde_json::json!({"note": "x".repeat(20_000)}));
    let event = crate::store::EventRow::info("ftjob-2", "Created", 101);
    let full = store.create_job(&job, &event).await.unwrap_err();
    assert!(full.is_storage_full(), "{full:?}");
    // A row too big for any page's free space needs a new page, which the cap refuses.
    let mut big = file("file-full", "fine-tune", 101);
    big.filename = "f".repeat(6000);
    let full = store.insert_file(&big).await.unwrap_err();
    assert!(full.is_storage_full(), "{full:?}");

    cap.lift();
    // A conflict inside the next transaction (the one that used to end in ROLLBACK TO).
    let mut again = job.clone();
    again.id = "ftjob-1".to_string();
    let conflict = store
        .create_job(&again, &crate::store::EventRow::info("ftjob-1", "dup", 102))
        .await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict(_))),
        "{conflict:?}"
    );
    store
        .insert_file(&file("file-a", "fine-tune", 103))
        .await
        .unwrap();

    // Another process sees the row (it was committed) and can write: nothing holds the lock.
    let other = Store::open(&path).await.unwrap();
    assert!(other.get_file("file-a").await.unwrap().is_some());
    assert_eq!(other.get_file("file-full").await.unwrap(), None);
    assert!(other.get_job("ftjob-2").await.unwrap().is_none());
    other
        .insert_file(&file("file-b", "fine-tune", 104))
        .await
        .unwrap();
    create(&other, "ftjob-3", 105).await;
    other.close().await;

    // The first store keeps working on every connection, and sees the other's writes.
    create(&store, "ftjob-4", 106).await;
    assert!(store.get_file("file-b").await.unwrap().is_some());
    store.close().await;

    // After a restart every acknowledged write is there.
    let reopened = Store::open(&path).await.unwrap();
    let mut ids = reopened.file_ids().await.unwrap();
    ids.sort();
    assert_eq!(ids, ["file-a", "file-b"]);
    for id in ["ftjob-1", "ftjob-3", "ftjob-4"] {
        assert!(reopened.get_job(id).await.unwrap().is_some(), "{id}");
    }
}

#[tokio::test]
async fn writes_fail_as_storage_full_while_capped_and_recover_when_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cap) = capped_store(&dir.path().join("temper.db")).await;
    cap.cap_at(page_count(&store).await);
    // Enough rows to need a new page, several times over.
    let mut failures = 0;
    for n in 0..200 {
        let mut row = file(&format!("file-{n}"), "fine-tune", n);
        row.filename = "f".repeat(500);
        match store.insert_file(&row).await {
            Ok(()) => {}
            Err(error) => {
                assert!(error.is_storage_full(), "{error:?}");
                failures += 1;
            }
        }
    }
    assert!(failures > 0, "the cap never filled the database");
    // Reads still work while full.
    let listed = store
        .list_files(None, None, 1000, crate::store::SortOrder::Asc)
        .await
        .unwrap();
    assert_eq!(listed.data.len(), 200 - failures);

    cap.lift();
    store
        .insert_file(&file("file-after", "fine-tune", 300))
        .await
        .unwrap();
    assert!(store.get_file("file-after").await.unwrap().is_some());
}

#[test]
fn only_full_disk_errors_count_as_storage_full() {
    let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
    assert!(StoreError::Database(sqlx::Error::Io(enospc)).is_storage_full());
    let eio = std::io::Error::from_raw_os_error(libc::EIO);
    assert!(!StoreError::Database(sqlx::Error::Io(eio)).is_storage_full());
    assert!(!StoreError::NotFound.is_storage_full());
    assert!(!StoreError::Conflict("file".into()).is_storage_full());
}
