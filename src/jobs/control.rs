//! What a running job should do next, and the heartbeat that decides it.
//!
//! The flag is written by the heartbeat task (from the row's status), by process shutdown
//! and by tests; it is read by the trainer's observer once per optimizer step. Signals only
//! ever get stronger (`fetch_max`), so a cancel is never overwritten by a later pause.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{unix_now, JobsContext};
use crate::domain::job::JobStatus;
use crate::store::Lease;
use crate::train::Control;

/// Ordered by strength: a stronger signal replaces a weaker one, never the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum ControlSignal {
    Continue = 0,
    /// The process is shutting down: checkpoint, then release the job to `queued`.
    Shutdown = 1,
    /// The user paused (`pausing`): checkpoint, then release to `paused`.
    Pause = 2,
    /// The user cancelled: stop at once; the api already wrote the status.
    Cancel = 3,
    /// Another worker may own the job now: stop at once and write nothing at all.
    LeaseLost = 4,
}

impl ControlSignal {
    fn from_u8(value: u8) -> ControlSignal {
        match value {
            1 => ControlSignal::Shutdown,
            2 => ControlSignal::Pause,
            3 => ControlSignal::Cancel,
            4 => ControlSignal::LeaseLost,
            _ => ControlSignal::Continue,
        }
    }

    /// What the trainer does. A lost lease stops without saving: the new owner may already
    /// be writing checkpoints into the same work dir.
    pub fn to_train_control(self) -> Control {
        match self {
            ControlSignal::Continue => Control::Continue,
            ControlSignal::Shutdown => Control::Shutdown,
            ControlSignal::Pause => Control::Pause,
            ControlSignal::Cancel | ControlSignal::LeaseLost => Control::Cancel,
        }
    }

    /// The signal a heartbeat answer asks for (`None` = the lease is gone).
    pub fn from_heartbeat(status: Option<JobStatus>) -> ControlSignal {
        match status {
            None => ControlSignal::LeaseLost,
            Some(JobStatus::Cancelled) => ControlSignal::Cancel,
            Some(JobStatus::Pausing) => ControlSignal::Pause,
            // Finished or failed by someone else (e.g. requeue gave up): nothing to save.
            Some(JobStatus::Failed | JobStatus::Succeeded) => ControlSignal::LeaseLost,
            Some(_) => ControlSignal::Continue,
        }
    }
}

/// Shared between the worker, its heartbeat task, the progress writer and the training
/// thread. Async code can wait for a signal (`raised_to`); the trainer polls `get`.
#[derive(Debug, Clone, Default)]
pub struct ControlFlag(Arc<FlagState>);

#[derive(Debug, Default)]
struct FlagState {
    signal: AtomicU8,
    changed: Notify,
}

impl ControlFlag {
    pub fn new() -> ControlFlag {
        ControlFlag::default()
    }

    pub fn get(&self) -> ControlSignal {
        ControlSignal::from_u8(self.0.signal.load(Ordering::Acquire))
    }

    /// Raises the flag to `signal` unless a stronger one is already set.
    pub fn raise(&self, signal: ControlSignal) {
        let before = self.0.signal.fetch_max(signal as u8, Ordering::AcqRel);
        if before < signal as u8 {
            self.0.changed.notify_waiters();
        }
    }

    /// Resolves once the flag is at least `at_least` (at once if it already is).
    pub async fn raised_to(&self, at_least: ControlSignal) {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.get() >= at_least {
                return;
            }
            changed.await;
        }
    }
}

/// Extends the lease every third of it until `done` is cancelled, raising `flag` from the
/// row's status, and raises `Shutdown` when the process stops. `beat_now` (notified by the
/// api after a cancel or pause) makes it beat at once, so a cancel reaches the trainer
/// within its current micro-batch instead of a third of a lease later. A store error is
/// logged and retried at the next beat: the lease only lapses after three missed beats.
pub(crate) async fn heartbeat_loop(
    ctx: JobsContext,
    lease: Lease,
    flag: ControlFlag,
    stop: HeartbeatStop,
) {
    let period = (ctx.lease / 3).max(std::time::Duration::from_millis(50));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the claim itself just set the lease
    loop {
        let woken = stop.beat_now.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        tokio::select! {
            _ = stop.done.cancelled() => return,
            _ = stop.shutdown.cancelled(), if flag.get() < ControlSignal::Shutdown => {
                flag.raise(ControlSignal::Shutdown);
                continue;
            }
            _ = ticker.tick() => {}
            _ = &mut woken => {}
        }
        let Lease { job_id, owner } = &lease;
        match ctx
            .store
            .heartbeat(job_id, owner, unix_now(), ctx.lease_secs())
            .await
        {
            Ok(status) => flag.raise(ControlSignal::from_heartbeat(status)),
            Err(error) => warn!(%job_id, %error, "heartbeat failed; retrying next beat"),
        }
    }
}

/// What steers a heartbeat loop besides its ticker: `done` when the run finished,
/// `shutdown` for the process, `beat_now` to beat at once.
pub(crate) struct HeartbeatStop {
    pub done: CancellationToken,
    pub shutdown: CancellationToken,
    pub beat_now: Arc<Notify>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_only_get_stronger() {
        let flag = ControlFlag::new();
        assert_eq!(flag.get(), ControlSignal::Continue);
        flag.raise(ControlSignal::Pause);
        flag.raise(ControlSignal::Shutdown);
        assert_eq!(flag.get(), ControlSignal::Pause);
        flag.raise(ControlSignal::Cancel);
        flag.raise(ControlSignal::Continue);
        assert_eq!(flag.get(), ControlSignal::Cancel);
        assert_eq!(flag.get().to_train_control(), Control::Cancel);
    }

    #[test]
    fn heartbeat_answers_map_to_signals() {
        use ControlSignal as S;
        let cases = [
            (None, S::LeaseLost),
            (Some(JobStatus::Running), S::Continue),
            (Some(JobStatus::ValidatingFiles), S::Continue),
            (Some(JobStatus::Pausing), S::Pause),
            (Some(JobStatus::Cancelled), S::Cancel),
            (Some(JobStatus::Failed), S::LeaseLost),
        ];
        for (status, expected) in cases {
            assert_eq!(
                ControlSignal::from_heartbeat(status),
                expected,
                "{status:?}"
            );
        }
        assert_eq!(S::LeaseLost.to_train_control(), Control::Cancel);
        assert_eq!(S::Shutdown.to_train_control(), Control::Shutdown);
        assert_eq!(S::Pause.to_train_control(), Control::Pause);
    }

    #[tokio::test]
    async fn waiting_for_a_signal_wakes_on_the_raise() {
        let flag = ControlFlag::new();
        let waiter = tokio::spawn({
            let flag = flag.clone();
            async move { flag.raised_to(ControlSignal::Cancel).await }
        });
        flag.raise(ControlSignal::Pause);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a pause is weaker than a cancel");
        flag.raise(ControlSignal::Cancel);
        waiter.await.expect("woken");
        // Already raised: returns at once.
        flag.raised_to(ControlSignal::Pause).await;
    }
}
