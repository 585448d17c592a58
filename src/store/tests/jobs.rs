use serde_json::json;
use sqlx::SqlitePool;

use super::{create, store};
use crate::domain::job::JobStatus;
use crate::store::{EventRow, JobRow, Lease, StoreError};

fn ids(rows: &[JobRow]) -> Vec<&str> {
    rows.iter().map(|j| j.id.as_str()).collect()
}

#[sqlx::test(migrations = false)]
async fn create_job_writes_the_job_and_its_event(pool: SqlitePool) {
    let store = store(pool).await;
    let mut job = JobRow::new("ftjob-1".into(), "org/base".into(), "file-t".into(), 7, 100);
    job.validation_file = Some("file-v".into());
    job.suffix = Some("mine".into());
    job.metadata = Some(json!({"team": "search", "n": 3}));
    job.method = json!({"type": "supervised", "supervised": {"hyperparameters": {}}});
    job.hyperparameters = json!({"batch_size": "auto"});
    let event = EventRow::info("ftjob-1", "Created fine-tuning job: ftjob-1", 100);
    store.create_job(&job, &event).await.unwrap();

    assert_eq!(store.get_job("ftjob-1").await.unwrap(), Some(job.clone()));
    let events = store.list_events("ftjob-1", None, 10).await.unwrap();
    assert_eq!(events.data, vec![event]);
    assert_eq!(store.get_job("ftjob-none").await.unwrap(), None);
}

#[sqlx::test(migrations = false)]
async fn create_job_is_atomic_when_the_event_fails(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    // The event reuses an existing event id, so its insert fails after the job insert.
    let existing = store.list_events("ftjob-1", None, 1).await.unwrap().data;
    let job = JobRow::new("ftjob-2".into(), "m".into(), "file-t".into(), 1, 101);
    let mut event = existing[0].clone();
    event.job_id = "ftjob-2".into();
    assert!(store.create_job(&job, &event).await.is_err());
    assert_eq!(store.get_job("ftjob-2").await.unwrap(), None);
    let duplicate = store
        .create_job(
            &JobRow {
                id: "ftjob-1".into(),
                ..job
            },
            &event,
        )
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict(_))),
        "{duplicate:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn list_jobs_is_newest_first_with_cursor_and_metadata_filter(pool: SqlitePool) {
    let store = store(pool).await;
    for (n, team) in [(1, "a"), (2, "b"), (3, "a"), (4, "a"), (5, "b")] {
        let id = format!("ftjob-{n}");
        let mut job = JobRow::new(id.clone(), "m".into(), "file-t".into(), 1, 100);
        job.metadata = Some(json!({ "team": team }));
        store
            .create_job(&job, &EventRow::info(&id, "Created", 100))
            .await
            .unwrap();
    }
    let page = store.list_jobs(None, 2, None).await.unwrap();
    assert_eq!(ids(&page.data), ["ftjob-5", "ftjob-4"]);
    assert!(page.has_more);
    let page = store.list_jobs(Some("ftjob-4"), 2, None).await.unwrap();
    assert_eq!(ids(&page.data), ["ftjob-3", "ftjob-2"]);
    assert!(page.has_more);
    let page = store.list_jobs(Some("ftjob-2"), 2, None).await.unwrap();
    assert_eq!(ids(&page.data), ["ftjob-1"]);
    assert!(!page.has_more);

    let team_a = store.list_jobs(None, 2, Some(("team", "a"))).await.unwrap();
    assert_eq!(ids(&team_a.data), ["ftjob-4", "ftjob-3"]);
    assert!(team_a.has_more);
    let team_a = store
        .list_jobs(Some("ftjob-3"), 2, Some(("team", "a")))
        .await
        .unwrap();
    assert_eq!(ids(&team_a.data), ["ftjob-1"]);
    assert!(!team_a.has_more);
    let none = store
        .list_jobs(None, 10, Some(("team", "c")))
        .await
        .unwrap();
    assert!(none.data.is_empty());
    let none = store
        .list_jobs(None, 10, Some(("owner", "a")))
        .await
        .unwrap();
    assert!(none.data.is_empty());
}

#[sqlx::test(migrations = false)]
async fn transition_is_compare_and_set(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    let from = [JobStatus::ValidatingFiles];
    assert!(store
        .transition("ftjob-1", &from, JobStatus::Queued, 101)
        .await
        .unwrap());
    assert!(!store
        .transition("ftjob-1", &from, JobStatus::Queued, 102)
        .await
        .unwrap());
    assert!(!store
        .transition("ftjob-x", &from, JobStatus::Queued, 102)
        .await
        .unwrap());

    let queued = [JobStatus::Queued];
    assert!(store
        .transition("ftjob-1", &queued, JobStatus::Running, 103)
        .await
        .unwrap());
    let job = store.get_job("ftjob-1").await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.started_at, job.finished_at),
        (JobStatus::Running, Some(103), None)
    );
    assert_eq!(job.updated_at, 103);

    let any = [JobStatus::Queued, JobStatus::Running];
    assert!(store
        .transition("ftjob-1", &any, JobStatus::Cancelled, 110)
        .await
        .unwrap());
    let job = store.get_job("ftjob-1").await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.started_at, job.finished_at),
        (JobStatus::Cancelled, Some(103), Some(110))
    );
    assert!(!store
        .transition("ftjob-1", &any, JobStatus::Failed, 111)
        .await
        .unwrap());
    assert!(!store
        .transition("ftjob-1", &[], JobStatus::Failed, 111)
        .await
        .unwrap());
}

#[sqlx::test(migrations = false)]
async fn set_hyperparameters_and_progress_update_the_row(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    store.claim_next("w1", 100, 30).await.unwrap().unwrap();
    let lease = Lease {
        job_id: "ftjob-1".to_string(),
        owner: "w1".to_string(),
    };
    let hyper = json!({"batch_size": 8, "learning_rate_multiplier": 1.8, "n_epochs": 3});
    let method = json!({"type": "supervised", "supervised": {"hyperparameters": hyper.clone()}});
    assert!(store
        .leased_hyperparameters(&lease, &hyper, &method, Some("classification"))
        .await
        .unwrap());
    assert!(store
        .leased_progress(&lease, Some(500), Some(12_345))
        .await
        .unwrap());
    let job = store.get_job("ftjob-1").await.unwrap().unwrap();
    assert_eq!(job.hyperparameters, hyper);
    assert_eq!(job.method, method);
    assert_eq!(job.task.as_deref(), Some("classification"));
    assert_eq!(
        (job.estimated_finish, job.trained_tokens),
        (Some(500), Some(12_345))
    );
    assert!(store
        .leased_progress(&lease, None, Some(20_000))
        .await
        .unwrap());
    let job = store.get_job("ftjob-1").await.unwrap().unwrap();
    assert_eq!(
        (job.estimated_finish, job.trained_tokens),
        (None, Some(20_000))
    );

    let missing = Lease {
        job_id: "ftjob-x".to_string(),
        owner: "w1".to_string(),
    };
    assert!(!store.leased_progress(&missing, None, None).await.unwrap());
    assert!(!store
        .leased_hyperparameters(&missing, &hyper, &method, None)
        .await
        .unwrap());
}
