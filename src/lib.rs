//! temper: the OpenAI fine-tuning workflow for open models, on candle.
//!
//! # Layout
//!
//! ```text
//! HTTP (api) ──► store (sqlx, SQLite) + blobs (data dir)
//!                    │ job rows are the queue
//!                    ▼
//!             jobs: worker pool, one worker per device slot
//!                    │ training runs on its own OS thread, reports over channels
//!                    ▼
//!             tasks/<name>: one folder per task (data, head, metric names, report,
//!                    │ export) on train: the synchronous candle core; models from zoo
//!                    │ writes checkpoints (artifacts: meta.json names the base by id)
//!                    ▼
//!             blobs + store.models ──► infer: registry (LRU by bytes) of loaded
//!                                        engines, one OS thread each ──► HTTP
//!
//! store (a job's final state + its webhook event, one transaction) ──► webhooks: the
//!                                        outbox's deliverer, signed POSTs with retries
//! ```
//!
//! Dependency rules: `domain` is used by all; `train`, `tasks` and `zoo` never import
//! tokio, sqlx or axum; `store` never imports axum or candle; `api` never imports candle,
//! `zoo`, `train` or `tasks`; `infer` reads checkpoints through `artifacts` and the tasks'
//! serving backends, never `train`. `app` is the composition root and the only module that
//! knows every other. `cli` (the `temper files|jobs|models|chat` client) talks to a server
//! over HTTP and knows only `config` and the wire types of `api::objects`.

pub mod api;
pub mod app;
#[cfg(test)]
mod architecture_tests;
pub mod artifacts;
pub mod basemodels;
pub mod blobs;
pub mod cli;
pub mod config;
pub mod domain;
pub mod infer;
pub mod jobs;
pub mod runtime;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod train;
pub mod webhooks;
pub mod zoo;
