//! The worker's lease-fenced writes: a lapsed lease or a cancel refuses every one of them,
//! and only failed runs and lost leases count as attempts.
use serde_json::json;
use sqlx::SqlitePool;

use super::queue::{lease, start, LEASE};
use super::records::{checkpoint_row, model_row};
use super::{create, store};
use crate::domain::hyperparams::HyperparamRequest;
use crate::domain::job::JobStatus;
use crate::domain::job_spec::ResolvedHyperparameters;
use crate::domain::task::Task;
use crate::store::{ControlAction, EventRow, Handback, Store};

async fn status(store: &Store, id: &str) -> JobStatus {
    store.get_job(id).await.unwrap().unwrap().status
}

#[sqlx::test(migrations = false)]
async fn only_failed_runs_and_lost_leases_count_as_attempts(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    // Four clean restarts (shutdown hand-backs), as four SIGTERMs would give.
    for round in 0..4 {
        let owner = format!("w{round}");
        start(&store, &owner, 100 + round).await;
        assert!(store
            .release(
                &lease("ftjob-1", &owner),
                JobStatus::Queued,
                Handback::Clean,
                None
            )
            .await
            .unwrap());
    }
    assert_eq!(store.get_job("ftjob-1").await.unwrap().unwrap().attempts, 0);
    // One retryable failure counts.
    start(&store, "w-retry", 110).await;
    assert!(store
        .release(
            &lease("ftjob-1", "w-retry"),
            JobStatus::Queued,
            Handback::Failed,
            None
        )
        .await
        .unwrap());
    // Then a crash: the lease lapses with max_attempts 3 and the job is requeued, not failed.
    start(&store, "w-crashed", 120).await;
    let ids = store.requeue_expired(120 + LEASE + 1, 3).await.unwrap();
    assert_eq!(ids, vec!["ftjob-1".to_string()]);
    let job = store.get_job("ftjob-1").await.unwrap().unwrap();
    assert_eq!((job.status, job.attempts), (JobStatus::Queued, 2));
}

#[sqlx::test(migrations = false)]
async fn a_lapsed_lease_fences_every_write_of_its_worker(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    start(&store, "old", 100).await;
    let old = lease("ftjob-1", "old");
    assert!(store
        .leased_event(&old, &EventRow::info("ftjob-1", "step 1", 101))
        .await
        .unwrap());
    // The old worker stalls past its lease; the job is requeued and claimed by `new`.
    store.requeue_expired(100 + LEASE + 1, 5).await.unwrap();
    start(&store, "new", 200).await;
    let new = lease("ftjob-1", "new");

    let stale = EventRow::info("ftjob-1", "step 2 from the old worker", 201);
    let resolved = ResolvedHyperparameters {
        config: HyperparamRequest::default().resolve(Task::SequenceClassification, 10, 1),
        beta: None,
    };
    assert!(!store.leased_event(&old, &stale).await.unwrap());
    assert!(!store
        .leased_progress(&old, Some(999), Some(5))
        .await
        .unwrap());
    assert!(!store
        .leased_hyperparameters(&old, &resolved, None)
        .await
        .unwrap());
    assert!(!store
        .leased_transition(&old, &[JobStatus::Running], JobStatus::Queued, None, 202)
        .await
        .unwrap());
    let ckpt = checkpoint_row("ftjob-1", 2);
    let model = model_row(&ckpt.fine_tuned_model_checkpoint);
    assert!(!store
        .leased_checkpoint(&old, Some(&ckpt), &model)
        .await
        .unwrap());
    let results = super::files::file("file-results", "fine-tune-results", 202);
    assert!(!store.leased_file(&old, &results).await.unwrap());
    assert!(store.get_file("file-results").await.unwrap().is_none());
    let error = json!({"code": "server_error", "message": "x", "param": null});
    let failed = EventRow::info("ftjob-1", "failed", 203);
    assert!(!store.leased_fail(&old, &error, &failed, 203).await.unwrap());
    assert!(!store
        .finish_succeeded(&old, "ft:x", 1, &[], &[], 203)
        .await
        .unwrap());
    assert!(!store
        .release(&old, JobStatus::Queued, Handback::Clean, None)
        .await
        .unwrap());

    // Nothing of the old worker's landed; the new one writes normally.
    let job = store.get_job("ftjob-1").await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.lease_owner.as_deref(), job.estimated_finish),
        (JobStatus::Running, Some("new"), None)
    );
    assert!(store.get_model(&model.id).await.unwrap().is_none());
    let messages: Vec<String> = store
        .list_events("ftjob-1", None, 100)
        .await
        .unwrap()
        .data
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(!messages
        .iter()
        .any(|m| m.contains("old worker") || m == "failed"));
    assert!(store
        .leased_checkpoint(&new, Some(&ckpt), &model)
        .await
        .unwrap());
    assert!(store.leased_file(&new, &results).await.unwrap());
    assert!(store.get_file("file-results").await.unwrap().is_some());
    let closing = [EventRow::info("ftjob-1", "done", 300)];
    assert!(store
        .finish_succeeded(&new, "ft:m", 10, &[], &closing, 300)
        .await
        .unwrap());
}

#[sqlx::test(migrations = false)]
async fn a_cancel_fences_the_worker_that_still_holds_the_lease(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    start(&store, "w1", 100).await;
    let held = lease("ftjob-1", "w1");
    let cancel = EventRow::info("ftjob-1", "Fine-tuning job cancelled", 110);
    store
        .request_control("ftjob-1", ControlAction::Cancel, &cancel, 110)
        .await
        .unwrap();
    // Still the lease owner, but the job is cancelled: no step, checkpoint or state after.
    let step = EventRow::info("ftjob-1", "Step 12/20", 111);
    assert!(!store.leased_event(&held, &step).await.unwrap());
    let ckpt = checkpoint_row("ftjob-1", 12);
    let model = model_row(&ckpt.fine_tuned_model_checkpoint);
    assert!(!store
        .leased_checkpoint(&held, Some(&ckpt), &model)
        .await
        .unwrap());
    let validated = EventRow::info("ftjob-1", "Files validated", 112);
    assert!(!store
        .leased_transition(
            &held,
            &[JobStatus::ValidatingFiles, JobStatus::Queued],
            JobStatus::Queued,
            Some(&validated),
            112
        )
        .await
        .unwrap());
    let events = store.list_events("ftjob-1", None, 100).await.unwrap().data;
    assert_eq!(events[0].message, "Fine-tuning job cancelled");
    assert_eq!(status(&store, "ftjob-1").await, JobStatus::Cancelled);
}
