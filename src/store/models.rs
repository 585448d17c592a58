//! Queries on `models`: every servable model (fine-tuned results and checkpoints), keyed by
//! its public name.

use sqlx::FromRow;

use super::{on_unique_violation, Store, StoreError};

#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct ModelRow {
    /// The model name: `ft:{base}:{org}:{suffix}:{id8}` or `…:ckpt-step-N`.
    pub id: String,
    pub created_at: i64,
    pub owned_by: String,
    /// The job that produced it.
    pub job_id: Option<String>,
    pub base_model: Option<String>,
    /// What it serves as: `classifier` or `causal_lm`.
    pub kind: String,
    /// Weights directory, relative to the data dir.
    pub artifact_dir: String,
    /// Training step of the weights.
    pub step: Option<i64>,
    pub is_checkpoint: bool,
    /// A LoRA adapter registered through `POST /v1/adapters` (a PEFT directory in
    /// `artifact_dir`, served over `base_model`), not produced by a job.
    pub registered_adapter: bool,
}

const MODEL_COLUMNS: &str = "id, created_at, owned_by, job_id, base_model, kind, artifact_dir, \
     step, is_checkpoint, registered_adapter";

pub(super) const INSERT_MODEL: &str = "INSERT INTO models (id, created_at, owned_by, job_id, \
     base_model, kind, artifact_dir, step, is_checkpoint, registered_adapter) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Binds a model to `INSERT_MODEL` (shared with the checkpoint transaction).
pub(super) fn bind_model<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    model: &'q ModelRow,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    query
        .bind(&model.id)
        .bind(model.created_at)
        .bind(&model.owned_by)
        .bind(&model.job_id)
        .bind(&model.base_model)
        .bind(&model.kind)
        .bind(&model.artifact_dir)
        .bind(model.step)
        .bind(model.is_checkpoint)
        .bind(model.registered_adapter)
}

impl Store {
    /// `Conflict` when a model with that name exists.
    pub async fn insert_model(&self, model: &ModelRow) -> Result<(), StoreError> {
        bind_model(sqlx::query(INSERT_MODEL), model)
            .execute(&self.pool)
            .await
            .map_err(|e| on_unique_violation(e, "model"))?;
        Ok(())
    }

    pub async fn get_model(&self, id: &str) -> Result<Option<ModelRow>, StoreError> {
        let sql = format!("SELECT {MODEL_COLUMNS} FROM models WHERE id = ?");
        Ok(sqlx::query_as::<_, ModelRow>(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// All models, oldest first.
    pub async fn list_models(&self) -> Result<Vec<ModelRow>, StoreError> {
        let sql = format!("SELECT {MODEL_COLUMNS} FROM models ORDER BY seq");
        Ok(sqlx::query_as::<_, ModelRow>(&sql)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Removes the row; false when it did not exist. Artifacts are the caller's to remove.
    pub async fn delete_model(&self, id: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM models WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// The models a job produced, oldest first.
    pub async fn models_of_job(&self, job_id: &str) -> Result<Vec<ModelRow>, StoreError> {
        let sql = format!("SELECT {MODEL_COLUMNS} FROM models WHERE job_id = ? ORDER BY seq");
        Ok(sqlx::query_as::<_, ModelRow>(&sql)
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?)
    }
}
