//! Which of the worker pool's tasks are still running, for `/health`: each task holds a
//! [`Running`] guard that counts it out when the task ends, whether it returned, was
//! cancelled or panicked (tokio drops a panicked task's future, and the guard with it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The pool's tasks: how many were started, how many still run.
#[derive(Debug, Clone, Default)]
pub struct WorkerLiveness {
    started: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
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
}
