use serde_json::json;
use sqlx::SqlitePool;

use super::{create, store};
use crate::domain::job::JobStatus;
use crate::store::{ControlAction, ControlOutcome, EventRow, Handback, Lease, Store, StoreError};

pub(super) const LEASE: i64 = 30;

async fn status(store: &Store, id: &str) -> JobStatus {
    store.get_job(id).await.unwrap().unwrap().status
}

/// Claims `id` for `owner` and moves it to running, as a worker does.
pub(super) async fn start(store: &Store, owner: &str, now: i64) -> String {
    let job = store.claim_next(owner, now, LEASE).await.unwrap().unwrap();
    let from = [JobStatus::ValidatingFiles, JobStatus::Queued];
    assert!(store
        .transition(&job.id, &from, JobStatus::Running, now)
        .await
        .unwrap());
    job.id
}

#[sqlx::test(migrations = false)]
async fn job_counts_group_by_status_and_count_what_a_worker_could_claim(pool: SqlitePool) {
    let store = store(pool).await;
    assert_eq!(store.job_counts(100).await.unwrap(), Default::default());
    for id in ["ftjob-1", "ftjob-2", "ftjob-3", "ftjob-4"] {
        create(&store, id, 100).await;
    }
    let cancel = [JobStatus::ValidatingFiles];
    assert!(store
        .transition("ftjob-1", &cancel, JobStatus::Cancelled, 100)
        .await
        .unwrap());
    // ftjob-2 runs (leased until 130); ftjob-3 is claimed while validating (leased too).
    let running = start(&store, "w1", 100).await;
    assert_eq!(running, "ftjob-2");
    let claimed = store.claim_next("w2", 100, LEASE).await.unwrap().unwrap();
    assert_eq!(claimed.id, "ftjob-3");

    let counts = store.job_counts(110).await.unwrap();
    assert_eq!(counts.of(JobStatus::Cancelled), 1);
    assert_eq!(counts.of(JobStatus::Running), 1);
    assert_eq!(counts.of(JobStatus::ValidatingFiles), 2);
    assert_eq!(counts.of(JobStatus::Succeeded), 0);
    assert_eq!(counts.by_status.len(), 3);
    // Only ftjob-4 is free to claim; once ftjob-3's lease lapses, it is too.
    assert_eq!(counts.waiting, 1);
    assert_eq!(store.job_counts(100 + LEASE).await.unwrap().waiting, 2);
}

#[sqlx::test(migrations = false)]
async fn claim_next_leases_the_oldest_claimable_job(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    create(&store, "ftjob-2", 100).await;
    create(&store, "ftjob-3", 100).await;
    store
        .transition(
            "ftjob-1",
            &[JobStatus::ValidatingFiles],
            JobStatus::Cancelled,
            100,
        )
        .await
        .unwrap();

    let claimed = store.claim_next("w1", 200, LEASE).await.unwrap().unwrap();
    assert_eq!(claimed.id, "ftjob-2");
    assert_eq!(
        claimed.status,
        JobStatus::ValidatingFiles,
        "claim keeps the status"
    );
    assert_eq!(claimed.lease_owner.as_deref(), Some("w1"));
    assert_eq!((claimed.lease_expires_at, claimed.attempts), (Some(230), 1));

    let second = store.claim_next("w2", 201, LEASE).await.unwrap().unwrap();
    assert_eq!(second.id, "ftjob-3");
    assert!(store.claim_next("w3", 229, LEASE).await.unwrap().is_none());

    // After the lease expires the job is claimable again, counting a second attempt.
    let again = store.claim_next("w3", 230, LEASE).await.unwrap().unwrap();
    assert_eq!((again.id.as_str(), again.attempts), ("ftjob-2", 2));
    assert_eq!(again.lease_owner.as_deref(), Some("w3"));
}

#[sqlx::test(migrations = false)]
async fn heartbeat_extends_the_lease_and_reports_the_status(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    let id = start(&store, "w1", 100).await;
    assert_eq!(
        store.heartbeat(&id, "w1", 120, LEASE).await.unwrap(),
        Some(JobStatus::Running)
    );
    assert_eq!(
        store.get_job(&id).await.unwrap().unwrap().lease_expires_at,
        Some(150)
    );
    assert_eq!(store.heartbeat(&id, "w2", 121, LEASE).await.unwrap(), None);
    assert_eq!(
        store.heartbeat("ftjob-x", "w1", 121, LEASE).await.unwrap(),
        None
    );

    let cancel = EventRow::info(&id, "Job cancelled", 125);
    store
        .request_control(&id, ControlAction::Cancel, &cancel, 125)
        .await
        .unwrap();
    assert_eq!(
        store.heartbeat(&id, "w1", 126, LEASE).await.unwrap(),
        Some(JobStatus::Cancelled)
    );
}

