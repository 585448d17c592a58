use serde_json::{json, Value};
use sqlx::SqlitePool;

use super::{create, store};
use crate::domain::hyperparams::HyperparamRequest;
use crate::domain::job::JobStatus;
use crate::domain::job_spec::{JobSpec, Method, ResolvedHyperparameters};
use crate::domain::task::Task;
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
    job.spec = JobSpec {
        method: Method::Dpo {
            hyperparameters: HyperparamRequest {
                n_epochs: Some(2),
                lora_rank: Some(4),
                target_modules: Some(vec!["q_proj".into()]),
                ..HyperparamRequest::default()
            },
            beta: Some(0.25),
        },
    };
    let event = EventRow::info("ftjob-1", "Created fine-tuning job: ftjob-1", 100);
    store.create_job(&job, &event).await.unwrap();

    // The typed spec round-trips; listing decodes it too.
    assert_eq!(store.get_job("ftjob-1").await.unwrap(), Some(job.clone()));
    let listed = store.list_jobs(None, 10, None).await.unwrap().data;
    assert_eq!(listed, vec![job.clone()]);
    let events = store.list_events("ftjob-1", None, 10).await.unwrap();
    assert_eq!(events.data, vec![event]);
    assert_eq!(store.get_job("ftjob-none").await.unwrap(), None);
}

#[sqlx::test(migrations = false)]
async fn metrics_events_list_oldest_first_without_messages_or_other_jobs(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    create(&store, "ftjob-2", 100).await;
    // Written out of step order on purpose: the list follows the write order, not `step`.
    let written = [
        EventRow::metrics(
            "ftjob-1",
            "Step 3/4",
            json!({"step": 3, "train_loss": 0.5}),
            103,
        ),
        EventRow::info("ftjob-1", "Checkpoint saved", 104),
        EventRow::metrics(
            "ftjob-2",
            "Step 1/4",
            json!({"step": 1, "train_loss": 0.9}),
            105,
        ),
        EventRow::metrics(
            "ftjob-1",
            "Step 2/4",
            json!({"step": 2, "train_loss": 0.7}),
            106,
        ),
    ];
    for event in &written {
        store.insert_event(event).await.unwrap();
    }
    let listed = store.metric_events("ftjob-1").await.unwrap();
    assert_eq!(listed, vec![written[0].clone(), written[3].clone()]);
    assert_eq!(store.metric_events("ftjob-none").await.unwrap(), vec![]);
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
    let resolved = ResolvedHyperparameters {
        config: HyperparamRequest::default().resolve(Task::SequenceClassification, 40, 42),
        beta: Some(0.1),
    };
    assert!(store
        .leased_hyperparameters(&lease, &resolved, Some("classification"))
        .await
        .unwrap());
    assert!(store
        .leased_progress(&lease, Some(500), Some(12_345))
        .await
        .unwrap());
    let job = store.get_job("ftjob-1").await.unwrap().unwrap();
    assert_eq!(job.resolved.as_ref(), Some(&resolved));
    assert_eq!(job.spec, JobSpec::default(), "the spec is never rewritten");
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
        .leased_hyperparameters(&missing, &resolved, None)
        .await
        .unwrap());
}

/// A row as the code before `spec` wrote it: only the `method` / `hyperparameters` echo.
async fn insert_legacy_row(store: &crate::store::Store, id: &str, method: &Value, hyper: &Value) {
    sqlx::query(
        "INSERT INTO fine_tuning_jobs (id, created_at, model, training_file, seed, method, \
         hyperparameters, status, updated_at) VALUES (?, 100, 'org/base', 'file-t', 7, ?, ?, \
         'queued', 100)",
    )
    .bind(id)
    .bind(method.to_string())
    .bind(hyper.to_string())
    .execute(store.pool())
    .await
    .unwrap();
}

#[sqlx::test(migrations = false)]
async fn rows_made_before_specs_get_theirs_from_the_method_echo(pool: SqlitePool) {
    let store = store(pool).await;
    // Created, not resolved yet: "auto" and an extra key.
    let method = json!({"type": "supervised", "supervised": {"hyperparameters":
        {"n_epochs": 4, "batch_size": "auto", "learning_rate_multiplier": "auto", "lora_rank": 8}}});
    let legacy = json!({"n_epochs": 4, "batch_size": "auto", "learning_rate_multiplier": "auto"});
    insert_legacy_row(&store, "ftjob-old", &method, &legacy).await;
    // A DPO row (legacy object null) whose worker had resolved "auto" into the echo.
    let dpo = json!({"type": "dpo", "dpo": {"hyperparameters":
        {"beta": 0.3, "n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 1.0}}});
    insert_legacy_row(&store, "ftjob-old-dpo", &dpo, &Value::Null).await;

    let job = store.get_job("ftjob-old").await.unwrap().unwrap();
    assert_eq!(
        job.spec.method,
        Method::Supervised {
            hyperparameters: HyperparamRequest {
                n_epochs: Some(4),
                lora_rank: Some(8),
                ..HyperparamRequest::default()
            }
        }
    );
    assert_eq!(job.resolved, None);
    let job = store.get_job("ftjob-old-dpo").await.unwrap().unwrap();
    assert_eq!(
        job.spec.method,
        Method::Dpo {
            hyperparameters: HyperparamRequest {
                n_epochs: Some(2),
                batch_size: Some(8),
                learning_rate_multiplier: Some(1.0),
                ..HyperparamRequest::default()
            },
            beta: Some(0.3),
        }
    );
    // The queue's RETURNING decodes the same columns.
    let claimed = store.claim_next("w1", 100, 30).await.unwrap().unwrap();
    assert_eq!(claimed.id, "ftjob-old");
    assert_eq!(claimed.spec.method.hyperparameters().lora_rank, Some(8));
}
