//! The one integration-test binary (one link instead of many): the real server on port 0
//! driven over HTTP.

mod artifacts;
mod binary;
mod chat;
mod cli;
mod cli_watch;
mod common;
mod disk;
mod dpo;
mod errors;
mod estimates;
mod files;
mod fine_tune;
mod generation_limits;
mod image_classification;
mod lifecycle;
mod metrics;
mod openapi;
// The unit tests' Prometheus reader, one file for both suites.
mod question_answering;
#[path = "../../src/telemetry/metrics/scrape.rs"]
mod scrape;
mod startup;
mod tensorboard;
mod token_classification;
mod uploads;
mod webhooks;
