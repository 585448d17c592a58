//! The job table as a durable queue: leased rows (claim, heartbeat, requeue of orphans),
//! the user's cancel/pause/resume requests and an unfenced `finish_failed`. What a worker
//! writes while it holds a lease (release, finish, events, progress) is in `leased.rs`. Every state
//! change is a compare-and-set so races settle in the database: a `finish_succeeded` after
//! a cancel changes nothing and returns false.

use serde_json::{json, Value};

use super::events::{bind_event, INSERT_EVENT};
use super::jobs::{status_list, JOB_COLUMNS};
use super::{EventRow, JobRow, Store, StoreError};
use crate::domain::job::{JobCounts, JobStatus};

/// Error code written on jobs whose worker disappeared more often than allowed.
pub const WORKER_LOST_CODE: &str = "worker_lost";

/// A user's request on a job (the `/cancel`, `/pause` and `/resume` endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAction {
    /// Any non-terminal state → `cancelled`.
    Cancel,
    /// `running` → `pausing` (the worker checkpoints, then releases to `paused`);
    /// `validating_files`/`queued` → `paused`.
    Pause,
    /// `paused` → `queued`, lease cleared.
    Resume,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ControlOutcome {
    /// The job after the change.
    Applied(Box<JobRow>),
    /// The action does not apply to the job's current status (→ 400 naming the state).
    NotAllowed(JobStatus),
}

const NON_TERMINAL: [JobStatus; 5] = [
    JobStatus::ValidatingFiles,
    JobStatus::Queued,
    JobStatus::Running,
    JobStatus::Pausing,
    JobStatus::Paused,
];

