//! The pool's connection hygiene, shared by every query in `store`.
//!
//! Why a connection must never go back to the pool inside a transaction: when a statement
//! inside `BEGIN … COMMIT` fails with `SQLITE_FULL` (or `SQLITE_IOERR`), SQLite rolls the
//! whole transaction back by itself. sqlx does not see that: its transaction depth stays at
//! 1, the `ROLLBACK` it sends when the `Transaction` drops fails ("no transaction is
//! active"), and the depth stays stuck. The next `begin()` on that connection then opens a
//! `SAVEPOINT` instead of a `BEGIN`, and the first error inside it ends in `ROLLBACK TO
//! SAVEPOINT`, which leaves SQLite inside a write transaction that nothing will ever
//! commit. From then on every other connection waits out its busy timeout ("database is
//! locked"), and every autocommit write that lands on the poisoned connection (an upload's
//! row) is acknowledged and silently lost at restart.
//!
//! `after_release` closes such a connection instead of pooling it: after a `ping` (which
//! flushes the rollback a dropped `Transaction` queued), any connection sqlx still counts
//! as inside a transaction is dropped, and closing it makes SQLite roll back whatever it
//! held. This covers every `pool.begin()` call site, present and future, with no change to
//! them; the pool opens a fresh connection on demand.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Connection, Executor, SqliteConnection};

/// SQLite's own page limit (`SQLITE_MAX_PAGE_COUNT` since 3.45): no cap.
const UNCAPPED_PAGES: u32 = 0xffff_fffe;

/// Fault injection for the store: a page count every pooled connection applies as
/// `PRAGMA max_page_count` before it is used, so writes that would grow the database past
/// it fail with a real `SQLITE_FULL`, the error SQLite gives on a full disk. `lift` puts
/// the limit back to SQLite's default (space is back). Cheap to clone; clones share the
/// cap.
#[derive(Debug, Clone, Default)]
pub struct PageCap {
    /// 0: no cap, and no pragma is issued at all.
    pages: Arc<AtomicU32>,
    /// Whether a cap was ever set, so the pragma is also issued to lift it.
    used: Arc<AtomicBool>,
}

impl PageCap {
    /// Caps the database at `pages` pages (SQLite never shrinks below the current size, so
    /// a cap at or under it makes every growing write fail).
    pub fn cap_at(&self, pages: u32) {
        self.used.store(true, Ordering::SeqCst);
        self.pages.store(pages.max(1), Ordering::SeqCst);
    }

    /// Removes the cap.
    pub fn lift(&self) {
        self.pages.store(0, Ordering::SeqCst);
    }

    /// The pragma value to apply, or `None` when the cap was never used.
    fn pragma_value(&self) -> Option<u32> {
        if !self.used.load(Ordering::SeqCst) {
            return None;
        }
        match self.pages.load(Ordering::SeqCst) {
            0 => Some(UNCAPPED_PAGES),
            pages => Some(pages),
        }
    }
}

/// Pool options for a file database: at most `max_connections`, `cap` applied to every
/// connection handed out, and connections left inside a transaction closed on release.
pub(super) fn pool_options(max_connections: u32, cap: PageCap) -> SqlitePoolOptions {
    let on_connect = cap.clone();
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        .after_connect(move |conn, _meta| {
            let cap = on_connect.clone();
            Box::pin(async move { apply_cap(conn, &cap).await })
        })
        .before_acquire(move |conn, _meta| {
            let cap = cap.clone();
            Box::pin(async move {
                apply_cap(conn, &cap).await?;
                Ok(true)
            })
        })
        .after_release(|conn, _meta| Box::pin(async move { fit_for_reuse(conn).await }))
}

async fn apply_cap(conn: &mut SqliteConnection, cap: &PageCap) -> Result<(), sqlx::Error> {
    if let Some(pages) = cap.pragma_value() {
        conn.execute(format!("PRAGMA max_page_count = {pages}").as_str())
            .await?;
    }
    Ok(())
}

/// False (close it) when the connection is still inside a transaction once every queued
/// command, including a dropped `Transaction`'s rollback, has run.
async fn fit_for_reuse(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!(
            "closing a database connection left inside a transaction after an error \
             (SQLite had rolled it back by itself); the pool opens a fresh one"
        );
        return Ok(false);
    }
    Ok(true)
}
