//! Queries on the `files` table (uploads and result files).

use sqlx::FromRow;

use super::{on_unique_violation, Page, Store, StoreError};

#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct FileRow {
    /// `file-…`
    pub id: String,
    pub bytes: i64,
    pub created_at: i64,
    pub filename: String,
    /// OpenAI purpose: `fine-tune`, `fine-tune-results`, …
    pub purpose: String,
    /// `uploaded`, `processed` or `error`.
    pub status: String,
    /// Validation error text when `status` is `error`.
    pub status_details: Option<String>,
    /// Detected data format (e.g. `classification`, `chat`), set after validation.
    pub format: Option<String>,
    /// Number of examples found by validation.
    pub n_examples: Option<i64>,
}

/// List order by creation (insertion) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    Asc,
    #[default]
    Desc,
}

const FILE_COLUMNS: &str =
    "id, bytes, created_at, filename, purpose, status, status_details, format, n_examples";

pub(super) const INSERT_FILE: &str =
    "INSERT INTO files (id, bytes, created_at, filename, purpose, status, \
     status_details, format, n_examples) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Binds `file` to [`INSERT_FILE`]'s nine values, in order.
pub(super) fn bind_file<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    file: &'q FileRow,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    query
        .bind(&file.id)
        .bind(file.bytes)
        .bind(file.created_at)
        .bind(&file.filename)
        .bind(&file.purpose)
        .bind(&file.status)
        .bind(&file.status_details)
        .bind(&file.format)
        .bind(file.n_examples)
}

impl Store {
    /// Inserts a file row; `Conflict` when the id exists.
    pub async fn insert_file(&self, file: &FileRow) -> Result<(), StoreError> {
        bind_file(sqlx::query(INSERT_FILE), file)
            .execute(&self.pool)
            .await
            .map_err(|e| on_unique_violation(e, "file"))?;
        Ok(())
    }

    pub async fn get_file(&self, id: &str) -> Result<Option<FileRow>, StoreError> {
        let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ?");
        Ok(sqlx::query_as::<_, FileRow>(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Lists files, optionally of one `purpose`, in `order`, starting after the file with id
    /// `after` (exclusive; an unknown `after` gives an empty page), at most `limit` rows.
    pub async fn list_files(
        &self,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: i64,
        order: SortOrder,
    ) -> Result<Page<FileRow>, StoreError> {
        let (compare, direction) = match order {
            SortOrder::Asc => (">", "ASC"),
            SortOrder::Desc => ("<", "DESC"),
        };
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files \
             WHERE (?1 IS NULL OR purpose = ?1) \
               AND (?2 IS NULL OR seq {compare} (SELECT seq FROM files WHERE id = ?2)) \
             ORDER BY seq {direction} LIMIT ?3"
        );
        let rows = sqlx::query_as::<_, FileRow>(&sql)
            .bind(purpose)
            .bind(after)
            .bind(limit.saturating_add(1))
            .fetch_all(&self.pool)
            .await?;
        Ok(Page::from_rows(rows, limit))
    }

    /// Records the validation result of an upload. `NotFound` when the file is gone.
    pub async fn update_file_status(
        &self,
        id: &str,
        status: &str,
        status_details: Option<&str>,
        format: Option<&str>,
        n_examples: Option<i64>,
    ) -> Result<(), StoreError> {
        let result = sqlx::query(
            "UPDATE files SET status = ?, status_details = ?, format = ?, n_examples = ? \
             WHERE id = ?",
        )
        .bind(status)
        .bind(status_details)
        .bind(format)
        .bind(n_examples)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Deletes the row; false when it did not exist. The blob is the caller's to remove.
    pub async fn delete_file(&self, id: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM files WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Every file id, for the start-up sweep of blobs that have no row.
    pub async fn file_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM files")
            .fetch_all(&self.pool)
            .await?)
    }

    /// True when an unfinished job (any non-terminal status) uses the file for training or
    /// validation, so deleting it would break the job.
    pub async fn file_in_use(&self, id: &str) -> Result<bool, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM fine_tuning_jobs \
             WHERE (training_file = ?1 OR validation_file = ?1) \
               AND status NOT IN ('succeeded', 'failed', 'cancelled')",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(count > 0)
    }
}
