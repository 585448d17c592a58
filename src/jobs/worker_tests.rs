//! Worker and pool behaviour with fake runners: success, retries, fatal failures, panics,
//! cancel, pause/resume, lease expiry and shutdown.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::pool::requeue_once;
use super::test_support::*;
use super::{unix_now, JobRunner, Processed, Worker, WorkerPool};
use crate::domain::job::JobStatus;
use crate::store::{ControlAction, EventRow};

fn worker(h: &Harness, runner: impl JobRunner) -> Worker {
    Worker::new(
        h.ctx.clone(),
        Arc::new(runner),
        "cpu",
        CancellationToken::new(),
    )
}

fn slow(total: u64) -> StepRunner {
    StepRunner {
        total,
        step_time: Duration::from_millis(20),
    }
}

/// What the api does on `/cancel`, `/pause`, `/resume` (same event texts).
async fn control(h: &Harness, id: &str, action: ControlAction) {
    let message = match action {
        ControlAction::Cancel => "Fine-tuning job cancelled",
        ControlAction::Pause => "Fine-tuning job pause requested",
        ControlAction::Resume => "Fine-tuning job resumed",
    };
    let event = EventRow::info(id, message, unix_now());
    h.ctx
        .store
        .request_control(id, action, &event, unix_now())
        .await
        .expect("control");
}

#[tokio::test]
async fn ok_runner_succeeds_with_the_closing_events() {
    let h = harness().await;
    let id = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    let w = worker(&h, FlakyRunner(AtomicU32::new(0)));
    assert_eq!(
        w.process_next().await.unwrap(),
        Processed::Succeeded(id.clone())
    );
    assert_eq!(w.process_next().await.unwrap(), Processed::Idle);
    let row = job(&h.ctx, &id).await;
    assert_eq!(row.status, JobStatus::Succeeded);
    assert_eq!(row.trained_tokens, Some(1234));
    assert_eq!(row.result_files, vec!["file-results".to_string()]);
    assert_eq!(row.lease_owner, None);
    let model = row.fine_tuned_model.unwrap();
    let messages = messages(&h.ctx, &id).await;
    assert_eq!(
        messages[1..],
        [
            format!("New fine-tuned model created: {model}"),
            "The job has successfully completed".to_string()
        ]
    );
}

#[tokio::test]
async fn retryable_failures_requeue_until_success() {
    let h = harness().await;
    let id = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    let w = worker(&h, FlakyRunner(AtomicU32::new(2)));
    assert_eq!(
        w.process_next().await.unwrap(),
        Processed::Retried(id.clone())
    );
    // Back to the queue with the lease cleared: claimable again at once.
    let row = job(&h.ctx, &id).await;
    assert_eq!(
        (row.status, row.lease_owner, row.attempts),
        (JobStatus::ValidatingFiles, None, 1)
    );
    assert_eq!(
        w.process_next().await.unwrap(),
        Processed::Retried(id.clone())
    );
    assert_eq!(
        w.process_next().await.unwrap(),
        Processed::Succeeded(id.clone())
    );
    let row = job(&h.ctx, &id).await;
    assert_eq!((row.status, row.attempts), (JobStatus::Succeeded, 3));
    let warns = events(&h.ctx, &id)
        .await
        .into_iter()
        .filter(|e| e.level == "warn")
        .count();
    assert_eq!(warns, 2);
}

#[tokio::test]
async fn retryable_failures_fail_the_job_when_attempts_are_used_up() {
    let h = harness().await;
    let id = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    let w = worker(&h, FlakyRunner(AtomicU32::new(10)));
    for _ in 0..2 {
        assert_eq!(
            w.process_next().await.unwrap(),
            Processed::Retried(id.clone())
        );
    }
    assert_eq!(
        w.process_next().await.unwrap(),
        Processed::Failed(id.clone())
    );
    let row = job(&h.ctx, &id).await;
    assert_eq!(row.status, JobStatus::Failed);
    let message = row.error.unwrap()["message"].as_str().unwrap().to_string();
    assert_eq!(message, "The job failed after 3 attempts: disk hiccup");
}

