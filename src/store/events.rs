//! Queries on `fine_tuning_events`: the job's log, listed newest first.

use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, Row};

use super::{optional_json_column, Page, Store, StoreError};
use crate::domain::ids::new_event_id;

#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// `ftevent-…`
    pub id: String,
    pub job_id: String,
    pub created_at: i64,
    /// `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
    /// OpenAI's `type`: `message` or `metrics`.
    pub kind: String,
    /// Metrics dict, error dict or nothing.
    pub data: Option<Value>,
}

impl EventRow {
    /// An `info` text event with a fresh id.
    pub fn info(job_id: &str, message: impl Into<String>, now: i64) -> EventRow {
        EventRow::message(job_id, "info", message, now)
    }

    /// A text event (`type` = `message`) at `level` with a fresh id.
    pub fn message(job_id: &str, level: &str, message: impl Into<String>, now: i64) -> EventRow {
        EventRow {
            id: new_event_id(),
            job_id: job_id.to_string(),
            created_at: now,
            level: level.to_string(),
            message: message.into(),
            kind: "message".to_string(),
            data: None,
        }
    }

    /// An `info` event of type `metrics` carrying `data`.
    pub fn metrics(job_id: &str, message: impl Into<String>, data: Value, now: i64) -> EventRow {
        EventRow {
            kind: "metrics".to_string(),
            data: Some(data),
            ..EventRow::info(job_id, message, now)
        }
    }
}

impl FromRow<'_, SqliteRow> for EventRow {
    fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(EventRow {
            id: row.try_get("id")?,
            job_id: row.try_get("job_id")?,
            created_at: row.try_get("created_at")?,
            level: row.try_get("level")?,
            message: row.try_get("message")?,
            kind: row.try_get("type")?,
            data: optional_json_column(row, "data")?,
        })
    }
}

pub(super) const INSERT_EVENT: &str = "INSERT INTO fine_tuning_events \
     (id, job_id, created_at, level, message, type, data) VALUES (?, ?, ?, ?, ?, ?, ?)";

/// Binds an event to `INSERT_EVENT` (shared with transactions in other files).
pub(super) fn bind_event<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    event: &'q EventRow,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    query
        .bind(&event.id)
        .bind(&event.job_id)
        .bind(event.created_at)
        .bind(&event.level)
        .bind(&event.message)
        .bind(&event.kind)
        .bind(event.data.as_ref().map(Value::to_string))
}

impl Store {
    /// Appends an event; `Database` (foreign key) error when the job does not exist.
    pub async fn insert_event(&self, event: &EventRow) -> Result<(), StoreError> {
        bind_event(sqlx::query(INSERT_EVENT), event)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A job's events, newest first, starting after the event with id `after` (the SDK sends
    /// the last id of the previous page), at most `limit`.
    pub async fn list_events(
        &self,
        job_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Page<EventRow>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT id, job_id, created_at, level, message, type, data \
             FROM fine_tuning_events \
             WHERE job_id = ?1 \
               AND (?2 IS NULL OR seq < (SELECT seq FROM fine_tuning_events WHERE id = ?2)) \
             ORDER BY seq DESC LIMIT ?3",
        )
        .bind(job_id)
        .bind(after)
        .bind(limit.saturating_add(1))
        .fetch_all(&self.pool)
        .await?;
        Ok(Page::from_rows(rows, limit))
    }

    /// Every `metrics` event of a job, oldest first (in the order they were written): the
    /// durable record of its training curves, read whole by the dashboard and the TensorBoard
    /// download (a long job has thousands, which is why this is not the paged OpenAI list).
    pub async fn metric_events(&self, job_id: &str) -> Result<Vec<EventRow>, StoreError> {
        Ok(sqlx::query_as::<_, EventRow>(
            "SELECT id, job_id, created_at, level, message, type, data \
             FROM fine_tuning_events WHERE job_id = ?1 AND type = 'metrics' ORDER BY seq",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A job's newest `metrics` event (its progress), if it has one.
    pub async fn last_metric_event(&self, job_id: &str) -> Result<Option<EventRow>, StoreError> {
        Ok(sqlx::query_as::<_, EventRow>(
            "SELECT id, job_id, created_at, level, message, type, data \
             FROM fine_tuning_events WHERE job_id = ?1 AND type = 'metrics' \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?)
    }
}
