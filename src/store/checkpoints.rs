//! Queries on `fine_tuning_checkpoints`: one row per saved training checkpoint, listed
//! newest first.

use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, Row};

use super::{json_column, on_unique_violation, Page, Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointRow {
    /// `ftckpt_…`
    pub id: String,
    pub job_id: String,
    pub created_at: i64,
    pub step_number: i64,
    /// The servable model name, `…:ckpt-step-N`.
    pub fine_tuned_model_checkpoint: String,
    /// `{step, train_loss, …}` as OpenAI reports them.
    pub metrics: Value,
    /// Checkpoint directory, relative to the data dir.
    pub artifact_dir: String,
}

impl FromRow<'_, SqliteRow> for CheckpointRow {
    fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(CheckpointRow {
            id: row.try_get("id")?,
            job_id: row.try_get("job_id")?,
            created_at: row.try_get("created_at")?,
            step_number: row.try_get("step_number")?,
            fine_tuned_model_checkpoint: row.try_get("fine_tuned_model_checkpoint")?,
            metrics: json_column(row, "metrics")?,
            artifact_dir: row.try_get("artifact_dir")?,
        })
    }
}

const CHECKPOINT_COLUMNS: &str =
    "id, job_id, created_at, step_number, fine_tuned_model_checkpoint, metrics, artifact_dir";

pub(super) const INSERT_CHECKPOINT: &str =
    "INSERT INTO fine_tuning_checkpoints (id, job_id, created_at, \
     step_number, fine_tuned_model_checkpoint, metrics, artifact_dir) \
     VALUES (?, ?, ?, ?, ?, ?, ?)";

pub(super) fn bind_checkpoint<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    checkpoint: &'q CheckpointRow,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    query
        .bind(&checkpoint.id)
        .bind(&checkpoint.job_id)
        .bind(checkpoint.created_at)
        .bind(checkpoint.step_number)
        .bind(&checkpoint.fine_tuned_model_checkpoint)
        .bind(checkpoint.metrics.to_string())
        .bind(&checkpoint.artifact_dir)
}

impl Store {
    /// `Conflict` when the checkpoint name (or id) exists.
    pub async fn insert_checkpoint(&self, checkpoint: &CheckpointRow) -> Result<(), StoreError> {
        bind_checkpoint(sqlx::query(INSERT_CHECKPOINT), checkpoint)
            .execute(&self.pool)
            .await
            .map_err(|e| on_unique_violation(e, "checkpoint"))?;
        Ok(())
    }

    /// A job's checkpoints, newest first, after the checkpoint with id `after`, at most
    /// `limit`.
    pub async fn list_checkpoints(
        &self,
        job_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Page<CheckpointRow>, StoreError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM fine_tuning_checkpoints \
             WHERE job_id = ?1 \
               AND (?2 IS NULL OR seq < (SELECT seq FROM fine_tuning_checkpoints WHERE id = ?2)) \
             ORDER BY seq DESC LIMIT ?3"
        );
        let rows = sqlx::query_as::<_, CheckpointRow>(&sql)
            .bind(job_id)
            .bind(after)
            .bind(limit.saturating_add(1))
            .fetch_all(&self.pool)
            .await?;
        Ok(Page::from_rows(rows, limit))
    }

    /// The newest checkpoint of `job_id` at `step_number`, if any.
    pub async fn get_checkpoint_by_step(
        &self,
        job_id: &str,
        step_number: i64,
    ) -> Result<Option<CheckpointRow>, StoreError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM fine_tuning_checkpoints \
             WHERE job_id = ? AND step_number = ? ORDER BY seq DESC LIMIT 1"
        );
        Ok(sqlx::query_as::<_, CheckpointRow>(&sql)
            .bind(job_id)
            .bind(step_number)
            .fetch_optional(&self.pool)
            .await?)
    }
}
