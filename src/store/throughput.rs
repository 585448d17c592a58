//! The speed finished jobs measured (`job_throughput`, `migrations/0005_job_throughput.sql`):
//! written when a job succeeds in one session, read by estimates of later jobs.

use sqlx::FromRow;

use super::{Store, StoreError};

/// One finished run's measurement.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct ThroughputRow {
    pub job_id: String,
    /// The job's `model` as asked (a base model id or `ft:…`).
    pub model: String,
    /// `Task::stored_name`.
    pub task: String,
    /// The worker's device: `cpu`, `cuda:0`.
    pub device: String,
    /// From the claim to the trained model.
    pub seconds: f64,
    /// Of those, the run's setup (files, tokenizing, loading, the first evaluation): what
    /// does not grow with the data the way training does.
    pub setup_seconds: f64,
    pub tokens: i64,
    pub samples: i64,
    pub finished_at: i64,
}

/// How many of the latest runs an estimate averages over.
pub const THROUGHPUT_HISTORY: i64 = 5;

impl Store {
    /// Records (or replaces) a job's measurement.
    pub async fn record_throughput(&self, row: &ThroughputRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO job_throughput \
             (job_id, model, task, device, seconds, setup_seconds, tokens, samples, finished_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&row.job_id)
        .bind(&row.model)
        .bind(&row.task)
        .bind(&row.device)
        .bind(row.seconds)
        .bind(row.setup_seconds)
        .bind(row.tokens)
        .bind(row.samples)
        .bind(row.finished_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The latest [`THROUGHPUT_HISTORY`] runs of `model` for `task` on `device`, newest
    /// first.
    pub async fn recent_throughput(
        &self,
        model: &str,
        task: &str,
        device: &str,
    ) -> Result<Vec<ThroughputRow>, StoreError> {
        Ok(sqlx::query_as::<_, ThroughputRow>(
            "SELECT job_id, model, task, device, seconds, setup_seconds, tokens, samples, \
             finished_at \
             FROM job_throughput WHERE model = ? AND task = ? AND device = ? \
             ORDER BY finished_at DESC, job_id DESC LIMIT ?",
        )
        .bind(model)
        .bind(task)
        .bind(device)
        .bind(THROUGHPUT_HISTORY)
        .fetch_all(self.pool())
        .await?)
    }
}
