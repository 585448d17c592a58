-- What each finished job measured of its own speed, for the duration that estimates
-- (`POST /v1/fine_tuning/estimates`) give jobs of the same base model, task and device.
-- Only runs that went start to finish in one session are kept: a resumed run's clock
-- would miss the steps before its interruption.
CREATE TABLE job_throughput (
    job_id TEXT PRIMARY KEY REFERENCES fine_tuning_jobs(id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    device TEXT NOT NULL,
    -- Wall-clock seconds of the run, from its claim: reading the files, tokenizing,
    -- loading, training, evaluation and checkpoints.
    seconds REAL NOT NULL,
    -- Of those, the setup before training's pace set in (the first step's end less that
    -- step's share): the part that does not grow with the data like training does.
    setup_seconds REAL NOT NULL,
    -- Tokens trained (the job's `trained_tokens`; 0 for images).
    tokens INTEGER NOT NULL,
    -- Examples trained, epochs included (windows for QA, images for images).
    samples INTEGER NOT NULL,
    finished_at INTEGER NOT NULL
);
CREATE INDEX job_throughput_by_kind ON job_throughput (model, task, device, finished_at);
