-- temper schema. Written for SQLite and kept portable to PostgreSQL: no SQLite-only
-- functions, single-quoted literals, JSON kept as TEXT. Timestamps are unix seconds.
-- `seq` gives every row a stable insertion order for cursor pagination (`after = <id>`),
-- which created_at (one-second resolution) cannot.

CREATE TABLE files (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    bytes          BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    filename       TEXT NOT NULL,
    purpose        TEXT NOT NULL,
    status         TEXT NOT NULL,
    status_details TEXT,
    format         TEXT,
    n_examples     BIGINT
);
CREATE INDEX files_purpose_seq ON files (purpose, seq);

CREATE TABLE fine_tuning_jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    created_at       BIGINT NOT NULL,
    model            TEXT NOT NULL,
    training_file    TEXT NOT NULL,
    validation_file  TEXT,
    suffix           TEXT,
    seed             BIGINT NOT NULL,
    metadata         TEXT,
    method           TEXT NOT NULL,
    hyperparameters  TEXT NOT NULL,
    status           TEXT NOT NULL,
    error            TEXT,
    fine_tuned_model TEXT,
    finished_at      BIGINT,
    started_at       BIGINT,
    estimated_finish BIGINT,
    trained_tokens   BIGINT,
    result_files     TEXT NOT NULL DEFAULT '[]',
    task             TEXT,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    updated_at       BIGINT NOT NULL
);
-- claim_next: oldest claimable row by status; requeue_expired: expired leases.
CREATE INDEX fine_tuning_jobs_claim ON fine_tuning_jobs (status, seq);
CREATE INDEX fine_tuning_jobs_lease ON fine_tuning_jobs (lease_expires_at);
CREATE INDEX fine_tuning_jobs_training_file ON fine_tuning_jobs (training_file);
CREATE INDEX fine_tuning_jobs_validation_file ON fine_tuning_jobs (validation_file);

-- One row per metadata pair, so `metadata[k]=v` filters need no JSON functions
-- (which differ between SQLite and PostgreSQL). The job row keeps the map for echoing.
CREATE TABLE fine_tuning_job_metadata (
    job_id TEXT NOT NULL REFERENCES fine_tuning_jobs (id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE INDEX fine_tuning_job_metadata_pair ON fine_tuning_job_metadata (key, value);

CREATE TABLE fine_tuning_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    job_id     TEXT NOT NULL REFERENCES fine_tuning_jobs (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    level      TEXT NOT NULL,
    message    TEXT NOT NULL,
    type       TEXT NOT NULL,
    data       TEXT
);
CREATE INDEX fine_tuning_events_job_seq ON fine_tuning_events (job_id, seq);

CREATE TABLE fine_tuning_checkpoints (
    seq                         INTEGER PRIMARY KEY AUTOINCREMENT,
    id                          TEXT NOT NULL UNIQUE,
    job_id                      TEXT NOT NULL REFERENCES fine_tuning_jobs (id) ON DELETE CASCADE,
    created_at                  BIGINT NOT NULL,
    step_number                 BIGINT NOT NULL,
    fine_tuned_model_checkpoint TEXT NOT NULL UNIQUE,
    metrics                     TEXT NOT NULL,
    artifact_dir                TEXT NOT NULL
);
CREATE INDEX fine_tuning_checkpoints_job_seq ON fine_tuning_checkpoints (job_id, seq);
CREATE INDEX fine_tuning_checkpoints_job_step ON fine_tuning_checkpoints (job_id, step_number);

CREATE TABLE models (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    owned_by      TEXT NOT NULL,
    job_id        TEXT,
    base_model    TEXT,
    kind          TEXT NOT NULL,
    artifact_dir  TEXT NOT NULL,
    step          BIGINT,
    is_checkpoint BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX models_job ON models (job_id);