#[tokio::test]
async fn fatal_failure_writes_the_openai_error_and_an_error_event() {
    let h = harness().await;
    let id = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    let w = worker(&h, FatalRunner);
    assert_eq!(
        w.process_next().await.unwrap(),
        Processed::Failed(id.clone())
    );
    let row = job(&h.ctx, &id).await;
    assert_eq!(row.status, JobStatus::Failed);
    assert!(row.finished_at.is_some());
    let message = "Training file has 7 example(s), but must have at least 10 examples";
    assert_eq!(
        row.error,
        Some(json!({"code": "invalid_n_examples", "message": message, "param": "training_file"}))
    );
    let last = events(&h.ctx, &id).await.pop().unwrap();
    assert_eq!(
        (last.level.as_str(), last.message.as_str()),
        ("error", message)
    );
    assert_eq!(
        last.data,
        Some(json!({"error_code": "invalid_n_examples", "error_param": "training_file"}))
    );
}

#[tokio::test]
async fn a_panicking_runner_fails_the_job_and_the_worker_goes_on() {
    let h = harness().await;
    let first = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    let second = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    let w = worker(&h, PanicRunner);
    assert_eq!(
        w.process_next().await.unwrap(),
        Processed::Failed(first.clone())
    );
    assert_eq!(w.process_next().await.unwrap(), Processed::Failed(second));
    let error = job(&h.ctx, &first).await.error.unwrap();
    assert_eq!(error["code"], "server_error");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("boom in the trainer"));
}

#[tokio::test]
async fn cancel_mid_run_stops_at_the_next_step() {
    let h = harness().await;
    let id = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    let w = worker(&h, slow(10_000));
    let run = tokio::spawn(async move { w.process_next().await.unwrap() });
    wait_until("3 steps", || async {
        metric_steps(&h.ctx, &id).await.len() >= 3
    })
    .await;
    control(&h, &id, ControlAction::Cancel).await;
    assert_eq!(run.await.unwrap(), Processed::Cancelled(id.clone()));
    let steps_at_stop = metric_steps(&h.ctx, &id).await.len();
    assert!(steps_at_stop < 10_000);
    let row = job(&h.ctx, &id).await;
    assert_eq!(row.status, JobStatus::Cancelled);
    assert_cancelled_last_and_once(&h, &id).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        metric_steps(&h.ctx, &id).await.len(),
        steps_at_stop,
        "no step after the stop"
    );
}

/// Long enough (3 s of 20 ms steps) that the pause, seen by a heartbeat every 333 ms,
/// always lands mid-run even on a loaded machine.
const PAUSE_TEST_STEPS: u64 = 150;

#[tokio::test]
async fn pause_then_resume_continues_the_step_count() {
    let h = harness().await;
    let id = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    let shutdown = CancellationToken::new();
    let pool = WorkerPool::spawn_with_runner(
        h.ctx.clone(),
        Arc::new(slow(PAUSE_TEST_STEPS)),
        shutdown.clone(),
    );
    wait_until("5 steps", || async {
        metric_steps(&h.ctx, &id).await.len() >= 5
    })
    .await;
    control(&h, &id, ControlAction::Pause).await;
    wait_for_status(&h.ctx, &id, JobStatus::Paused).await;
    let paused_at = metric_steps(&h.ctx, &id).await.len();
    let pause_event = format!("Fine-tuning job paused at step {paused_at}");
    assert!(messages(&h.ctx, &id).await.contains(&pause_event));
    assert!(paused_at < PAUSE_TEST_STEPS as usize);
    control(&h, &id, ControlAction::Resume).await;
    assert_eq!(job(&h.ctx, &id).await.status, JobStatus::Queued);
    pool.wake();
    wait_for_status(&h.ctx, &id, JobStatus::Succeeded).await;
    // Every step exactly once: the resumed run started after the paused step.
    assert_eq!(
        metric_steps(&h.ctx, &id).await,
        (1..=PAUSE_TEST_STEPS).collect::<Vec<u64>>()
    );
    shutdown.cancel();
    pool.join().await;
}

