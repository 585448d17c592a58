//! The only module with SQL. `Store` wraps an `SqlitePool`; each file groups the queries of
//! one table (`jobs` and `queue` share the job table: rows and their lifecycle vs the
//! leased-row queue; `leased` the worker's writes fenced by its lease). State changes are compare-and-set: an `UPDATE … WHERE status IN (…)`
//! that reports whether a row changed, so concurrent cancel/finish races settle in the
//! database. Timestamps are unix seconds chosen by the caller (`now`), which keeps tests
//! deterministic.
//!
//! SQL is kept portable to PostgreSQL (no SQLite-only functions, JSON stored as TEXT and
//! parsed here), so a multi-node deployment can swap the pool later.

mod checkpoints;
mod events;
mod files;
mod jobs;
mod leased;
mod models;
mod queue;
mod sessions;
mod throughput;
mod webhooks;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

pub use checkpoints::CheckpointRow;
pub use events::EventRow;
pub use files::{FileRow, SortOrder};
pub use jobs::JobRow;
pub use leased::{Handback, Lease};
pub use models::ModelRow;
pub use queue::{ControlAction, ControlOutcome, WORKER_LOST_CODE};
pub use sessions::PageCap;
pub use throughput::{ThroughputRow, THROUGHPUT_HISTORY};
#[cfg(test)]
pub use webhooks::DeliveryCounts;
pub use webhooks::DueDelivery;

/// Connections of a file database's pool.
const MAX_CONNECTIONS: u32 = 8;
/// How long a connection waits on SQLite's single writer lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A uniqueness constraint rejected the write (e.g. a model name that already exists).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid JSON column: {0}")]
    Json(#[from] serde_json::Error),
}

impl StoreError {
    /// True when the write failed because the disk (or the database's page cap) is full:
    /// SQLite's `SQLITE_FULL` (which its unix VFS returns for `ENOSPC`), or an I/O error
    /// of kind `StorageFull`.
    pub fn is_storage_full(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                // Extended result codes keep the primary code in their low byte.
                db.code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| code & 0xff == SQLITE_FULL)
            }
            StoreError::Database(sqlx::Error::Io(io)) => crate::blobs::is_storage_full(io),
            _ => false,
        }
    }
}

/// SQLite's primary result code for "database or disk is full".
const SQLITE_FULL: i32 = 13;

/// One page of a cursor list. `has_more` is true when rows exist past the last one returned
/// (the store fetches `limit + 1` to know), matching OpenAI's list envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows.
    fn from_rows(mut rows: Vec<T>, limit: i64) -> Page<T> {
        let limit = usize::try_from(limit.max(0)).unwrap_or(usize::MAX);
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        Page {
            data: rows,
            has_more,
        }
    }
}

/// Handle to the metadata database. Cheap to clone (the pool is reference counted).
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` in WAL mode with foreign keys
    /// on, and applies pending migrations. Commits are fsynced (`synchronous = FULL`), so a
    /// write that returned is durable, and no connection goes back to the pool while inside
    /// a transaction (see `sessions`).
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_page_cap(path, PageCap::default(), MAX_CONNECTIONS).await
    }

    /// `open` with at most `max_connections`, and the database capped at `cap`'s page count
    /// on every connection: a fault injection seam that makes writes fail with a real
    /// `SQLITE_FULL`, as on a full disk (one connection makes the pool's reuse of a
    /// connection deterministic).
    pub async fn open_with_page_cap(
        path: &Path,
        cap: PageCap,
        max_connections: u32,
    ) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = sessions::pool_options(max_connections, cap)
            .connect_with(options)
            .await?;
        Store::from_pool(pool).await
    }

    /// A private in-memory database (one connection, so every query sees the same data; it
    /// is never closed on release, which would drop the data, so it is for tests only).
    pub async fn open_in_memory() -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        Store::from_pool(pool).await
    }

    /// Wraps an existing pool (e.g. the one `#[sqlx::test]` provides), applying migrations.
    pub async fn from_pool(pool: SqlitePool) -> Result<Store, StoreError> {
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Whether the database answers a query (`/health`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection (after shutdown, so the WAL is checkpointed).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Reads a TEXT column holding JSON.
fn json_column(row: &SqliteRow, column: &str) -> Result<Value, sqlx::Error> {
    let text: String = row.try_get(column)?;
    parse_json(column, &text)
}

/// Reads a nullable TEXT column holding JSON.
fn optional_json_column(row: &SqliteRow, column: &str) -> Result<Option<Value>, sqlx::Error> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| parse_json(column, &text)).transpose()
}

fn parse_json(column: &str, text: &str) -> Result<Value, sqlx::Error> {
    serde_json::from_str(text).map_err(|source| sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: Box::new(source),
    })
}

/// Maps a unique-constraint violation to `Conflict`, leaving other errors as they are.
fn on_unique_violation(error: sqlx::Error, what: &str) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        if db.is_unique_violation() {
            return StoreError::Conflict(format!("{what} already exists"));
        }
    }
    StoreError::Database(error)
}

#[cfg(test)]
mod tests;
