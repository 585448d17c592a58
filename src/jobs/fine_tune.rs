//! The real runner: validate the files, resolve hyperparameters, start (or resume), train
//! on a dedicated OS thread, record the results. Status moves are compare-and-set; when
//! one fails the user changed the job meanwhile and the runner steps aside.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tracing::instrument::WithSubscriber;
use tracing::{instrument, Instrument};

use super::device::open_device;
use super::progress::{
    write_progress, FirstStep, ForwardingObserver, ProgressTarget, PROGRESS_CHANNEL_CAPACITY,
};
use super::results::{record_completion, record_throughput, MeasuredRun};
use super::start_model::StartModel;
use super::training::{check_model_fits_task, check_options_fit_task, TrainSettings, Training};
use super::validate::{load_and_validate, validating_message, TrainingData, ValidatedData};
use super::worker::panic_message;
use super::{unix_now, ControlFlag, ControlSignal, JobFailure, JobRunner, RunContext, RunOutcome};
use crate::basemodels::BaseModel;
use crate::domain::hyperparams::TrainingConfig;
use crate::domain::job::JobStatus;
use crate::domain::job_spec::ResolvedHyperparameters;
use crate::domain::model_name::{fine_tuned_name, ORG};
use crate::domain::task::Task;
use crate::store::{EventRow, JobRow, Lease, Store};
use crate::telemetry::metrics::JobTrainingMetrics;
use crate::train::{checkpoint, TrainError, TrainOutcome};

/// The Hugging Face directory the trainer reads; a GGUF model is converted into the data
/// dir's cache once (on a blocking thread: it dequantizes every tensor).
pub(super) async fn prepare_base_model(
    base: &BaseModel,
    data_root: &Path,
) -> Result<PathBuf, JobFailure> {
    let converted = base.local_dir(&data_root.join("cache"));
    base.prepare_in_data_dir(data_root)
        .await
        .map_err(|e| JobFailure::internal(format!("internal error: GGUF conversion: {e}")))?
        .map_err(|e| {
            let detail = base.redact_paths(&e.to_string(), Some(&converted));
            JobFailure::fatal(
                "invalid_model",
                format!("The GGUF model `{}` could not be read: {detail}", base.id),
                Some("model"),
            )
        })
}

/// `failure` with the base model's server paths replaced by its id (`BaseModel::redact_paths`):
/// a model that fails to load is named as the user named it.
pub(super) fn naming_the_model(
    failure: JobFailure,
    base: &BaseModel,
    model_dir: &Path,
) -> JobFailure {
    match failure {
        JobFailure::Retryable(message) => {
            JobFailure::Retryable(base.redact_paths(&message, Some(model_dir)))
        }
        JobFailure::Fatal {
            code,
            message,
            param,
        } => JobFailure::Fatal {
            code,
            message: base.redact_paths(&message, Some(model_dir)),
            param,
        },
        JobFailure::OutOfSpace(message) => {
            JobFailure::OutOfSpace(base.redact_paths(&message, Some(model_dir)))
        }
        JobFailure::Superseded => JobFailure::Superseded,
    }
}

/// Runs classification fine-tuning jobs.
#[derive(Debug, Clone, Copy, Default)]
pub struct FineTuneRunner;

impl JobRunner for FineTuneRunner {
    fn run(&self, run: RunContext) -> BoxFuture<'static, Result<RunOutcome, JobFailure>> {
        Box::pin(fine_tune(run))
    }
}