#[tokio::test]
async fn an_expired_lease_is_requeued_and_finished_by_a_live_worker() {
    let h = harness().await;
    let id = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    // A worker that died long ago: its lease expired 99 seconds back.
    let claimed = h
        .ctx
        .store
        .claim_next("dead-owner", unix_now() - 100, 1)
        .await
        .unwrap();
    assert_eq!(claimed.map(|j| j.id), Some(id.clone()));
    h.ctx
        .store
        .transition(
            &id,
            &[JobStatus::ValidatingFiles],
            JobStatus::Running,
            unix_now(),
        )
        .await
        .unwrap();
    assert_eq!(requeue_once(&h.ctx).await.unwrap(), 1);
    let row = job(&h.ctx, &id).await;
    assert_eq!((row.status, row.lease_owner), (JobStatus::Queued, None));
    let w = worker(&h, FlakyRunner(AtomicU32::new(0)));
    assert_eq!(
        w.process_next().await.unwrap(),
        Processed::Succeeded(id.clone())
    );
    let warn = events(&h.ctx, &id)
        .await
        .into_iter()
        .find(|e| e.level == "warn")
        .unwrap();
    assert_eq!(
        warn.message,
        "The worker running this job stopped responding; job requeued"
    );
    assert_eq!(job(&h.ctx, &id).await.attempts, 2);
}

#[tokio::test]
async fn shutdown_releases_a_running_job_to_the_queue() {
    let h = harness().await;
    let id = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    let shutdown = CancellationToken::new();
    let pool =
        WorkerPool::spawn_with_runner(h.ctx.clone(), Arc::new(slow(10_000)), shutdown.clone());
    let liveness = pool.liveness();
    // One task per device slot, and the requeue task; `/health` reads these counts.
    let tasks = h.ctx.devices.len() + 1;
    assert_eq!(liveness.counts(), (tasks, tasks));
    wait_until("2 steps", || async {
        metric_steps(&h.ctx, &id).await.len() >= 2
    })
    .await;
    shutdown.cancel();
    pool.join().await;
    assert_eq!(liveness.counts(), (tasks, 0));
    let row = job(&h.ctx, &id).await;
    assert_eq!((row.status, row.lease_owner), (JobStatus::Queued, None));
    let saved = std::fs::read_to_string(h.ctx.blobs.job_dir(&id).join("step")).unwrap();
    assert_eq!(
        saved.parse::<usize>().unwrap(),
        metric_steps(&h.ctx, &id).await.len()
    );
}

/// Exactly one "cancelled" event (the api's), and nothing after it.
async fn assert_cancelled_last_and_once(h: &Harness, id: &str) {
    let messages = messages(&h.ctx, id).await;
    let cancelled: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.as_str() == "Fine-tuning job cancelled")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(cancelled, vec![messages.len() - 1], "{messages:#?}");
}

/// A context whose heartbeat would not beat for 20 minutes: only a wake can bring news.
async fn long_lease_harness() -> Harness {
    let mut h = harness().await;
    h.ctx.lease = Duration::from_secs(3600);
    h
}

#[tokio::test]
async fn a_cancel_reaches_the_running_job_at_once_through_the_pools_wake() {
    let h = long_lease_harness().await;
    let id = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    let beat_now = Arc::new(tokio::sync::Notify::new());
    // In a step that writes nothing until it ends: only the control flag can stop it.
    let w = worker(&h, LongStepRunner).beat_on(beat_now.clone());
    let run = tokio::spawn(async move { w.process_next().await.unwrap() });
    wait_for_status(&h.ctx, &id, JobStatus::Running).await;
    control(&h, &id, ControlAction::Cancel).await;
    // What `WorkerPool::wake` does after the api's cancel.
    beat_now.notify_waiters();
    // Without the wake the next beat is 20 minutes away: this would time out.
    let processed = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the cancel reached the worker")
        .unwrap();
    assert_eq!(processed, Processed::Cancelled(id.clone()));
    assert_cancelled_last_and_once(&h, &id).await;
}

