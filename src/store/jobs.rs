//! Queries on `fine_tuning_jobs`: creating, reading and listing jobs, compare-and-set
//! status transitions and the values the worker fills in. The lease-based queue lives in
//! `queue.rs`.

use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, Row};

use super::events::{bind_event, INSERT_EVENT};
use super::{
    json_column, on_unique_violation, optional_json_column, EventRow, Page, Store, StoreError,
};
use crate::domain::job::JobStatus;
use crate::domain::job_spec::{JobSpec, ResolvedHyperparameters};

#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// `ftjob-…`
    pub id: String,
    pub created_at: i64,
    /// Base model id.
    pub model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub suffix: Option<String>,
    pub seed: i64,
    /// `map<string,string>` as sent, or None.
    pub metadata: Option<Value>,
    /// The method and hyperparameters as requested, typed (written once, at creation).
    pub spec: JobSpec,
    /// What every `"auto"` became, once the worker resolved them.
    pub resolved: Option<ResolvedHyperparameters>,
    pub status: JobStatus,
    /// `{code, message, param}` when failed.
    pub error: Option<Value>,
    pub fine_tuned_model: Option<String>,
    pub finished_at: Option<i64>,
    /// First time the job entered `running`.
    pub started_at: Option<i64>,
    pub estimated_finish: Option<i64>,
    pub trained_tokens: Option<i64>,
    /// Result file ids (stored as a JSON array).
    pub result_files: Vec<String>,
    /// What the data asks for (e.g. `classification`), set by the worker.
    pub task: Option<String>,
    /// Worker holding the job; meaningful while `lease_expires_at` is in the future.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    /// Number of claims so far.
    pub attempts: i64,
    pub updated_at: i64,
}

impl JobRow {
    /// A fresh job in `validating_files`, as the API creates it.
    pub fn new(id: String, model: String, training_file: String, seed: i64, now: i64) -> JobRow {
        JobRow {
            id,
            created_at: now,
            model,
            training_file,
            validation_file: None,
            suffix: None,
            seed,
            metadata: None,
            spec: JobSpec::default(),
            resolved: None,
            status: JobStatus::ValidatingFiles,
            error: None,
            fine_tuned_model: None,
            finished_at: None,
            started_at: None,
            estimated_finish: None,
            trained_tokens: None,
            result_files: Vec::new(),
            task: None,
            lease_owner: None,
            lease_expires_at: None,
            attempts: 0,
            updated_at: now,
        }
    }
}

/// Decodes a status column written by this module.
pub(super) fn status_column(row: &SqliteRow, column: &str) -> Result<JobStatus, sqlx::Error> {
    let text: String = row.try_get(column)?;
    JobStatus::parse(&text).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: format!("unknown job status `{text}`").into(),
    })
}

/// A nullable TEXT column holding the JSON of a `T`.
fn typed_column<T: DeserializeOwned>(
    row: &SqliteRow,
    column: &str,
) -> Result<Option<T>, sqlx::Error> {
    let decode = |source: Box<dyn std::error::Error + Send + Sync>| sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source,
    };
    optional_json_column(row, column)?
        .map(|json| serde_json::from_value(json).map_err(|e| decode(Box::new(e))))
        .transpose()
}

/// The row's spec; a row made before specs were stored has it parsed from its `method`
/// echo (and legacy `hyperparameters`) columns, as the worker then read them.
fn spec_column(row: &SqliteRow) -> Result<JobSpec, sqlx::Error> {
    if let Some(spec) = typed_column(row, "spec")? {
        return Ok(spec);
    }
    let method = json_column(row, "method")?;
    let hyperparameters = json_column(row, "hyperparameters")?;
    JobSpec::from_legacy_echo(&method, &hyperparameters).map_err(|e| sqlx::Error::ColumnDecode {
        index: "method".to_string(),
        source: Box::new(e),
    })
}