// Inside the worker's job span, which carries the job id.
#[instrument(skip_all)]
async fn fine_tune(run: RunContext) -> Result<RunOutcome, JobFailure> {
    // The run's clock, for the throughput history (`results::record_throughput`).
    let claimed_at = Instant::now();
    let job = &run.job;
    let store = &run.ctx.store;
    let lease = &run.lease;
    let Some(data) = validation_phase(&run).await? else {
        return Ok(RunOutcome::Superseded);
    };
    let task = data.data.task();
    check_options_fit_task(&job.spec, task)?;
    let (config, auto_choices) =
        resolve_hyperparameters(store, lease, job, task, data.data.n_train()).await?;
    if job.status == JobStatus::ValidatingFiles {
        // Once per job (its first claim): what each "auto" became and why.
        for choice in auto_choices {
            leased_event(store, lease, EventRow::info(&job.id, choice, unix_now())).await?;
        }
    }
    let start = StartModel::resolve(&run.ctx, &job.model).await?;
    check_model_fits_task(&job.model, start.kind(), task)?;
    let device = open_device(&run.device)?;
    let work_dir = run.ctx.blobs.job_dir(&job.id);
    let resume_from = crate::artifacts::checkpoint::latest_resumable(&work_dir)
        .ok()
        .flatten();
    if run.control.get() == ControlSignal::Shutdown {
        // Not started yet: the job simply goes back to the queue.
        return Ok(RunOutcome::Stopped { step: 0 });
    }
    let fresh_run = resume_from.is_none();
    let started = match resume_from {
        Some((step, _)) => format!("Resuming fine-tuning job from step {step}"),
        None => "Fine-tuning job started".to_string(),
    };
    // The status and its event in one fenced transaction: a cancel is either before both
    // (nothing written) or after both.
    let event = EventRow::info(&job.id, started, unix_now());
    if !store
        .leased_transition(
            lease,
            &[JobStatus::Queued],
            JobStatus::Running,
            Some(&event),
            unix_now(),
        )
        .await?
    {
        return Ok(RunOutcome::Superseded);
    }
    let target = ProgressTarget {
        store: store.clone(),
        blobs: run.ctx.blobs.clone(),
        lease: lease.clone(),
        control: run.control.clone(),
        job_id: job.id.clone(),
        base_model: job.model.clone(),
        final_model: final_model_name(job, start.base_name(&job.model)),
        task,
    };
    let base_model_dir = start.prepare(&run.ctx, &work_dir).await?;
    let base_model = start.location(&base_model_dir).await?;
    let beta = job.spec.method.resolved_beta().map(|(beta, _)| beta);
    let examples_per_step = config.batch_size * config.gradient_accumulation_steps.max(1);
    let examples_in_run = data.data.n_train() * config.n_epochs;
    let training = Training::new(
        data.data,
        base_model_dir.clone(),
        base_model,
        TrainSettings { config, beta },
        work_dir,
        device,
    );
    let speed = run.ctx.metrics.job(&job.id);
    let first_step = FirstStep::default();
    let watch = (speed, first_step.clone());
    let outcome = train_on_thread(training, target.clone(), run.control.clone(), watch)
        .await
        .map_err(|failure| start.name_failure(failure, &base_model_dir))?;
    match outcome {
        TrainOutcome::Completed(summary) => {
            let result_files = record_completion(&target, &summary).await?;
            if fresh_run {
                let measured = MeasuredRun {
                    device: run.device.clone(),
                    started: claimed_at,
                    ended: Instant::now(),
                    first_step: first_step.get(),
                    examples_per_step,
                    examples_in_run,
                };
                record_throughput(&target, &summary, measured).await;
            }
            Ok(RunOutcome::Succeeded {
                fine_tuned_model: target.final_model,
                trained_tokens: i64::try_from(summary.trained_tokens).unwrap_or(i64::MAX),
                result_files,
            })
        }
        TrainOutcome::Stopped { step } => Ok(RunOutcome::Stopped { step }),
        TrainOutcome::Cancelled => Ok(RunOutcome::Cancelled),
    }
}