#[sqlx::test(migrations = false)]
async fn requeue_expired_requeues_fails_and_pauses(pool: SqlitePool) {
    let store = store(pool).await;
    for id in ["ftjob-1", "ftjob-2", "ftjob-3", "ftjob-4"] {
        create(&store, id, 100).await;
    }
    let running = start(&store, "w1", 100).await; // ftjob-1, expires 130
    let validating = store
        .claim_next("w2", 100, LEASE)
        .await
        .unwrap()
        .unwrap()
        .id; // ftjob-2
    let pausing = start(&store, "w3", 100).await; // ftjob-3
    let pause = EventRow::info(&pausing, "Pausing", 101);
    store
        .request_control(&pausing, ControlAction::Pause, &pause, 101)
        .await
        .unwrap();
    let healthy = start(&store, "w4", 120).await; // ftjob-4, expires 150

    // At 130 nothing has expired yet (expiry is strictly before now).
    assert!(store.requeue_expired(130, 3).await.unwrap().is_empty());
    let mut ids = store.requeue_expired(131, 3).await.unwrap();
    ids.sort();
    assert_eq!(ids, [running.clone(), validating.clone(), pausing.clone()]);
    assert_eq!(status(&store, &running).await, JobStatus::Queued);
    assert_eq!(
        status(&store, &validating).await,
        JobStatus::ValidatingFiles
    );
    assert_eq!(status(&store, &pausing).await, JobStatus::Paused);
    assert_eq!(status(&store, &healthy).await, JobStatus::Running);
    let job = store.get_job(&running).await.unwrap().unwrap();
    assert_eq!((job.lease_owner, job.lease_expires_at), (None, None));
    assert_eq!(
        store.heartbeat(&running, "w1", 132, LEASE).await.unwrap(),
        None
    );

    // Used-up attempts fail the job instead.
    let reclaimed = store.claim_next("w5", 140, LEASE).await.unwrap().unwrap();
    assert_eq!(
        (reclaimed.id.as_str(), reclaimed.attempts),
        (running.as_str(), 2)
    );
    let mut ids = store.requeue_expired(171, 2).await.unwrap();
    ids.sort();
    assert_eq!(ids, [running.clone(), healthy.clone()]);
    let failed = store.get_job(&running).await.unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.finished_at, Some(171));
    assert_eq!(failed.error.unwrap()["code"], "worker_lost");
    assert_eq!(status(&store, &healthy).await, JobStatus::Queued);
}

pub(super) fn lease(id: &str, owner: &str) -> Lease {
    Lease {
        job_id: id.to_string(),
        owner: owner.to_string(),
    }
}

#[sqlx::test(migrations = false)]
async fn release_hands_the_job_back(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    create(&store, "ftjob-2", 100).await;
    let shutdown = start(&store, "w1", 100).await;
    let paused = start(&store, "w2", 100).await;
    let clean = Handback::Clean;

    assert!(!store
        .release(&lease(&shutdown, "w2"), JobStatus::Queued, clean, None)
        .await
        .unwrap());
    assert!(store
        .release(&lease(&shutdown, "w1"), JobStatus::Queued, clean, None)
        .await
        .unwrap());
    let job = store.get_job(&shutdown).await.unwrap().unwrap();
    assert_eq!((job.status, job.lease_owner), (JobStatus::Queued, None));
    assert_eq!(job.attempts, 0, "a clean hand-back gives the attempt back");

    let pause = EventRow::info(&paused, "Pausing", 101);
    store
        .request_control(&paused, ControlAction::Pause, &pause, 101)
        .await
        .unwrap();
    assert_eq!(status(&store, &paused).await, JobStatus::Pausing);
    let done = EventRow::info(&paused, "Fine-tuning job paused at step 3", 102);
    assert!(store
        .release(&lease(&paused, "w2"), JobStatus::Paused, clean, Some(&done))
        .await
        .unwrap());
    assert_eq!(status(&store, &paused).await, JobStatus::Paused);
    assert_eq!(
        store.list_events(&paused, None, 1).await.unwrap().data[0].message,
        "Fine-tuning job paused at step 3"
    );
    assert!(!store
        .release(&lease(&paused, "w2"), JobStatus::Succeeded, clean, None)
        .await
        .unwrap());
    // The released job is claimable at once.
    let next = store.claim_next("w3", 102, LEASE).await.unwrap().unwrap();
    assert_eq!(next.id, shutdown);
}

/// The succeeded transition and its closing events are one commit; a cancel first wins.
#[sqlx::test(migrations = false)]
async fn finish_succeeded_only_from_running(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    create(&store, "ftjob-2", 100).await;
    let won = start(&store, "w1", 100).await;
    let files = vec!["file-results".to_string(), "file-report".to_string()];
    let closing = [EventRow::info(
        &won,
        "The job has successfully completed",
        150,
    )];
    assert!(store
        .finish_succeeded(
            &lease(&won, "w1"),
            "ft:m:temper::abcd1234",
            999,
            &files,
            &closing,
            150
        )
        .await
        .unwrap());
    let job = store.get_job(&won).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(
        job.fine_tuned_model.as_deref(),
        Some("ft:m:temper::abcd1234")
    );
    assert_eq!(
        (job.trained_tokens, job.finished_at),
        (Some(999), Some(150))
    );
    assert_eq!(job.result_files, files);
    assert_eq!(job.lease_owner, None);
    assert_eq!(
        store.list_events(&won, None, 1).await.unwrap().data[0].message,
        "The job has successfully completed"
    );

    // A cancel that lands first wins; the late success changes nothing.
    let lost = start(&store, "w2", 100).await;
    let cancel = EventRow::info(&lost, "Cancelled", 140);
    store
        .request_control(&lost, ControlAction::Cancel, &cancel, 140)
        .await
        .unwrap();
    let late = [EventRow::info(&lost, "late", 150)];
    assert!(!store
        .finish_succeeded(&lease(&lost, "w2"), "ft:x", 1, &files, &late, 150)
        .await
        .unwrap());
    let job = store.get_job(&lost).await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.fine_tuned_model, job.finished_at),
        (JobStatus::Cancelled, None, Some(140))
    );
    assert_eq!(
        store.list_events(&lost, None, 1).await.unwrap().data[0].message,
        "Cancelled"
    );
}

