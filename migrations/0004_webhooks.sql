-- OpenAI's webhook events for fine-tuning jobs (`fine_tuning.job.succeeded|failed|cancelled`)
-- and their deliveries: the outbox of `webhooks::Deliverer`.
--
-- The event is written by a trigger, so it commits in the same transaction as the job's final
-- state whichever code path ended the job (a worker's success or failure, a user's cancel, an
-- expired lease past its attempts): a crash can lose neither without the other.

CREATE TABLE webhook_events (
    -- `evt_…`: the event's id in its body and the `webhook-id` of every delivery of it.
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    job_id TEXT NOT NULL REFERENCES fine_tuning_jobs (id),
    created_at INTEGER NOT NULL,
    -- Fanned out into `webhook_deliveries` for the endpoints configured at the time (none:
    -- kept for the record only).
    dispatched BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX webhook_events_pending ON webhook_events (dispatched, created_at);

CREATE TABLE webhook_deliveries (
    event_id TEXT NOT NULL REFERENCES webhook_events (id),
    url TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at INTEGER,
    -- Set when retries ran out (`webhooks::RetryPolicy::give_up_after`).
    abandoned_at INTEGER,
    last_error TEXT,
    PRIMARY KEY (event_id, url)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (delivered_at, abandoned_at, next_attempt_at);

CREATE TRIGGER fine_tuning_job_finished_webhook
AFTER UPDATE OF status ON fine_tuning_jobs
WHEN NEW.status IN ('succeeded', 'failed', 'cancelled')
  AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled')
BEGIN
    INSERT INTO webhook_events (id, type, job_id, created_at)
    VALUES (
        'evt_' || lower(hex(randomblob(12))),
        'fine_tuning.job.' || NEW.status,
        NEW.id,
        COALESCE(NEW.finished_at, CAST(strftime('%s', 'now') AS INTEGER))
    );
END;