/// Reads and checks the files; a job still in `validating_files` also gets the validation
/// events and moves to `queued`. `None` when that move lost a race (paused or cancelled),
/// or when a cancel arrived while the files were being read: validation stops there.
async fn validation_phase(run: &RunContext) -> Result<Option<ValidatedData>, JobFailure> {
    let job = &run.job;
    let store = &run.ctx.store;
    let lease = &run.lease;
    let validating = job.status == JobStatus::ValidatingFiles;
    if validating {
        let message = validating_message(&job.training_file, job.validation_file.as_deref());
        leased_event(store, lease, EventRow::info(&job.id, message, unix_now())).await?;
    }
    let loaded = load_and_validate(
        &run.ctx.blobs,
        &job.training_file,
        job.validation_file.as_deref(),
        &job.spec.method,
    );
    let data = tokio::select! {
        biased;
        _ = run.control.raised_to(ControlSignal::Cancel) => return Ok(None),
        data = loaded => data?,
    };
    if !validating {
        return Ok(Some(data));
    }
    if let TrainingData::TokenClassification {
        iob1: Some(finding),
        ..
    } = &data.data
    {
        let event = EventRow::message(&job.id, "warn", finding.message(), unix_now());
        leased_event(store, lease, event).await?;
    }
    if data.duplicates > 0 {
        let message = format!(
            "Training file has {} duplicate example(s); they are kept and weigh more in training",
            data.duplicates
        );
        let event = EventRow::message(&job.id, "warn", message, unix_now());
        leased_event(store, lease, event).await?;
    }
    let validated = EventRow::info(
        &job.id,
        "Files validated, moving job to queued state",
        unix_now(),
    );
    let moved = store
        .leased_transition(
            lease,
            &[JobStatus::ValidatingFiles],
            JobStatus::Queued,
            Some(&validated),
            unix_now(),
        )
        .await?;
    Ok(moved.then_some(data))
}

/// Appends an event to the leased job; `Superseded` when the fence refused it (the job was
/// cancelled or taken over), which ends the run without another write.
async fn leased_event(store: &Store, lease: &Lease, event: EventRow) -> Result<(), JobFailure> {
    if store.leased_event(lease, &event).await? {
        Ok(())
    } else {
        Err(JobFailure::Superseded)
    }
}

/// `ft:{base}:temper:{suffix}:{id8}`, id8 taken from the job id so it is stable across
/// restarts of the same job; `base` is the job's base model (a fine-tuned start's own base).
fn final_model_name(job: &JobRow, base: &str) -> String {
    let id8: String = job
        .id
        .strip_prefix("ftjob-")
        .unwrap_or(&job.id)
        .chars()
        .take(8)
        .collect();
    fine_tuned_name(base, ORG, job.suffix.as_deref(), &id8)
}

/// Resolves `"auto"` for this dataset and records the numbers (typed, on the job row: the
/// job object shows them); also returns a sentence per `"auto"` saying what it became and
/// why.
async fn resolve_hyperparameters(
    store: &Store,
    lease: &Lease,
    job: &JobRow,
    task: Task,
    n_examples: usize,
) -> Result<(TrainingConfig, Vec<String>), JobFailure> {
    let seed = u64::try_from(job.seed).unwrap_or(job.seed.unsigned_abs());
    let method = &job.spec.method;
    let (config, mut auto_choices) = method
        .hyperparameters()
        .resolve_explained(task, n_examples, seed);
    let beta = method.resolved_beta().map(|(beta, why)| {
        auto_choices.extend(why);
        beta
    });
    let resolved = ResolvedHyperparameters {
        config: config.clone(),
        beta,
    };
    let recorded = store
        .leased_hyperparameters(lease, &resolved, Some(task.stored_name()))
        .await?;
    if !recorded {
        return Err(JobFailure::Superseded);
    }
    Ok((config, auto_choices))
}

