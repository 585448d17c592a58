//! Shared by the worker and fine-tune tests: a temp store + data dir, job creation, event
//! reading, polling, and fake runners.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Value};
use tempfile::TempDir;

use super::{unix_now, ControlSignal, JobFailure, JobRunner, JobsContext, RunContext, RunOutcome};
use crate::blobs::Blobs;
use crate::domain::ids::new_job_id;
use crate::domain::job::JobStatus;
use crate::domain::job_spec::JobSpec;
use crate::store::{EventRow, JobRow, Store};

pub struct Harness {
    /// Kept alive for the test's duration.
    pub dir: TempDir,
    pub ctx: JobsContext,
}

pub async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context_in(&dir).await;
    Harness { dir, ctx }
}

/// A context over `dir/temper.db` and `dir/data` (reopening gives a "new process").
pub async fn context_in(dir: &TempDir) -> JobsContext {
    let store = Store::open(&dir.path().join("temper.db"))
        .await
        .expect("open store");
    let blobs = Blobs::new(dir.path().join("data")).expect("blobs");
    JobsContext {
        store,
        blobs,
        models_dir: dir.path().join("models"),
        devices: vec!["cpu".to_string()],
        lease: Duration::from_secs(1),
        poll_interval: Duration::from_millis(50),
        max_attempts: 3,
        metrics: crate::telemetry::metrics::TrainingMetrics::default(),
    }
}

/// Stores `bytes` as the uploaded file `id`.
pub async fn upload(ctx: &JobsContext, id: &str, bytes: &[u8]) {
    ctx.blobs
        .write_atomic(&Blobs::file_rel(id), bytes)
        .await
        .expect("upload");
}

/// A job in `validating_files` with its `Created fine-tuning job` event; `method` is the
/// request's `method` object, parsed as the API parses it.
pub async fn create_job(
    ctx: &JobsContext,
    model: &str,
    training_file: &str,
    method: Value,
) -> String {
    let id = new_job_id();
    let mut job = JobRow::new(
        id.clone(),
        model.into(),
        training_file.into(),
        42,
        unix_now(),
    );
    job.spec = JobSpec::parse(Some(&method), None).expect("a valid method");
    let event = EventRow::info(&id, format!("Created fine-tuning job: {id}"), unix_now());
    ctx.store
        .create_job(&job, &event)
        .await
        .expect("create job");
    id
}

/// All events of a job, oldest first.
pub async fn events(ctx: &JobsContext, id: &str) -> Vec<EventRow> {
    let mut page = ctx
        .store
        .list_events(id, None, 10_000)
        .await
        .expect("events");
    page.data.reverse();
    page.data
}

pub async fn messages(ctx: &JobsContext, id: &str) -> Vec<String> {
    events(ctx, id)
        .await
        .into_iter()
        .map(|e| e.message)
        .collect()
}

/// Steps of the `metrics` events, oldest first.
pub async fn metric_steps(ctx: &JobsContext, id: &str) -> Vec<u64> {
    events(ctx, id)
        .await
        .into_iter()
        .filter(|e| e.kind == "metrics")
        .filter_map(|e| e.data.and_then(|d| d["step"].as_u64()))
        .collect()
}

/// OpenAI's three knobs as the worker resolved them: `(batch_size,
/// learning_rate_multiplier, n_epochs)`.
pub fn resolved_knobs(job: &JobRow) -> (usize, f64, usize) {
    let config = &job
        .resolved
        .as_ref()
        .expect("resolved hyperparameters")
        .config;
    (
        config.batch_size,
        config.learning_rate_multiplier,
        config.n_epochs,
    )
}

pub async fn job(ctx: &JobsContext, id: &str) -> JobRow {
    ctx.store
        .get_job(id)
        .await
        .expect("get job")
        .expect("job exists")
}

/// Polls until `check` holds (the tests' only clock is this bounded loop).
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..3000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

pub async fn wait_for_status(ctx: &JobsContext, id: &str, status: JobStatus) {
    wait_until(&format!("{id} to be {status}"), || async {
        job(ctx, id).await.status == status
    })
    .await;
}

