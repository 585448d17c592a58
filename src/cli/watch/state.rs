//! What `jobs watch` knows between polls, kept apart from the polling and the terminal so
//! tests can drive it: the newest step, the token rate, the ETA, which events are new, and
//! how the job ended.

use std::collections::VecDeque;
use std::time::Duration;

use super::super::error::CliError;
use crate::api::objects::{EventObject, JobObject};

/// Polls the token rate is averaged over: at one poll a second, the last ten seconds.
const RATE_WINDOW: usize = 10;

/// A `metrics` event's `data`: `{"step", "total_steps", "train_loss", …}`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub step: u64,
    pub total_steps: u64,
    /// `null` on the wire when the step computed none.
    pub train_loss: Option<f64>,
}

impl StepReport {
    /// The step a `metrics` event reports; `None` for message events.
    pub fn from_event(event: &EventObject) -> Option<StepReport> {
        if event.kind != "metrics" {
            return None;
        }
        Some(StepReport {
            step: event.data.get("step")?.as_u64()?,
            total_steps: event.data.get("total_steps")?.as_u64()?,
            train_loss: event.data.get("train_loss").and_then(|v| v.as_f64()),
        })
    }
}

/// Tokens per second from the job's `trained_tokens`, sampled at each poll.
#[derive(Debug, Default)]
pub struct TokenRate {
    /// (time since the watch began, trained tokens), oldest first.
    samples: VecDeque<(Duration, i64)>,
}

impl TokenRate {
    pub fn record(&mut self, at: Duration, trained_tokens: i64) {
        // A count that went back is a restarted count (a requeued job): start over.
        if self
            .samples
            .back()
            .is_some_and(|&(_, last)| trained_tokens < last)
        {
            self.samples.clear();
        }
        self.samples.push_back((at, trained_tokens));
        if self.samples.len() > RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    /// `None` until two samples apart in time differ in tokens (nothing trained meanwhile
    /// shows no rate rather than 0).
    pub fn per_second(&self) -> Option<f64> {
        let (&(t0, n0), &(t1, n1)) = (self.samples.front()?, self.samples.back()?);
        let seconds = (t1 - t0).as_secs_f64();
        (seconds > 0.0 && n1 > n0).then(|| (n1 - n0) as f64 / seconds)
    }
}

/// Time left by the server's `estimated_finish` (Unix seconds), never negative.
pub fn eta(estimated_finish: Option<i64>, now_unix: i64) -> Option<Duration> {
    let left = estimated_finish? - now_unix;
    Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
}

/// Which events were printed already. The server lists events newest first, in pages.
#[derive(Debug, Default)]
pub struct EventCursor {
    newest_seen: Option<String>,
}

impl EventCursor {
    /// The events of `page` (newest first) newer than any seen, and whether the page reached
    /// the newest seen one (if not, older pages hold more unseen events). Before anything
    /// was seen, the whole page is new and counts as reached: a watch shows recent history,
    /// not all of it.
    pub fn unseen<'a>(&self, page: &'a [EventObject]) -> (&'a [EventObject], bool) {
        let Some(seen) = &self.newest_seen else {
            return (page, true);
        };
        match page.iter().position(|event| &event.id == seen) {
            Some(at) => (&page[..at], true),
            None => (page, false),
        }
    }

    pub fn mark_seen(&mut self, newest: &EventObject) {
        self.newest_seen = Some(newest.id.clone());
    }
}

/// How a watch ends: `Some(Ok(model id))` on success, `Some(Err(..))` with the exit code's
/// error when it failed, was cancelled or paused, `None` while it goes on.
pub fn ending(job: &JobObject) -> Option<Result<String, CliError>> {
    let id = job.id.clone();
    match job.status.as_str() {
        "succeeded" => Some(Ok(job.fine_tuned_model.clone().unwrap_or_default())),
        "failed" => {
            let error = job.error.clone().unwrap_or_default();
            let text = |key: &str| error.get(key).and_then(|v| v.as_str()).map(str::to_string);
            Some(Err(CliError::JobFailed {
                id,
                message: text("message").unwrap_or_else(|| "no reason given".to_string()),
                code: text("code"),
                param: text("param"),
            }))
        }
        "cancelled" => Some(Err(CliError::JobCancelled { id })),
        "paused" => Some(Err(CliError::JobPaused { id })),
        _ => None,
    }
}

