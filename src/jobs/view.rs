//! What the dashboard shows of jobs, read through [`JobService`] so the dashboard keeps no
//! job rules of its own: the job list with each job's progress, and one job with its whole
//! training curve (every `metrics` event, not a page of them), its checkpoints, its newest
//! events and its report (the result file `classification_report.json`, `squad_report.json`
//! or `training_report.json`).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::results::{LM_REPORT_FILENAME, QA_REPORT_FILENAME, REPORT_FILENAME};
use super::service::{JobError, JobService};
use crate::blobs::Blobs;
use crate::domain::job::JobStatus;
use crate::domain::metric_steps::latest_run;
use crate::store::{CheckpointRow, EventRow, JobRow};

/// How many of the newest events (of any type) a job's view carries: the page shows the
/// recent log; the full log stays on the OpenAI events route.
pub const VIEW_EVENTS: i64 = 50;

/// How many of the newest jobs the list view carries.
pub const VIEW_JOBS: i64 = 100;

/// Keys of a metrics event that are the x axis or a constant, not a series.
const NOT_SERIES: [&str; 2] = ["step", "total_steps"];

/// A job's training curve as columns: `steps[i]` is the step of the i-th metrics event and
/// `values[name][i]` its value of `name` (`None` where that event has none, e.g.
/// `valid_loss` between evaluations).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricSeries {
    pub steps: Vec<u64>,
    pub values: BTreeMap<String, Vec<Option<f64>>>,
}

impl MetricSeries {
    /// The series of `events` in their order, the latest run only (steps a resumed job ran
    /// again count once, as in the TensorBoard download: `domain::metric_steps`); an event
    /// without a numeric `step` is skipped (it cannot be placed on the axis), and so are
    /// non-numeric values.
    pub fn from_events(events: &[EventRow]) -> MetricSeries {
        let mut series = MetricSeries::default();
        let with_step = |data: &&Value| data.get("step").and_then(Value::as_i64);
        let data = events.iter().filter_map(|e| e.data.as_ref());
        for (step, data) in latest_run(data, with_step) {
            let (Ok(step), Some(fields)) = (u64::try_from(step), data.as_object()) else {
                continue;
            };
            let row = series.steps.len();
            series.steps.push(step);
            for (name, value) in fields {
                let Some(value) = value
                    .as_f64()
                    .filter(|_| !NOT_SERIES.contains(&name.as_str()))
                else {
                    continue;
                };
                let column = series
                    .values
                    .entry(name.clone())
                    .or_insert_with(|| vec![None; row]);
                column.resize(row, None);
                column.push(Some(value));
            }
        }
        let rows = series.steps.len();
        for column in series.values.values_mut() {
            column.resize(rows, None);
        }
        series
    }
}

/// How far a job got: the step and the step count of its newest metrics event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct JobProgress {
    pub step: u64,
    pub total_steps: u64,
}

impl JobProgress {
    fn of(event: &EventRow) -> Option<JobProgress> {
        let data = event.data.as_ref()?;
        Some(JobProgress {
            step: data.get("step")?.as_u64()?,
            total_steps: data.get("total_steps")?.as_u64()?,
        })
    }
}

/// Which of cancel, pause and resume the job's status allows now (`domain::job`'s rule,
/// the one the store applies), so the page offers only buttons that can work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AllowedActions {
    pub cancel: bool,
    pub pause: bool,
    pub resume: bool,
}

impl AllowedActions {
    pub fn of(status: JobStatus) -> AllowedActions {
        AllowedActions {
            cancel: status.can_cancel(),
            pause: status.can_pause(),
            resume: status.can_resume(),
        }
    }
}

/// One row of the job list.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSummary {
    pub job: JobRow,
    pub progress: Option<JobProgress>,
}

/// The newest jobs, and whether older ones exist beyond them.
#[derive(Debug, Clone, PartialEq)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
    pub has_more: bool,
}

/// A result file holding a report, parsed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobReport {
    pub file_id: String,
    pub filename: String,
    pub content: Value,
}

/// Everything the job page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub job: JobRow,
    pub actions: AllowedActions,
    pub progress: Option<JobProgress>,
    pub metrics: MetricSeries,
    /// Newest first, all of them.
    pub checkpoints: Vec<CheckpointRow>,
    /// The newest [`VIEW_EVENTS`], newest first.
    pub events: Vec<EventRow>,
    pub report: Option<JobReport>,
}

impl JobService {
    /// The newest [`VIEW_JOBS`] jobs with their progress.
    pub async fn list_view(&self) -> Result<JobList, JobError> {
        let page = self.list(None, VIEW_JOBS, None).await?;
        let mut jobs = Vec::with_capacity(page.data.len());
        for job in page.data {
            let last = self.store().last_metric_event(&job.id).await?;
            jobs.push(JobSummary {
                progress: last.as_ref().and_then(JobProgress::of),
                job,
            });
        }
        Ok(JobList {
            jobs,
            has_more: page.has_more,
        })
    }