/// What fakes do first: the worker's own (fenced) moves to `running`.
async fn start(run: &RunContext) -> Result<bool, JobFailure> {
    let store = &run.ctx.store;
    let now = unix_now();
    store
        .leased_transition(
            &run.lease,
            &[JobStatus::ValidatingFiles],
            JobStatus::Queued,
            None,
            now,
        )
        .await?;
    Ok(store
        .leased_transition(
            &run.lease,
            &[JobStatus::Queued],
            JobStatus::Running,
            None,
            now,
        )
        .await?)
}

fn succeeded(id: &str) -> RunOutcome {
    RunOutcome::Succeeded {
        fine_tuned_model: format!("ft:fake:temper::{}", &id[6..14]),
        trained_tokens: 1234,
        result_files: vec!["file-results".to_string()],
    }
}

/// Fails with `Retryable` `failures` times, then succeeds.
pub struct FlakyRunner(pub AtomicU32);

impl JobRunner for FlakyRunner {
    fn run(&self, run: RunContext) -> BoxFuture<'static, Result<RunOutcome, JobFailure>> {
        let fail = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        Box::pin(async move {
            if fail {
                return Err(JobFailure::Retryable("disk hiccup".into()));
            }
            start(&run).await?;
            Ok(succeeded(&run.job.id))
        })
    }
}

pub struct FatalRunner;

impl JobRunner for FatalRunner {
    fn run(&self, _run: RunContext) -> BoxFuture<'static, Result<RunOutcome, JobFailure>> {
        Box::pin(async {
            Err(JobFailure::fatal(
                "invalid_n_examples",
                "Training file has 7 example(s), but must have at least 10 examples",
                Some("training_file"),
            ))
        })
    }
}

pub struct PanicRunner;

impl JobRunner for PanicRunner {
    fn run(&self, _run: RunContext) -> BoxFuture<'static, Result<RunOutcome, JobFailure>> {
        Box::pin(async { panic!("boom in the trainer") })
    }
}

/// A slow "trainer": `total` steps of `step_time`, each with a fenced metrics event (its
/// data names the lease owner), polling the control flag before every step like the real
/// one and stopping when a write is refused. Progress is saved in the job's work dir on
/// pause/shutdown, so a resumed run continues where it stopped.
pub struct StepRunner {
    pub total: u64,
    pub step_time: Duration,
}

impl JobRunner for StepRunner {
    fn run(&self, run: RunContext) -> BoxFuture<'static, Result<RunOutcome, JobFailure>> {
        let (total, step_time) = (self.total, self.step_time);
        Box::pin(async move {
            if !start(&run).await? {
                return Ok(RunOutcome::Superseded);
            }
            let saved = run.ctx.blobs.job_dir(&run.job.id).join("step");
            let mut step: u64 = match tokio::fs::read_to_string(&saved).await {
                Ok(text) => text.trim().parse().unwrap(),
                Err(_) => 0,
            };
            while step < total {
                match run.control.get() {
                    ControlSignal::Continue => {}
                    ControlSignal::Pause | ControlSignal::Shutdown => {
                        tokio::fs::create_dir_all(saved.parent().unwrap())
                            .await
                            .unwrap();
                        tokio::fs::write(&saved, step.to_string()).await.unwrap();
                        return Ok(RunOutcome::Stopped {
                            step: step as usize,
                        });
                    }
                    ControlSignal::Cancel | ControlSignal::LeaseLost => {
                        return Ok(RunOutcome::Cancelled)
                    }
                }
                tokio::time::sleep(step_time).await;
                step += 1;
                let data = json!({"step": step, "total_steps": total, "owner": run.lease.owner});
                let event = EventRow::metrics(
                    &run.job.id,
                    format!("Step {step}/{total}"),
                    data,
                    unix_now(),
                );
                if !run.ctx.store.leased_event(&run.lease, &event).await? {
                    return Err(JobFailure::Superseded);
                }
            }
            Ok(succeeded(&run.job.id))
        })
    }
}

/// A run stuck in one long step that writes nothing: it only stops when its control flag
/// says so, as the trainer's per-micro-batch poll does.
pub struct LongStepRunner;

impl JobRunner for LongStepRunner {
    fn run(&self, run: RunContext) -> BoxFuture<'static, Result<RunOutcome, JobFailure>> {
        Box::pin(async move {
            if !start(&run).await? {
                return Ok(RunOutcome::Superseded);
            }
            run.control.raised_to(ControlSignal::Cancel).await;
            Ok(RunOutcome::Cancelled)
        })
    }
}