impl Store {
    /// Atomically leases the oldest job in `validating_files` or `queued` whose lease is free
    /// or expired (`lease_expires_at <= now`) to `owner` until `now + lease_secs`, adding one
    /// to `attempts`. The status is not changed: the worker moves it on with `transition`.
    pub async fn claim_next(
        &self,
        owner: &str,
        now: i64,
        lease_secs: i64,
    ) -> Result<Option<JobRow>, StoreError> {
        let claimable = "status IN ('validating_files', 'queued') \
             AND (lease_expires_at IS NULL OR lease_expires_at <= ?2)";
        // The condition is repeated outside the subquery so that the UPDATE stays correct
        // under databases that evaluate the subquery before taking the row lock.
        let sql = format!(
            "UPDATE fine_tuning_jobs \
             SET lease_owner = ?1, lease_expires_at = ?2 + ?3, attempts = attempts + 1, \
                 updated_at = ?2 \
             WHERE id = (SELECT id FROM fine_tuning_jobs WHERE {claimable} \
                         ORDER BY seq LIMIT 1) \
               AND {claimable} \
             RETURNING {JOB_COLUMNS}"
        );
        Ok(sqlx::query_as::<_, JobRow>(&sql)
            .bind(owner)
            .bind(now)
            .bind(lease_secs)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Jobs by status, and how many of them a worker could claim at `now` (as `claim_next`
    /// sees them), in one scan: `/metrics` calls it on every scrape.
    pub async fn job_counts(&self, now: i64) -> Result<JobCounts, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*), \
               SUM(CASE WHEN status IN ('validating_files', 'queued') \
                         AND (lease_expires_at IS NULL OR lease_expires_at <= ?1) \
                   THEN 1 ELSE 0 END) \
             FROM fine_tuning_jobs GROUP BY status",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = JobCounts::default();
        for (text, jobs, waiting) in rows {
            let status = JobStatus::parse(&text).ok_or_else(|| {
                StoreError::Conflict(format!("a job has unknown status `{text}`"))
            })?;
            counts.by_status.push((status, jobs));
            counts.waiting += waiting;
        }
        Ok(counts)
    }

    /// Extends the lease to `now + lease_secs` if `owner` still holds it and returns the
    /// job's current status (the worker turns `cancelled` into a cancel and `pausing` into
    /// a pause). None: the lease was lost (requeued, released or taken by another worker).
    pub async fn heartbeat(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        lease_secs: i64,
    ) -> Result<Option<JobStatus>, StoreError> {
        let status: Option<String> = sqlx::query_scalar(
            "UPDATE fine_tuning_jobs SET lease_expires_at = ?1 + ?2 \
             WHERE id = ?3 AND lease_owner = ?4 RETURNING status",
        )
        .bind(now)
        .bind(lease_secs)
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        match status {
            None => Ok(None),
            Some(text) => JobStatus::parse(&text).map(Some).ok_or_else(|| {
                StoreError::Conflict(format!("job `{id}` has unknown status `{text}`"))
            }),
        }
    }

    /// Recovers jobs whose worker stopped heartbeating (`lease_expires_at < now`), in one
    /// transaction, and returns their ids (callers add events from `get_job`):
    /// - `running`/`queued` → `queued`, lease cleared;
    /// - `validating_files` stays there (so its files are validated again), lease cleared;
    /// - any of those three with `attempts >= max_attempts` → `failed` with error code
    ///   `worker_lost`;
    /// - `pausing` → `paused`, lease cleared.
    pub async fn requeue_expired(
        &self,
        now: i64,
        max_attempts: i64,
    ) -> Result<Vec<String>, StoreError> {
        let expired = "lease_expires_at IS NOT NULL AND lease_expires_at < ?1";
        let active = "status IN ('running', 'queued', 'validating_files')";
        let error = json!({
            "code": WORKER_LOST_CODE,
            "message": format!(
                "The job's worker stopped responding {max_attempts} times; giving up."
            ),
            "param": null,
        });
        let mut tx = self.pool.begin().await?;
        let mut ids: Vec<String> = sqlx::query_scalar(&format!(
            "UPDATE fine_tuning_jobs SET status = 'failed', error = ?3, finished_at = ?1, \
               estimated_finish = NULL, lease_owner = NULL, lease_expires_at = NULL, \
               updated_at = ?1 \
             WHERE {expired} AND {active} AND attempts >= ?2 RETURNING id"
        ))
        .bind(now)
        .bind(max_attempts)
        .bind(error.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let requeued: Vec<String> = sqlx::query_scalar(&format!(
            "UPDATE fine_tuning_jobs SET \
               status = CASE WHEN status = 'validating_files' THEN status ELSE 'queued' END, \
               estimated_finish = NULL, lease_owner = NULL, lease_expires_at = NULL, \
               updated_at = ?1 \
             WHERE {expired} AND {active} RETURNING id"
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let paused: Vec<String> = sqlx::query_scalar(&format!(
            "UPDATE fine_tuning_jobs SET status = 'paused', estimated_finish = NULL, \
               lease_owner = NULL, lease_expires_at = NULL, updated_at = ?1 \
             WHERE {expired} AND status = 'pausing' RETURNING id"
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        ids.extend(requeued);
        ids.extend(paused);
        Ok(ids)
    }

    /// Any non-terminal state → `failed` with `error` (`{code, message, param}`); clears the
    /// lease. False when the job had already finished.
    pub async fn finish_failed(
        &self,
        id: &str,
        error: &Value,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE fine_tuning_jobs SET status = 'failed', error = ?1, finished_at = ?2, \
               updated_at = ?2, estimated_finish = NULL, lease_owner = NULL, \
               lease_expires_at = NULL \
             WHERE id = ?3 AND status IN ({})",
            status_list(&NON_TERMINAL)
        );
        let result = sqlx::query(&sql)
            .bind(error.to_string())
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Applies a user's cancel/pause/resume as one compare-and-set and, when it applies,
    /// writes `event` in the same transaction. `NotFound` when the job does not exist.
    pub async fn request_control(
        &self,
        id: &str,
        action: ControlAction,
        event: &EventRow,
        now: i64,
    ) -> Result<ControlOutcome, StoreError> {
        // Which states allow the action is `domain::job`'s rule (the dashboard reads it
        // too); this statement only applies it.
        let (allowed, new_status): (fn(JobStatus) -> bool, &str) = match action {
            ControlAction::Cancel => (JobStatus::can_cancel, "'cancelled'"),
            ControlAction::Pause => (
                JobStatus::can_pause,
                "CASE WHEN status = 'running' THEN 'pausing' ELSE 'paused' END",
            ),
            ControlAction::Resume => (JobStatus::can_resume, "'queued'"),
        };
        let from: Vec<JobStatus> = JobStatus::ALL
            .into_iter()
            .filter(|status| allowed(*status))
            .collect();
        let clears_lease = action == ControlAction::Resume;
        let sql = format!(
            "UPDATE fine_tuning_jobs SET status = {new_status}, updated_at = ?1, \
               finished_at = CASE WHEN ?2 THEN ?1 ELSE finished_at END, \
               estimated_finish = CASE WHEN ?2 THEN NULL ELSE estimated_finish END, \
               lease_owner = CASE WHEN ?3 THEN NULL ELSE lease_owner END, \
               lease_expires_at = CASE WHEN ?3 THEN NULL ELSE lease_expires_at END \
             WHERE id = ?4 AND status IN ({}) RETURNING {JOB_COLUMNS}",
            status_list(&from)
        );
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query_as::<_, JobRow>(&sql)
            .bind(now)
            .bind(action == ControlAction::Cancel)
            .bind(clears_lease)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(job) = updated else {
            tx.rollback().await?;
            return match self.get_job(id).await? {
                Some(job) => Ok(ControlOutcome::NotAllowed(job.status)),
                None => Err(StoreError::NotFound),
            };
        };
        bind_event(sqlx::query(INSERT_EVENT), event)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ControlOutcome::Applied(Box::new(job)))
    }
}
