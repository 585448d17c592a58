//! Every write a worker makes to the job it runs, fenced by its lease: each one names the
//! [`Lease`] it holds and applies only while the row still has that `lease_owner` and a
//! status a worker may write in (`validating_files`, `queued`, `running`, `pausing`), checked
//! in the same statement (or first in the same transaction, which takes SQLite's write lock
//! before anything else is written). A worker whose lease lapsed and was re-claimed, or whose
//! job was cancelled, gets `false` back and writes nothing: it can never write into a job
//! another worker now runs, nor add training events after a cancel.
//!
//! Owners are per claim (the worker appends a fresh token to its name on every claim), so a
//! worker that re-claims a job it once lost is fenced from its own earlier run as well.

use serde_json::Value;

use super::checkpoints::{bind_checkpoint, INSERT_CHECKPOINT};
use super::events::{bind_event, INSERT_EVENT};
use super::files::{bind_file, INSERT_FILE};
use super::jobs::status_list;
use super::models::{bind_model, INSERT_MODEL};
use super::{on_unique_violation, CheckpointRow, EventRow, FileRow, ModelRow, Store, StoreError};
use crate::domain::job::JobStatus;
use crate::domain::job_spec::ResolvedHyperparameters;

/// A worker's claim on one job; every fenced write names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job_id: String,
    /// The `lease_owner` written by the claim (unique per claim).
    pub owner: String,
}

/// How a worker gives a job back (`release`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handback {
    /// Shutdown, pause, a full disk: the worker stopped on purpose after a checkpoint. The
    /// claim's attempt is given back: only lost leases and failed runs count towards
    /// `max_attempts`.
    Clean,
    /// A retryable failure: the attempt stays counted.
    Failed,
}

/// The fence: the lease still names this owner and the job is in a state a worker writes in.
const HELD: &str = "id = ?1 AND lease_owner = ?2 \
     AND status IN ('validating_files', 'queued', 'running', 'pausing')";

/// Takes the write lock and checks the fence inside a transaction (a no-op update, so the
/// check and the writes after it are one atomic step).
async fn check_fence(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    lease: &Lease,
) -> Result<bool, StoreError> {
    let held = sqlx::query(&format!(
        "UPDATE fine_tuning_jobs SET lease_owner = lease_owner WHERE {HELD}"
    ))
    .bind(&lease.job_id)
    .bind(&lease.owner)
    .execute(&mut **tx)
    .await?;
    Ok(held.rows_affected() > 0)
}

