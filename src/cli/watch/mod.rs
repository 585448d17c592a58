//! `temper jobs watch ID`: polls the job and its new events once a second until the job
//! ends. On a terminal a progress bar (steps, loss, tokens/s, ETA) with the job's messages
//! printed above it; otherwise one plain line per status or step change. Either way the
//! last line on success is the fine-tuned model's id; failure, cancellation and pausing
//! exit with their own codes (`error.rs`).

mod state;

use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::client::{segment, ApiClient, Page};
use super::error::CliError;
use super::jobs::job_path;
use super::output::print;
use crate::api::objects::{EventObject, JobObject};
use state::{ending, eta, EventCursor, Snapshot, StepReport, TokenRate};

const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long polls may keep failing transiently (a server restart, a proxy's 502) before
/// watching gives up: jobs survive restarts, so the watch should too.
const TRANSIENT_FAILURES_FOR: Duration = Duration::from_secs(300);
/// Events asked for per page (the server allows up to 1000).
const EVENTS_PER_PAGE: usize = 100;
/// Pages read back to catch up after a burst; older unseen events are skipped.
const MAX_CATCH_UP_PAGES: usize = 10;

/// Until the first step tells the total: a spinner beside the status.
const WAITING_TEMPLATE: &str = "{prefix:>16} {spinner}  {msg}";
const BAR_TEMPLATE: &str = "{prefix:>16} [{bar:30}] {pos}/{len} steps  {msg}";

pub async fn run(client: &ApiClient, id: &str) -> Result<(), CliError> {
    let started = Instant::now();
    let mut display = Display::for_stdout();
    let mut cursor = EventCursor::default();
    let mut rate = TokenRate::default();
    let mut step: Option<StepReport> = None;
    let mut failing_since: Option<Instant> = None;
    loop {
        let (job, events) = match poll(client, id, &mut cursor).await {
            Ok(polled) => {
                if failing_since.take().is_some() {
                    display.message("the server answers again")?;
                }
                polled
            }
            Err(error) if error.is_transient() => {
                let first_failure = failing_since.is_none();
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= TRANSIENT_FAILURES_FOR {
                    return Err(error);
                }
                if first_failure {
                    display.message(&format!("{error}; retrying"))?;
                }
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        for event in events {
            match StepReport::from_event(&event) {
                Some(report) => step = Some(report),
                None => display.message(&event.message)?,
            }
        }
        if let Some(tokens) = job.trained_tokens {
            rate.record(started.elapsed(), tokens);
        }
        let running = job.status == "running";
        let snapshot = Snapshot {
            status: job.status.clone(),
            step: step.clone(),
            tokens_per_second: rate.per_second().filter(|_| running),
            eta: eta(job.estimated_finish, unix_now()).filter(|_| running),
        };
        if let Some(ending) = ending(&job) {
            display.finish(snapshot)?;
            return print(&ending?);
        }
        display.update(snapshot)?;
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The job, then its events not shown yet (oldest first). The job first: when it has
/// ended, the events read next include everything up to the end.
async fn poll(
    client: &ApiClient,
    id: &str,
    cursor: &mut EventCursor,
) -> Result<(JobObject, Vec<EventObject>), CliError> {
    let job: JobObject = client.get(&job_path(id, "")).await?;
    let events = new_events(client, id, cursor).await?;
    Ok((job, events))
}

/// The events not shown yet, oldest first.
async fn new_events(
    client: &ApiClient,
    id: &str,
    cursor: &mut EventCursor,
) -> Result<Vec<EventObject>, CliError> {
    let mut fresh: Vec<EventObject> = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..MAX_CATCH_UP_PAGES {
        let query = match &after {
            Some(after) => format!("/events?limit={EVENTS_PER_PAGE}&after={}", segment(after)),
            None => format!("/events?limit={EVENTS_PER_PAGE}"),
        };
        let page: Page<EventObject> = client.get(&job_path(id, &query)).await?;
        let (unseen, reached) = cursor.unseen(&page.data);
        let done = reached || !page.has_more || unseen.is_empty();
        after = unseen.last().map(|event| event.id.clone());
        fresh.extend(unseen.iter().cloned());
        if done {
            break;
        }
    }
    if let Some(newest) = fresh.first() {
        cursor.mark_seen(newest);
    }
    fresh.reverse();
    Ok(fresh)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Where progress goes: a bar when stdout is a terminal, else plain lines (a bar would
/// hide itself there and leave nothing in a log).
enum Display {
    Bar(ProgressBar),
    Plain { last: Option<Snapshot> },
}

impl Display {
    fn for_stdout() -> Display {
        if !std::io::stdout().is_terminal() {
            return Display::Plain { last: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        bar.set_style(
            ProgressStyle::with_template(WAITING_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        Display::Bar(bar)
    }

    /// A job message (`Created fine-tuning job…`, `Fine-tuning job successfully
    /// completed`), above the bar or as its own line.
    fn message(&self, text: &str) -> Result<(), CliError> {
        match self {
            Display::Bar(bar) => {
                bar.println(text);
                Ok(())
            }
            Display::Plain { .. } => print(text),
        }
    }

    fn update(&mut self, snapshot: Snapshot) -> Result<(), CliError> {
        match self {
            Display::Bar(bar) => {
                if let Some(step) = &snapshot.step {
                    if bar.length().is_none() {
                        bar.set_style(
                            ProgressStyle::with_template(BAR_TEMPLATE)
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                    }
                    bar.set_length(step.total_steps);
                    bar.set_position(step.step);
                } else {
                    bar.tick();
                }
                bar.set_prefix(snapshot.status.clone());
                bar.set_message(snapshot.details());
                Ok(())
            }
            Display::Plain { last } => {
                if snapshot.advanced_from(last.as_ref()) {
                    print(&snapshot.line())?;
                }
                *last = Some(snapshot);
                Ok(())
            }
        }
    }

    /// The last state as a plain line either way: a finished bar leaves the cursor at the
    /// end of its own line (where the model id would land), so it is cleared instead.
    fn finish(mut self, last: Snapshot) -> Result<(), CliError> {
        match &self {
            Display::Bar(bar) => {
                bar.finish_and_clear();
                print(&last.line())
            }
            Display::Plain { .. } => self.update(last),
        }
    }
}