#[sqlx::test(migrations = false)]
async fn finish_failed_from_any_unfinished_state(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    let error = json!({"code": "invalid_training_file", "message": "Example 3: bad", "param": "training_file"});
    assert!(store.finish_failed("ftjob-1", &error, 120).await.unwrap());
    let job = store.get_job("ftjob-1").await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.finished_at),
        (JobStatus::Failed, Some(120))
    );
    assert_eq!(job.error, Some(error.clone()));
    assert!(!store.finish_failed("ftjob-1", &error, 121).await.unwrap());
}

#[sqlx::test(migrations = false)]
async fn request_control_follows_the_lifecycle(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    let event = |message: &str| EventRow::info("ftjob-1", message, 110);

    let paused = store
        .request_control("ftjob-1", ControlAction::Pause, &event("Paused"), 110)
        .await
        .unwrap();
    assert!(matches!(&paused, ControlOutcome::Applied(job) if job.status == JobStatus::Paused));
    let again = store
        .request_control("ftjob-1", ControlAction::Pause, &event("Paused"), 111)
        .await
        .unwrap();
    assert_eq!(again, ControlOutcome::NotAllowed(JobStatus::Paused));
    let resumed = store
        .request_control("ftjob-1", ControlAction::Resume, &event("Resumed"), 112)
        .await
        .unwrap();
    assert!(matches!(&resumed, ControlOutcome::Applied(job) if job.status == JobStatus::Queued));
    let cancelled = store
        .request_control("ftjob-1", ControlAction::Cancel, &event("Cancelled"), 113)
        .await
        .unwrap();
    let ControlOutcome::Applied(job) = cancelled else {
        panic!("cancel applies")
    };
    assert_eq!(
        (job.status, job.finished_at),
        (JobStatus::Cancelled, Some(113))
    );
    let late = store
        .request_control("ftjob-1", ControlAction::Resume, &event("Resumed"), 114)
        .await
        .unwrap();
    assert_eq!(late, ControlOutcome::NotAllowed(JobStatus::Cancelled));
    // Applied actions wrote their events; refused ones did not (1 creation + 3).
    assert_eq!(
        store
            .list_events("ftjob-1", None, 20)
            .await
            .unwrap()
            .data
            .len(),
        4
    );
    let missing = store
        .request_control("ftjob-x", ControlAction::Cancel, &event("x"), 115)
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)));
}

#[sqlx::test(migrations = false)]
async fn resume_clears_a_stale_lease(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    // A worker claimed the queued job, then the user paused and resumed it.
    store.claim_next("w1", 100, LEASE).await.unwrap().unwrap();
    let event = EventRow::info("ftjob-1", "x", 101);
    store
        .request_control("ftjob-1", ControlAction::Pause, &event, 101)
        .await
        .unwrap();
    assert_eq!(
        store.heartbeat("ftjob-1", "w1", 102, LEASE).await.unwrap(),
        Some(JobStatus::Paused)
    );
    let event = EventRow::info("ftjob-1", "y", 103);
    store
        .request_control("ftjob-1", ControlAction::Resume, &event, 103)
        .await
        .unwrap();
    assert_eq!(
        store.heartbeat("ftjob-1", "w1", 104, LEASE).await.unwrap(),
        None
    );
    let next = store.claim_next("w2", 104, LEASE).await.unwrap().unwrap();
    assert_eq!((next.id.as_str(), next.attempts), ("ftjob-1", 2));
}

#[tokio::test]
async fn concurrent_claims_never_share_a_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("temper.db"))
        .await
        .expect("open");
    for id in ["ftjob-1", "ftjob-2", "ftjob-3"] {
        create(&store, id, 100).await;
    }
    let claims = (0..8).map(|n| {
        let store = store.clone();
        tokio::spawn(async move { store.claim_next(&format!("w{n}"), 200, LEASE).await })
    });
    let mut claimed = Vec::new();
    for claim in claims {
        if let Some(job) = claim.await.unwrap().unwrap() {
            claimed.push(job.id);
        }
    }
    claimed.sort();
    assert_eq!(claimed, ["ftjob-1", "ftjob-2", "ftjob-3"]);
}
