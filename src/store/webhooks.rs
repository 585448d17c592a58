//! Queries on the webhook outbox (`webhook_events`, `webhook_deliveries`). Events are
//! written by the trigger of `migrations/0004_webhooks.sql` with the job's final state; this
//! file fans them out to endpoints and records each delivery attempt.

use sqlx::FromRow;

use super::{Store, StoreError};

/// One event's delivery to one endpoint that is due now.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct DueDelivery {
    /// `evt_…`: the `webhook-id`, the same on every attempt.
    pub event_id: String,
    /// `fine_tuning.job.succeeded` …
    pub event_type: String,
    pub job_id: String,
    /// When the job reached its final state (the event's `created_at`).
    pub created_at: i64,
    pub url: String,
    /// Attempts made before this one.
    pub attempts: i64,
}

/// Counts of deliveries by state (the tests' view of the outbox).
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub pending: i64,
    pub delivered: i64,
    pub abandoned: i64,
}

impl Store {
    /// Gives every undispatched event a delivery row per endpoint in `urls`, due at once,
    /// and marks it dispatched, in one transaction. With no endpoints the events are only
    /// marked (kept for the record). Returns how many events were dispatched.
    pub async fn dispatch_webhook_events(
        &self,
        urls: &[String],
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        for url in urls {
            sqlx::query(
                "INSERT OR IGNORE INTO webhook_deliveries (event_id, url, next_attempt_at) \
                 SELECT id, ?1, ?2 FROM webhook_events WHERE dispatched = FALSE",
            )
            .bind(url)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let marked =
            sqlx::query("UPDATE webhook_events SET dispatched = TRUE WHERE dispatched = FALSE")
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(marked.rows_affected())
    }

    /// Up to `limit` deliveries due at `now` to one of `urls`, oldest event first.
    /// Deliveries to an endpoint no longer configured wait (they resume if it returns).
    pub async fn due_webhook_deliveries(
        &self,
        urls: &[String],
        now: i64,
        limit: i64,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let mut due = Vec::new();
        for url in urls {
            let rows = sqlx::query_as::<_, DueDelivery>(
                "SELECT d.event_id, e.type AS event_type, e.job_id, e.created_at, d.url, \
                   d.attempts \
                 FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id \
                 WHERE d.url = ?1 AND d.delivered_at IS NULL AND d.abandoned_at IS NULL \
                   AND d.next_attempt_at <= ?2 \
                 ORDER BY e.created_at, d.event_id LIMIT ?3",
            )
            .bind(url)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            due.extend(rows);
        }
        Ok(due)
    }

    /// The receiver answered 2xx.
    pub async fn webhook_delivered(
        &self,
        event_id: &str,
        url: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_deliveries SET delivered_at = ?3, attempts = attempts + 1, \
               last_error = NULL \
             WHERE event_id = ?1 AND url = ?2",
        )
        .bind(event_id)
        .bind(url)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An attempt failed with `error`: retry at `retry_at`, or give up when it is `None`.
    pub async fn webhook_attempt_failed(
        &self,
        event_id: &str,
        url: &str,
        error: &str,
        retry_at: Option<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = ?3, \
               next_attempt_at = COALESCE(?4, next_attempt_at), \
               abandoned_at = CASE WHEN ?4 IS NULL THEN ?5 ELSE NULL END \
             WHERE event_id = ?1 AND url = ?2",
        )
        .bind(event_id)
        .bind(url)
        .bind(error)
        .bind(retry_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deliveries by state, over every endpoint.
    #[cfg(test)]
    pub async fn webhook_delivery_counts(&self) -> Result<DeliveryCounts, StoreError> {
        let (pending, delivered, abandoned): (i64, i64, i64) = sqlx::query_as(
            "SELECT \
               COALESCE(SUM(delivered_at IS NULL AND abandoned_at IS NULL), 0), \
               COALESCE(SUM(delivered_at IS NOT NULL), 0), \
               COALESCE(SUM(abandoned_at IS NOT NULL), 0) \
             FROM webhook_deliveries",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(DeliveryCounts {
            pending,
            delivered,
            abandoned,
        })
    }

    /// The webhook events of `job_id` as `(id, type)`, oldest first.
    #[cfg(test)]
    pub async fn webhook_events_of(
        &self,
        job_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, type FROM webhook_events WHERE job_id = ?1 ORDER BY created_at, rowid",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?)
    }
}
