//! What a job tells the operator: every JSON log line of a job (the worker, its heartbeat
//! and progress tasks, the training thread) carries the job id, and the worker's busy flag
//! is up exactly while a job runs.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use serde_json::Value;

use super::fine_tune_tests::{examples, job_with, jsonl, two_epochs, worker, write_model};
use super::test_support::*;
use super::{BusyFlag, FineTuneRunner, JobFailure, JobRunner, Processed, RunContext, RunOutcome};
use crate::telemetry::testing::{span_field, CapturedLogs};
use crate::telemetry::{JOB_ID_FIELD, JOB_SPAN};

#[tokio::test]
async fn every_json_log_line_of_a_job_carries_its_job_id_training_thread_included() {
    let h = harness().await;
    write_model(&h);
    let id = job_with(&h, &jsonl(&examples(20)), None, two_epochs()).await;
    let logs = CapturedLogs::default();
    // The test's runtime is single-threaded; the training thread gets the subscriber from
    // the job that starts it.
    let _default = logs.install_json("temper=debug");
    let processed = worker(&h, FineTuneRunner).process_next().await.unwrap();
    assert_eq!(processed, Processed::Succeeded(id.clone()));

    let lines = logs.json_lines();
    let without: Vec<&Value> = lines
        .iter()
        .filter(|line| span_field(line, JOB_ID_FIELD) != Some(id.as_str()))
        .collect();
    assert!(without.is_empty(), "lines without the job id: {without:#?}");
    assert_eq!(lines[0]["spans"][0]["name"], JOB_SPAN, "{:#?}", lines[0]);
    let message = |line: &Value| line["fields"]["message"].as_str().unwrap_or("").to_string();
    assert_eq!(message(&lines[0]), "claimed job");
    assert_eq!(message(lines.last().unwrap()), "job settled");
    // The 10 steps are logged on the training thread (`temper-pool-N`: a thread of its
    // own pool, or `temper-train` where no pool could be built).
    let steps: Vec<&Value> = lines
        .iter()
        .filter(|line| message(line) == "training step")
        .collect();
    assert_eq!(steps.len(), 10, "{lines:#?}");
    for step in steps {
        let thread = step["threadName"].as_str().unwrap_or_default();
        assert!(thread.starts_with("temper-"), "{step}");
    }
}

/// Records whether the worker's flag was up while it ran, then succeeds.
struct SeesBusy {
    flag: BusyFlag,
    seen: Arc<Mutex<Option<bool>>>,
}

impl JobRunner for SeesBusy {
    fn run(&self, _run: RunContext) -> BoxFuture<'static, Result<RunOutcome, JobFailure>> {
        *self.seen.lock().unwrap() = Some(self.flag.is_busy());
        Box::pin(async { Ok(RunOutcome::Cancelled) })
    }
}

#[tokio::test]
async fn a_worker_is_busy_only_while_it_runs_a_job() {
    let h = harness().await;
    let flag = BusyFlag::default();
    let seen = Arc::new(Mutex::new(None));
    let runner = SeesBusy {
        flag: flag.clone(),
        seen: seen.clone(),
    };
    let w = worker(&h, runner).report_busy(flag.clone());
    assert_eq!(w.process_next().await.unwrap(), Processed::Idle);
    assert_eq!(*seen.lock().unwrap(), None);
    assert!(!flag.is_busy());
    let id = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    assert_eq!(w.process_next().await.unwrap(), Processed::Cancelled(id));
    assert_eq!(*seen.lock().unwrap(), Some(true));
    assert!(!flag.is_busy());
}
