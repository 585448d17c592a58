//! Which of the worker pool's tasks are still running, for `/health`: each task holds a
//! [`Running`] guard that counts it out when the task ends, whether it returned, was
//! cancelled or panicked (tokio drops a panicked task's future, and the guard with it).
//! And which workers are running a job, for `/metrics`: each worker holds a [`BusyFlag`]
//! that a [`Busy`] guard raises for the length of a job.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::telemetry::metrics::WorkerState;

/// The pool's tasks: how many were started, how many still run; and its workers' flags.
#[derive(Debug, Clone, Default)]
pub struct WorkerLiveness {
    started: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    /// One per worker, in the order of `--devices`; written once per worker at start.
    workers: Arc<Mutex<Vec<(String, BusyFlag)>>>,
}

/// Whether one worker runs a job. Cheap to clone; a default one belongs to no pool.
#[derive(Debug, Clone, Default)]
pub struct BusyFlag(Arc<AtomicBool>);

/// Holds a worker's flag up while it lives.
#[derive(Debug)]
pub struct Busy(Arc<AtomicBool>);

impl BusyFlag {
    /// Marks the worker busy until the guard is dropped (the job settled, or its future
    /// was dropped or panicked).
    pub fn busy(&self) -> Busy {
        self.0.store(true, Ordering::Release);
        Busy(self.0.clone())
    }

    pub fn is_busy(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Counts one task as running while it lives.
#[derive(Debug)]
pub struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WorkerLiveness {
    /// A guard for one more task, to move into it.
    pub fn running(&self) -> Running {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.running.fetch_add(1, Ordering::AcqRel);
        Running(self.running.clone())
    }

    /// Tasks started, and of those still running.
    pub fn counts(&self) -> (usize, usize) {
        let running = self.running.load(Ordering::Acquire);
        (self.started.load(Ordering::Acquire), running)
    }

    /// Whether every task started is still running.
    pub fn all_running(&self) -> bool {
        let (started, running) = self.counts();
        started == running
    }

    /// The flag of one more worker, on `device`.
    pub fn worker(&self, device: &str) -> BusyFlag {
        let flag = BusyFlag::default();
        self.lock_workers().push((device.to_string(), flag.clone()));
        flag
    }

    /// Every worker, in the order they were added, and whether it runs a job now.
    pub fn workers(&self) -> Vec<WorkerState> {
        self.lock_workers()
            .iter()
            .enumerate()
            .map(|(index, (device, flag))| WorkerState {
                index,
                device: device.clone(),
                busy: flag.is_busy(),
            })
            .collect()
    }

    /// A poisoned lock only means a push panicked; the list is whole.
    fn lock_workers(&self) -> std::sync::MutexGuard<'_, Vec<(String, BusyFlag)>> {
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_or_panics_is_counted_out() {
        let liveness = WorkerLiveness::default();
        assert!(liveness.all_running());
        let (returns, panics) = (liveness.running(), liveness.running());
        let _stays = liveness.running();
        assert_eq!(liveness.counts(), (3, 3));
        let gate = Arc::new(tokio::sync::Notify::new());
        let wait = gate.clone();
        let ended = tokio::spawn(async move {
            let _running = returns;
            wait.notified().await;
        });
        let panicked = tokio::spawn(async move {
            let _running = panics;
            panic!("a worker's bug");
        });
        assert!(panicked.await.is_err());
        assert_eq!(liveness.counts(), (3, 2));
        assert!(!liveness.all_running());
        gate.notify_one();
        assert!(ended.await.is_ok());
        assert_eq!(liveness.counts(), (3, 1));
    }

    #[tokio::test]
    async fn a_worker_is_busy_while_its_guard_lives_even_when_the_job_panics() {
        let liveness = WorkerLiveness::default();
        let (first, second) = (liveness.worker("cpu"), liveness.worker("cuda:0"));
        let busy = |liveness: &WorkerLiveness| -> Vec<(usize, String, bool)> {
            liveness
                .workers()
                .into_iter()
                .map(|w| (w.index, w.device, w.busy))
                .collect()
        };
        assert_eq!(
            busy(&liveness),
            [(0, "cpu".into(), false), (1, "cuda:0".into(), false)]
        );
        let guard = second.busy();
        assert_eq!(
            busy(&liveness),
            [(0, "cpu".into(), false), (1, "cuda:0".into(), true)]
        );
        drop(guard);
        assert!(!second.is_busy());
        let panicked = tokio::spawn(async move {
            let _busy = first.busy();
            panic!("a job's bug");
        });
        assert!(panicked.await.is_err());
        assert_eq!(
            busy(&liveness),
            [(0, "cpu".into(), false), (1, "cuda:0".into(), false)]
        );
    }
}