impl Store {
    /// Appends `event` if the lease holds (one `INSERT … SELECT … WHERE EXISTS`).
    pub async fn leased_event(&self, lease: &Lease, event: &EventRow) -> Result<bool, StoreError> {
        // INSERT_EVENT's seven values, selected only when the fence holds.
        let sql = format!(
            "INSERT INTO fine_tuning_events (id, job_id, created_at, level, message, type, data) \
             SELECT ?3, ?4, ?5, ?6, ?7, ?8, ?9 \
             WHERE EXISTS (SELECT 1 FROM fine_tuning_jobs WHERE {HELD})"
        );
        let result = sqlx::query(&sql)
            .bind(&lease.job_id)
            .bind(&lease.owner)
            .bind(&event.id)
            .bind(&event.job_id)
            .bind(event.created_at)
            .bind(&event.level)
            .bind(&event.message)
            .bind(&event.kind)
            .bind(event.data.as_ref().map(Value::to_string))
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Moves the job from one of `from` to `to` and appends `event`, in one transaction,
    /// if the lease holds. Sets `started_at` the first time the job enters `running`.
    pub async fn leased_transition(
        &self,
        lease: &Lease,
        from: &[JobStatus],
        to: JobStatus,
        event: Option<&EventRow>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE fine_tuning_jobs SET status = ?3, updated_at = ?4, \
               started_at = CASE WHEN ?3 = 'running' AND started_at IS NULL THEN ?4 \
                            ELSE started_at END \
             WHERE {HELD} AND status IN ({})",
            status_list(from)
        );
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(&sql)
            .bind(&lease.job_id)
            .bind(&lease.owner)
            .bind(to.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if moved.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(event) = event {
            bind_event(sqlx::query(INSERT_EVENT), event)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Sets `estimated_finish` and `trained_tokens` if the lease holds.
    pub async fn leased_progress(
        &self,
        lease: &Lease,
        estimated_finish: Option<i64>,
        trained_tokens: Option<i64>,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(&format!(
            "UPDATE fine_tuning_jobs SET estimated_finish = ?3, trained_tokens = ?4 WHERE {HELD}"
        ))
        .bind(&lease.job_id)
        .bind(&lease.owner)
        .bind(estimated_finish)
        .bind(trained_tokens)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Records the resolved hyperparameters and the task if the lease holds.
    pub async fn leased_hyperparameters(
        &self,
        lease: &Lease,
        resolved: &ResolvedHyperparameters,
        task: Option<&str>,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(&format!(
            "UPDATE fine_tuning_jobs SET resolved = ?3, task = ?4 WHERE {HELD}"
        ))
        .bind(&lease.job_id)
        .bind(&lease.owner)
        .bind(serde_json::to_string(resolved)?)
        .bind(task)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Inserts a checkpoint row and its servable model row (or just a model row, for the
    /// final model) in one transaction if the lease holds. `Conflict` when a row with that
    /// name exists (nothing is written then).
    pub async fn leased_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: Option<&CheckpointRow>,
        model: &ModelRow,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !check_fence(&mut tx, lease).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(checkpoint) = checkpoint {
            bind_checkpoint(sqlx::query(INSERT_CHECKPOINT), checkpoint)
                .execute(&mut *tx)
                .await
                .map_err(|e| on_unique_violation(e, "checkpoint"))?;
        }
        bind_model(sqlx::query(INSERT_MODEL), model)
            .execute(&mut *tx)
            .await
            .map_err(|e| on_unique_violation(e, "model"))?;
        tx.commit().await?;
        Ok(true)
    }

    /// Inserts a result file's row (purpose `fine-tune-results`) if the lease holds, so a
    /// worker whose lease lapsed leaves no file row beside the job another worker runs.
    pub async fn leased_file(&self, lease: &Lease, file: &FileRow) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !check_fence(&mut tx, lease).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        bind_file(sqlx::query(INSERT_FILE), file)
            .execute(&mut *tx)
            .await
            .map_err(|e| on_unique_violation(e, "file"))?;
        tx.commit().await?;
        Ok(true)
    }

    /// `running` → `succeeded` with the model name, token count and result files, plus the
    /// closing `events`, in one transaction if the lease holds; clears the lease.
    pub async fn finish_succeeded(
        &self,
        lease: &Lease,
        fine_tuned_model: &str,
        trained_tokens: i64,
        result_files: &[String],
        events: &[EventRow],
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE fine_tuning_jobs SET status = 'succeeded', fine_tuned_model = ?3, \
               trained_tokens = ?4, result_files = ?5, finished_at = ?6, updated_at = ?6, \
               estimated_finish = NULL, lease_owner = NULL, lease_expires_at = NULL \
             WHERE {HELD} AND status = 'running'"
        );
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(&sql)
            .bind(&lease.job_id)
            .bind(&lease.owner)
            .bind(fine_tuned_model)
            .bind(trained_tokens)
            .bind(serde_json::to_string(result_files)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        finish_with_events(tx, done.rows_affected() > 0, events).await
    }

    /// → `failed` with `error` (`{code, message, param}`) and `event`, in one transaction if
    /// the lease holds; clears the lease.
    pub async fn leased_fail(
        &self,
        lease: &Lease,
        error: &Value,
        event: &EventRow,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE fine_tuning_jobs SET status = 'failed', error = ?3, finished_at = ?4, \
               updated_at = ?4, estimated_finish = NULL, lease_owner = NULL, \
               lease_expires_at = NULL \
             WHERE {HELD}"
        );
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(&sql)
            .bind(&lease.job_id)
            .bind(&lease.owner)
            .bind(error.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        finish_with_events(tx, done.rows_affected() > 0, std::slice::from_ref(event)).await
    }

    /// Gives the job back: clears the lease, moves the status to `to` and appends `event`,
    /// in one transaction if the lease holds. `to = Paused` applies from `pausing` (pause
    /// completed) or `running` (stopped by a full disk), `to = Queued` from `running` or
    /// `queued`, `to = ValidatingFiles` from itself. A [`Handback::Clean`] takes back the
    /// attempt the claim counted.
    pub async fn release(
        &self,
        lease: &Lease,
        to: JobStatus,
        handback: Handback,
        event: Option<&EventRow>,
    ) -> Result<bool, StoreError> {
        let from: &[JobStatus] = match to {
            JobStatus::Paused => &[JobStatus::Pausing, JobStatus::Running],
            JobStatus::Queued => &[JobStatus::Running, JobStatus::Queued],
            JobStatus::ValidatingFiles => &[JobStatus::ValidatingFiles],
            _ => &[],
        };
        let sql = format!(
            "UPDATE fine_tuning_jobs SET status = ?3, estimated_finish = NULL, \
               lease_owner = NULL, lease_expires_at = NULL, \
               attempts = CASE WHEN ?4 AND attempts > 0 THEN attempts - 1 ELSE attempts END \
             WHERE {HELD} AND status IN ({})",
            status_list(from)
        );
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(&sql)
            .bind(&lease.job_id)
            .bind(&lease.owner)
            .bind(to.as_str())
            .bind(handback == Handback::Clean)
            .execute(&mut *tx)
            .await?;
        let events = event.map(std::slice::from_ref).unwrap_or_default();
        finish_with_events(tx, done.rows_affected() > 0, events).await
    }
}

/// Commits `events` with the update before them when it applied; rolls back otherwise.
async fn finish_with_events(
    mut tx: sqlx::Transaction<'_, sqlx::Sqlite>,
    applied: bool,
    events: &[EventRow],
) -> Result<bool, StoreError> {
    if !applied {
        tx.rollback().await?;
        return Ok(false);
    }
    for event in events {
        bind_event(sqlx::query(INSERT_EVENT), event)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}