impl FromRow<'_, SqliteRow> for JobRow {
    fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        let result_files: Vec<String> = serde_json::from_value(json_column(row, "result_files")?)
            .map_err(|source| sqlx::Error::ColumnDecode {
            index: "result_files".to_string(),
            source: Box::new(source),
        })?;
        Ok(JobRow {
            id: row.try_get("id")?,
            created_at: row.try_get("created_at")?,
            model: row.try_get("model")?,
            training_file: row.try_get("training_file")?,
            validation_file: row.try_get("validation_file")?,
            suffix: row.try_get("suffix")?,
            seed: row.try_get("seed")?,
            metadata: optional_json_column(row, "metadata")?,
            spec: spec_column(row)?,
            resolved: typed_column(row, "resolved")?,
            status: status_column(row, "status")?,
            error: optional_json_column(row, "error")?,
            fine_tuned_model: row.try_get("fine_tuned_model")?,
            finished_at: row.try_get("finished_at")?,
            started_at: row.try_get("started_at")?,
            estimated_finish: row.try_get("estimated_finish")?,
            trained_tokens: row.try_get("trained_tokens")?,
            result_files,
            task: row.try_get("task")?,
            lease_owner: row.try_get("lease_owner")?,
            lease_expires_at: row.try_get("lease_expires_at")?,
            attempts: row.try_get("attempts")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// Every column of `JobRow`, for `SELECT` and `RETURNING` (never `*`: the table also has
/// `seq`, which is internal). `method` and `hyperparameters` are read only for rows made
/// before `spec` existed.
pub(super) const JOB_COLUMNS: &str = "id, created_at, model, training_file, validation_file, \
     suffix, seed, metadata, spec, resolved, method, hyperparameters, status, error, \
     fine_tuned_model, finished_at, started_at, estimated_finish, trained_tokens, \
     result_files, task, lease_owner, lease_expires_at, attempts, updated_at";

/// `status IN (…)` for a fixed set of states (values come from `JobStatus::as_str`, never
/// from users, so formatting them into SQL is safe).
pub(super) fn status_list(states: &[JobStatus]) -> String {
    let quoted: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
    if quoted.is_empty() {
        "''".to_string()
    } else {
        quoted.join(", ")
    }
}

impl Store {
    /// Inserts the job, its metadata pairs and its first event in one transaction
    /// ("transactional enqueue"): either all exist or none does.
    pub async fn create_job(&self, job: &JobRow, first_event: &EventRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO fine_tuning_jobs (id, created_at, model, training_file, \
             validation_file, suffix, seed, metadata, spec, resolved, method, hyperparameters, \
             status, error, fine_tuned_model, finished_at, started_at, estimated_finish, \
             trained_tokens, result_files, task, lease_owner, lease_expires_at, attempts, \
             updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'null', 'null', ?, ?, ?, ?, ?, ?, ?, ?, ?, \
             ?, ?, ?, ?)",
        )
        .bind(&job.id)
        .bind(job.created_at)
        .bind(&job.model)
        .bind(&job.training_file)
        .bind(&job.validation_file)
        .bind(&job.suffix)
        .bind(job.seed)
        .bind(job.metadata.as_ref().map(Value::to_string))
        .bind(serde_json::to_string(&job.spec)?)
        .bind(
            job.resolved
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
        )
        .bind(job.status.as_str())
        .bind(job.error.as_ref().map(Value::to_string))
        .bind(&job.fine_tuned_model)
        .bind(job.finished_at)
        .bind(job.started_at)
        .bind(job.estimated_finish)
        .bind(job.trained_tokens)
        .bind(serde_json::to_string(&job.result_files)?)
        .bind(&job.task)
        .bind(&job.lease_owner)
        .bind(job.lease_expires_at)
        .bind(job.attempts)
        .bind(job.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| on_unique_violation(e, "job"))?;
        if let Some(Value::Object(pairs)) = &job.metadata {
            for (key, value) in pairs {
                // Only string values can match a `metadata[k]=v` filter.
                let Some(value) = value.as_str() else {
                    continue;
                };
                sqlx::query(
                    "INSERT INTO fine_tuning_job_metadata (job_id, key, value) VALUES (?, ?, ?)",
                )
                .bind(&job.id)
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
            }
        }
        bind_event(sqlx::query(INSERT_EVENT), first_event)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_job(&self, id: &str) -> Result<Option<JobRow>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM fine_tuning_jobs WHERE id = ?");
        Ok(sqlx::query_as::<_, JobRow>(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Jobs newest first, after the job with id `after` (exclusive), at most `limit`,
    /// optionally only those whose metadata has `key` = `value`.
    pub async fn list_jobs(
        &self,
        after: Option<&str>,
        limit: i64,
        metadata: Option<(&str, &str)>,
    ) -> Result<Page<JobRow>, StoreError> {
        let (key, value) = metadata.unzip();
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM fine_tuning_jobs j \
             WHERE (?1 IS NULL OR seq < (SELECT seq FROM fine_tuning_jobs WHERE id = ?1)) \
               AND (?2 IS NULL OR EXISTS (SELECT 1 FROM fine_tuning_job_metadata m \
                    WHERE m.job_id = j.id AND m.key = ?2 AND m.value = ?3)) \
             ORDER BY seq DESC LIMIT ?4"
        );
        let rows = sqlx::query_as::<_, JobRow>(&sql)
            .bind(after)
            .bind(key)
            .bind(value)
            .bind(limit.saturating_add(1))
            .fetch_all(&self.pool)
            .await?;
        Ok(Page::from_rows(rows, limit))
    }

    /// Compare-and-set: moves the job to `to` only if its status is one of `from`; returns
    /// whether it moved. Sets `finished_at` when `to` is terminal, `started_at` the first
    /// time it enters `running`, and clears the lease when the job leaves `paused` (resume),
    /// so any worker can claim it at once. The lease is otherwise kept: a cancelled job's
    /// worker learns of the cancel through `heartbeat`.
    pub async fn transition(
        &self,
        id: &str,
        from: &[JobStatus],
        to: JobStatus,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE fine_tuning_jobs SET status = ?1, updated_at = ?2, \
               finished_at = CASE WHEN ?3 THEN ?2 ELSE finished_at END, \
               estimated_finish = CASE WHEN ?3 THEN NULL ELSE estimated_finish END, \
               started_at = CASE WHEN ?1 = 'running' AND started_at IS NULL THEN ?2 \
                            ELSE started_at END, \
               lease_owner = CASE WHEN status = 'paused' THEN NULL ELSE lease_owner END, \
               lease_expires_at = CASE WHEN status = 'paused' THEN NULL \
                                  ELSE lease_expires_at END \
             WHERE id = ?4 AND status IN ({})",
            status_list(from)
        );
        let result = sqlx::query(&sql)
            .bind(to.as_str())
            .bind(now)
            .bind(to.is_terminal())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }
}