/// One poll's view of the job.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub status: String,
    pub step: Option<StepReport>,
    pub tokens_per_second: Option<f64>,
    pub eta: Option<Duration>,
}

impl Snapshot {
    /// `loss 0.6123  812 tok/s  ETA 1m 5s`: what follows the bar, the parts that are known.
    pub fn details(&self) -> String {
        let mut parts = Vec::new();
        if let Some(loss) = self.step.as_ref().and_then(|s| s.train_loss) {
            parts.push(format!("loss {loss:.4}"));
        }
        if let Some(rate) = self.tokens_per_second {
            parts.push(format!("{rate:.0} tok/s"));
        }
        if let Some(eta) = self.eta {
            parts.push(format!("ETA {}", humantime::format_duration(eta)));
        }
        parts.join("  ")
    }

    /// The plain line: `running  step 3/6  loss 0.6123  812 tok/s  ETA 5s`.
    pub fn line(&self) -> String {
        let mut parts = vec![self.status.clone()];
        if let Some(step) = &self.step {
            parts.push(format!("step {}/{}", step.step, step.total_steps));
        }
        let details = self.details();
        if !details.is_empty() {
            parts.push(details);
        }
        parts.join("  ")
    }

    /// Whether a plain line is due: the status or the step moved (not merely the rate).
    pub fn advanced_from(&self, previous: Option<&Snapshot>) -> bool {
        previous.is_none_or(|p| {
            p.status != self.status
                || p.step.as_ref().map(|s| s.step) != self.step.as_ref().map(|s| s.step)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::client::parse;
    use serde_json::{json, Value};

    fn event(id: &str, kind: &str, data: Value) -> EventObject {
        parse(
            json!({"id": id, "object": "fine_tuning.job.event", "created_at": 0,
                     "level": "info", "message": id, "type": kind, "data": data}),
        )
        .expect("an event")
    }

    #[test]
    fn metrics_events_give_the_step_total_and_loss() {
        let metrics = event(
            "e1",
            "metrics",
            json!({"step": 3, "train_loss": 0.6123, "train_mean_token_accuracy": null,
                   "total_steps": 6, "learning_rate": 1e-4}),
        );
        assert_eq!(
            StepReport::from_event(&metrics),
            Some(StepReport {
                step: 3,
                total_steps: 6,
                train_loss: Some(0.6123)
            })
        );
        let no_loss = event(
            "e2",
            "metrics",
            json!({"step": 1, "train_loss": null, "total_steps": 6}),
        );
        assert_eq!(
            StepReport::from_event(&no_loss).and_then(|s| s.train_loss),
            None
        );
        assert_eq!(
            StepReport::from_event(&event("e3", "message", json!({}))),
            None
        );
    }

    #[test]
    fn the_token_rate_spans_the_window_and_restarts_when_the_count_drops() {
        let mut rate = TokenRate::default();
        rate.record(Duration::from_secs(0), 0);
        assert_eq!(rate.per_second(), None);
        rate.record(Duration::from_secs(2), 1000);
        assert_eq!(rate.per_second(), Some(500.0));
        for second in 3..=12 {
            rate.record(
                Duration::from_secs(second),
                1000 + (second as i64 - 2) * 100,
            );
        }
        // The window holds seconds 3..=12: 900 tokens in 9 s.
        assert_eq!(rate.per_second(), Some(100.0));
        rate.record(Duration::from_secs(13), 50);
        assert_eq!(rate.per_second(), None);
        let mut idle = TokenRate::default();
        idle.record(Duration::from_secs(0), 700);
        idle.record(Duration::from_secs(5), 700);
        assert_eq!(idle.per_second(), None);
    }

    #[test]
    fn the_eta_counts_down_to_zero() {
        assert_eq!(eta(Some(1065), 1000), Some(Duration::from_secs(65)));
        assert_eq!(eta(Some(990), 1000), Some(Duration::ZERO));
        assert_eq!(eta(None, 1000), None);
    }

    #[test]
    fn the_cursor_yields_each_event_once() {
        let page = |ids: &[&str]| -> Vec<EventObject> {
            ids.iter()
                .map(|id| event(id, "message", json!({})))
                .collect()
        };
        let ids = |events: &[EventObject]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
        let mut cursor = EventCursor::default();
        let first = page(&["e3", "e2", "e1"]);
        let (new, reached) = cursor.unseen(&first);
        assert_eq!(
            (ids(new), reached),
            (vec!["e3".into(), "e2".into(), "e1".into()], true)
        );
        cursor.mark_seen(&first[0]);
        let second = page(&["e5", "e4", "e3", "e2"]);
        let (new, reached) = cursor.unseen(&second);
        assert_eq!((ids(new), reached), (vec!["e5".into(), "e4".into()], true));
        cursor.mark_seen(&second[0]);
        let (new, reached) = cursor.unseen(&second);
        assert_eq!((new.len(), reached), (0, true));
        // More new events than a page: all of it is new, and older pages must be read.
        let burst = page(&["e9", "e8", "e7"]);
        let (new, reached) = cursor.unseen(&burst);
        assert_eq!((new.len(), reached), (3, false));
    }

    fn job(status: &str, error: Value, model: Value) -> JobObject {
        parse(json!({
            "id": "ftjob-1", "object": "fine_tuning.job", "created_at": 0, "error": error,
            "fine_tuned_model": model, "finished_at": null, "hyperparameters": {},
            "model": "org/m", "organization_id": "org-temper", "result_files": [],
            "status": status, "trained_tokens": null, "training_file": "file-t",
            "validation_file": null, "integrations": null, "seed": 1,
            "estimated_finish": null, "method": {}, "metadata": null,
            "user_provided_suffix": null,
        }))
        .expect("a job")
    }

    #[test]
    fn each_ending_maps_to_its_outcome() {
        let model = "ft:org/m:temper::ftjob-1";
        let done = ending(&job("succeeded", Value::Null, json!(model)));
        assert_eq!(done.and_then(Result::ok).as_deref(), Some(model));
        let failed = ending(&job(
            "failed",
            json!({"message": "too few", "code": "invalid_n_examples", "param": "training_file"}),
            Value::Null,
        ));
        let failed = failed
            .and_then(Result::err)
            .map(|e| (e.to_string(), e.exit_code()));
        assert_eq!(
            failed,
            Some((
                "job ftjob-1 failed: too few (code `invalid_n_examples`, param `training_file`)"
                    .to_string(),
                std::process::ExitCode::from(3)
            ))
        );
        let cancelled = ending(&job("cancelled", Value::Null, Value::Null));
        assert!(matches!(
            cancelled,
            Some(Err(CliError::JobCancelled { .. }))
        ));
        let paused = ending(&job("paused", Value::Null, Value::Null));
        assert!(matches!(paused, Some(Err(CliError::JobPaused { .. }))));
        for going_on in ["validating_files", "queued", "running", "pausing"] {
            assert!(
                ending(&job(going_on, Value::Null, Value::Null)).is_none(),
                "{going_on}"
            );
        }
    }

    #[test]
    fn lines_show_what_is_known_and_are_due_when_the_step_moves() {
        let queued = Snapshot {
            status: "queued".into(),
            step: None,
            tokens_per_second: None,
            eta: None,
        };
        assert_eq!(queued.line(), "queued");
        let running = Snapshot {
            status: "running".into(),
            step: Some(StepReport {
                step: 3,
                total_steps: 6,
                train_loss: Some(0.61234),
            }),
            tokens_per_second: Some(812.4),
            eta: Some(Duration::from_secs(65)),
        };
        assert_eq!(
            running.line(),
            "running  step 3/6  loss 0.6123  812 tok/s  ETA 1m 5s"
        );
        assert!(queued.advanced_from(None));
        assert!(running.advanced_from(Some(&queued)));
        let later = Snapshot {
            tokens_per_second: Some(900.0),
            ..running.clone()
        };
        assert!(!later.advanced_from(Some(&running)));
        let next = Snapshot {
            step: Some(StepReport {
                step: 4,
                total_steps: 6,
                train_loss: None,
            }),
            ..running.clone()
        };
        assert!(next.advanced_from(Some(&running)));
        assert_eq!(next.line(), "running  step 4/6  812 tok/s  ETA 1m 5s");
    }
}
