//! Store tests: each runs on a fresh SQLite database from `#[sqlx::test]` (created under the
//! target dir), migrated by `Store::from_pool` exactly as production opens it.
#![allow(clippy::unwrap_used)]

mod faults;
mod files;
mod jobs;
mod leased;
mod queue;
mod records;
mod webhooks;

use sqlx::SqlitePool;

use super::{EventRow, JobRow, Store};

pub(super) async fn store(pool: SqlitePool) -> Store {
    Store::from_pool(pool).await.expect("migrations apply")
}

/// A job named `id` in `validating_files` created at `now`, with its creation event.
pub(super) async fn create(store: &Store, id: &str, now: i64) -> JobRow {
    let job = JobRow::new(
        id.to_string(),
        "org/base".to_string(),
        "file-train".to_string(),
        42,
        now,
    );
    let event = EventRow::info(id, format!("Created fine-tuning job: {id}"), now);
    store.create_job(&job, &event).await.expect("create job");
    job
}

#[tokio::test]
async fn open_creates_a_wal_database_with_foreign_keys_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("temper.db");
    let store = Store::open(&path).await.expect("open");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(foreign_keys, 1);
    create(&store, "ftjob-1", 100).await;
    store.close().await;
    // Reopening applies no migration twice and keeps the data.
    let reopened = Store::open(&path).await.expect("reopen");
    assert_eq!(reopened.get_job("ftjob-1").await.unwrap().unwrap().seed, 42);
}

#[tokio::test]
async fn in_memory_store_is_migrated() {
    let store = Store::open_in_memory().await.expect("open");
    create(&store, "ftjob-1", 100).await;
    assert!(store.get_job("ftjob-1").await.unwrap().is_some());
}