#[tokio::test]
async fn clean_restarts_are_not_failed_attempts_only_a_lost_lease_is() {
    let h = harness().await; // max_attempts 3
    let id = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    // Four clean restarts: shutdown mid-run, the job checkpoints and is handed back.
    for restart in 1..=4u64 {
        let shutdown = CancellationToken::new();
        let w = Worker::new(
            h.ctx.clone(),
            Arc::new(slow(10_000)),
            "cpu",
            shutdown.clone(),
        );
        let run = tokio::spawn(async move { w.process_next().await.unwrap() });
        wait_until("a step of this run", || async {
            metric_steps(&h.ctx, &id).await.len() as u64 > restart
        })
        .await;
        shutdown.cancel();
        assert_eq!(run.await.unwrap(), Processed::Requeued(id.clone()));
    }
    assert_eq!(job(&h.ctx, &id).await.attempts, 0);
    // Then one crash: claimed by a worker whose lease lapsed long ago.
    let claimed = h
        .ctx
        .store
        .claim_next("crashed-worker", unix_now() - 100, 1)
        .await
        .unwrap();
    assert_eq!(claimed.map(|j| j.id), Some(id.clone()));
    assert_eq!(requeue_once(&h.ctx).await.unwrap(), 1);
    let row = job(&h.ctx, &id).await;
    assert_eq!((row.status, row.attempts), (JobStatus::Queued, 1));
    assert_eq!(row.error, None);
    // And the job still finishes.
    let w = worker(&h, slow(10));
    assert_eq!(
        w.process_next().await.unwrap(),
        Processed::Succeeded(id.clone())
    );
}

#[tokio::test]
async fn a_worker_whose_lease_lapsed_is_fenced_out_and_stops() {
    let h = long_lease_harness().await;
    let id = create_job(&h.ctx, "m", "file-t", Value::Null).await;
    let old = worker(&h, slow(1_000_000));
    let old_run = tokio::spawn(async move { old.process_next().await.unwrap() });
    wait_until("2 steps", || async {
        metric_steps(&h.ctx, &id).await.len() >= 2
    })
    .await;
    let old_owner = job(&h.ctx, &id).await.lease_owner.unwrap();
    // The old worker stalls past its lease (its heartbeat is 20 minutes away): the lease is
    // made to lapse, the requeue task recovers the job and a second worker claims it.
    sqlx::query("UPDATE fine_tuning_jobs SET lease_expires_at = ? WHERE id = ?")
        .bind(unix_now() - 10)
        .bind(&id)
        .execute(h.ctx.store.pool())
        .await
        .unwrap();
    assert_eq!(requeue_once(&h.ctx).await.unwrap(), 1);
    let new = worker(&h, slow(40));
    let new_run = tokio::spawn(async move { new.process_next().await.unwrap() });
    // The old worker's next write is refused and it stops without writing anything.
    assert_eq!(old_run.await.unwrap(), Processed::Abandoned(id.clone()));
    assert_eq!(new_run.await.unwrap(), Processed::Succeeded(id.clone()));
    let row = job(&h.ctx, &id).await;
    assert_eq!(row.status, JobStatus::Succeeded);
    // After the requeue every step event is the new worker's, once per step.
    let events = events(&h.ctx, &id).await;
    let requeued = events
        .iter()
        .position(|e| e.message.contains("stopped responding"))
        .unwrap();
    let owners: Vec<&str> = events[requeued..]
        .iter()
        .filter_map(|e| e.data.as_ref()?["owner"].as_str())
        .collect();
    assert!(!owners.is_empty());
    assert!(owners.iter().all(|o| *o != old_owner), "{owners:?}");
    assert_eq!(owners.len(), 40);
}