/// Runs the trainer on its own OS thread (never on the async runtime) while an async task
/// writes its progress. A panic on that thread fails the job as an internal error. Both
/// log in the caller's span, to the caller's subscriber.
async fn train_on_thread(
    training: Training,
    target: ProgressTarget,
    control: ControlFlag,
    (speed, first_step): (JobTrainingMetrics, FirstStep),
) -> Result<TrainOutcome, JobFailure> {
    let (tx, rx) = mpsc::channel(PROGRESS_CHANNEL_CAPACITY);
    let (done_tx, done_rx) = oneshot::channel();
    let writer = write_progress(target, rx)
        .in_current_span()
        .with_current_subscriber();
    let writer = tokio::spawn(writer);
    let span = tracing::Span::current();
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    std::thread::Builder::new()
        .name("temper-train".into())
        .spawn(move || {
            // `on_own_pool` runs this on a thread of its pool: the span and the subscriber
            // are entered there.
            let train = move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    let _entered = span.enter();
                    let mut observer = ForwardingObserver::new(tx, control, speed, first_step);
                    training.run(&mut observer)
                })
            };
            let result =
                std::panic::catch_unwind(AssertUnwindSafe(|| crate::runtime::on_own_pool(train)));
            // Err only if the awaiting task was dropped (runtime shutting down): nobody is
            // left to tell.
            let _ = done_tx.send(result);
        })
        .map_err(|e| JobFailure::Retryable(format!("starting the training thread failed: {e}")))?;
    let result = done_rx
        .await
        .map_err(|_| JobFailure::internal("internal error: the training thread vanished"))?;
    let written = writer
        .await
        .map_err(|e| JobFailure::internal(format!("internal error: progress writer: {e}")));
    let outcome = match result {
        Err(panic) => {
            return Err(JobFailure::internal(format!(
                "internal error: training panicked ({})",
                panic_message(panic.as_ref())
            )))
        }
        Ok(result) => result.map_err(train_failure)?,
    };
    written??;
    Ok(outcome)
}

pub(super) fn train_failure(error: TrainError) -> JobFailure {
    match error {
        TrainError::InvalidData(message) => JobFailure::fatal(
            "invalid_training_file",
            format!("The job failed due to an invalid training file. {message}"),
            Some("training_file"),
        ),
        TrainError::DoesNotFit(message) => {
            JobFailure::fatal("insufficient_device_memory", message, None)
        }
        TrainError::Write { what, source } => write_failure(&what, &source),
        TrainError::Io(e) => JobFailure::Retryable(format!("training io error: {e}")),
        other => JobFailure::internal(format!("Training failed: {other}")),
    }
}

/// A write the job could not make (`what`: "checkpoint step-30", "result file …"): a full
/// disk pauses the job, any other I/O error fails it, both in plain words.
pub(crate) fn write_failure(what: &str, error: &std::io::Error) -> JobFailure {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded
    ) {
        return JobFailure::OutOfSpace(format!("No space left on device while writing {what}"));
    }
    JobFailure::internal(format!(
        "An I/O error stopped the job while writing {what}: {}",
        checkpoint::plain_io_error(error)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_over_its_device_memory_fails_as_the_users_to_fix() {
        let failure = train_failure(TrainError::DoesNotFit("This job needs about 9 GiB".into()));
        let JobFailure::Fatal { code, message, .. } = failure else {
            panic!("not a fatal failure");
        };
        assert_eq!(code, "insufficient_device_memory");
        assert_eq!(message, "This job needs about 9 GiB");
    }

    #[test]
    fn final_model_name_uses_the_first_eight_id_characters() {
        let mut job = JobRow::new(
            "ftjob-AbCdEfGh12345678".into(),
            "test-org/tiny-bert".into(),
            "file-x".into(),
            1,
            0,
        );
        assert_eq!(
            final_model_name(&job, &job.model),
            "ft:test-org/tiny-bert:temper::AbCdEfGh"
        );
        job.suffix = Some("sent".into());
        assert_eq!(
            final_model_name(&job, &job.model),
            "ft:test-org/tiny-bert:temper:sent:AbCdEfGh"
        );
        // A job starting from a fine-tuned model is named after that model's base.
        assert_eq!(
            final_model_name(&job, "test-org/base"),
            "ft:test-org/base:temper:sent:AbCdEfGh"
        );
    }
}