    /// One job as the dashboard shows it; its report is read from `blobs`.
    pub async fn view(&self, id: &str, blobs: &Blobs) -> Result<JobView, JobError> {
        let job = self.get(id).await?;
        let store = self.store();
        let metric_events = store.metric_events(id).await?;
        let checkpoints = store.list_checkpoints(id, None, i64::MAX).await?.data;
        let events = store.list_events(id, None, VIEW_EVENTS).await?.data;
        let report = self.report(&job, blobs).await?;
        Ok(JobView {
            actions: AllowedActions::of(job.status),
            progress: metric_events.last().and_then(JobProgress::of),
            metrics: MetricSeries::from_events(&metric_events),
            checkpoints,
            events,
            report,
            job,
        })
    }

    /// The job's report among its result files. A report listed but unreadable is logged
    /// and left out: the rest of the view is still worth showing.
    async fn report(&self, job: &JobRow, blobs: &Blobs) -> Result<Option<JobReport>, JobError> {
        for file_id in &job.result_files {
            let Some(file) = self.store().get_file(file_id).await? else {
                continue;
            };
            let filename = file.filename.as_str();
            if ![REPORT_FILENAME, QA_REPORT_FILENAME, LM_REPORT_FILENAME].contains(&filename) {
                continue;
            }
            let parsed = match blobs.read(&Blobs::file_rel(file_id)).await {
                Ok(bytes) => serde_json::from_slice::<Value>(&bytes).map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            return match parsed {
                Ok(content) => Ok(Some(JobReport {
                    file_id: file.id,
                    filename: file.filename,
                    content,
                })),
                Err(error) => {
                    tracing::warn!(%error, job_id = %job.id, %file_id, "unreadable report file");
                    Ok(None)
                }
            };
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metrics(data: Value) -> EventRow {
        EventRow::metrics("ftjob-1", "step", data, 100)
    }

    #[test]
    fn a_resumed_jobs_series_keep_its_latest_run_so_steps_ascend() {
        let events = [
            metrics(json!({"step": 1, "train_loss": 0.9})),
            metrics(json!({"step": 2, "train_loss": 0.8})),
            metrics(json!({"step": 3, "train_loss": 0.7})),
            // Resumed from the checkpoint at step 1: steps 2 and 3 again.
            metrics(json!({"step": 2, "train_loss": 0.6})),
            metrics(json!({"step": 3, "train_loss": 0.5})),
        ];
        let series = MetricSeries::from_events(&events);
        assert_eq!(series.steps, [1, 2, 3]);
        assert_eq!(
            series.values["train_loss"],
            [Some(0.9), Some(0.6), Some(0.5)]
        );
    }

    #[test]
    fn series_align_every_metric_on_the_steps_with_gaps_as_none() {
        let events = [
            metrics(json!({"step": 1, "total_steps": 3, "train_loss": 0.9, "learning_rate": 0.1})),
            metrics(json!({"step": 2, "total_steps": 3, "train_loss": 0.7, "valid_loss": 0.8})),
            EventRow::info("ftjob-1", "a message between", 100),
            metrics(json!({"no_step": 1, "train_loss": 5.0})),
            metrics(json!({"step": 3, "total_steps": 3, "train_loss": 0.5, "label": "x"})),
        ];
        let series = MetricSeries::from_events(&events);
        assert_eq!(series.steps, [1, 2, 3]);
        let names: Vec<&str> = series.values.keys().map(String::as_str).collect();
        assert_eq!(names, ["learning_rate", "train_loss", "valid_loss"]);
        assert_eq!(
            series.values["train_loss"],
            [Some(0.9), Some(0.7), Some(0.5)]
        );
        assert_eq!(series.values["valid_loss"], [None, Some(0.8), None]);
        assert_eq!(series.values["learning_rate"], [Some(0.1), None, None]);
    }

    #[test]
    fn actions_follow_the_status() {
        let running = AllowedActions::of(JobStatus::Running);
        assert_eq!(
            (running.cancel, running.pause, running.resume),
            (true, true, false)
        );
        let pausing = AllowedActions::of(JobStatus::Pausing);
        assert_eq!(
            (pausing.cancel, pausing.pause, pausing.resume),
            (true, false, false)
        );
        let paused = AllowedActions::of(JobStatus::Paused);
        assert_eq!(
            (paused.cancel, paused.pause, paused.resume),
            (true, false, true)
        );
        let done = AllowedActions::of(JobStatus::Succeeded);
        assert_eq!(
            (done.cancel, done.pause, done.resume),
            (false, false, false)
        );
    }

    #[test]
    fn progress_is_the_step_of_the_newest_metrics_event() {
        let event = metrics(json!({"step": 4, "total_steps": 10, "train_loss": 1.0}));
        assert_eq!(
            JobProgress::of(&event),
            Some(JobProgress {
                step: 4,
                total_steps: 10
            })
        );
        assert_eq!(JobProgress::of(&metrics(json!({"step": 4}))), None);
        assert_eq!(JobProgress::of(&EventRow::info("ftjob-1", "x", 1)), None);
    }
}
