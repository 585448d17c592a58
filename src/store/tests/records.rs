//! Events, checkpoints and models.
use serde_json::json;
use sqlx::SqlitePool;

use super::queue::{lease, start};
use super::{create, store};
use crate::store::{CheckpointRow, EventRow, ModelRow, StoreError};

fn checkpoint(job_id: &str, step: i64) -> CheckpointRow {
    CheckpointRow {
        id: format!("ftckpt_{step}"),
        job_id: job_id.to_string(),
        created_at: 100 + step,
        step_number: step,
        fine_tuned_model_checkpoint: format!("ft:m:temper::abcd1234:ckpt-step-{step}"),
        metrics: json!({"step": step, "train_loss": 0.5}),
        artifact_dir: format!("jobs/{job_id}/checkpoints/step-{step}"),
    }
}

fn model(id: &str, job_id: Option<&str>, step: Option<i64>) -> ModelRow {
    ModelRow {
        id: id.to_string(),
        created_at: 200,
        owned_by: "temper".to_string(),
        job_id: job_id.map(str::to_string),
        base_model: Some("org/base".to_string()),
        kind: "classifier".to_string(),
        artifact_dir: "jobs/x/checkpoints/step-1".to_string(),
        step,
        is_checkpoint: step.is_some(),
        registered_adapter: false,
    }
}

/// A checkpoint row of `job_id` at `step` (shared with the lease tests).
pub(super) fn checkpoint_row(job_id: &str, step: i64) -> CheckpointRow {
    checkpoint(job_id, step)
}

/// A servable checkpoint model row named `id`.
pub(super) fn model_row(id: &str) -> ModelRow {
    model(id, Some("ftjob-1"), Some(1))
}

#[sqlx::test(migrations = false)]
async fn list_events_is_newest_first_and_pages_by_last_id(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    create(&store, "ftjob-2", 100).await;
    let mut inserted = Vec::new();
    for step in 1..=4 {
        // Same second for all: order comes from insertion.
        let data = json!({"step": step, "train_loss": 1.0 / step as f64});
        let event = EventRow::metrics("ftjob-1", format!("Step {step}/4"), data, 101);
        store.insert_event(&event).await.unwrap();
        inserted.push(event);
    }
    let page = store.list_events("ftjob-1", None, 3).await.unwrap();
    let messages: Vec<&str> = page.data.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, ["Step 4/4", "Step 3/4", "Step 2/4"]);
    assert!(page.has_more);
    assert_eq!(page.data[0], inserted[3]);
    assert_eq!(page.data[0].kind, "metrics");
    assert_eq!(page.data[0].data.as_ref().unwrap()["step"], 4);

    let last = page.data[2].id.clone();
    let page = store.list_events("ftjob-1", Some(&last), 3).await.unwrap();
    let messages: Vec<&str> = page.data.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, ["Step 1/4", "Created fine-tuning job: ftjob-1"]);
    assert!(!page.has_more);
    assert_eq!(page.data[1].data, None);
    assert_eq!(
        store
            .list_events("ftjob-2", None, 10)
            .await
            .unwrap()
            .data
            .len(),
        1
    );

    let orphan = EventRow::info("ftjob-none", "x", 1);
    assert!(
        store.insert_event(&orphan).await.is_err(),
        "foreign key holds"
    );
}

#[sqlx::test(migrations = false)]
async fn metric_events_are_all_of_a_jobs_metrics_oldest_first(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    create(&store, "ftjob-2", 100).await;
    assert_eq!(store.last_metric_event("ftjob-1").await.unwrap(), None);
    for step in 1..=3 {
        let data = json!({"step": step, "train_loss": 1.0 / step as f64});
        let event = EventRow::metrics("ftjob-1", format!("Step {step}/3"), data, 101);
        store.insert_event(&event).await.unwrap();
        let other = EventRow::info("ftjob-1", format!("message {step}"), 101);
        store.insert_event(&other).await.unwrap();
    }
    let other_job = EventRow::metrics("ftjob-2", "Step 9/9", json!({"step": 9}), 101);
    store.insert_event(&other_job).await.unwrap();

    let metrics = store.metric_events("ftjob-1").await.unwrap();
    let steps: Vec<i64> = metrics
        .iter()
        .map(|e| e.data.as_ref().unwrap()["step"].as_i64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3]);
    assert!(metrics.iter().all(|e| e.kind == "metrics"));
    let last = store.last_metric_event("ftjob-1").await.unwrap().unwrap();
    assert_eq!(last.message, "Step 3/3");
    let last = store.last_metric_event("ftjob-2").await.unwrap().unwrap();
    assert_eq!(last.data, Some(json!({"step": 9})));
}

#[sqlx::test(migrations = false)]
async fn checkpoints_list_newest_first_and_find_by_step(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    for step in [10, 20, 30] {
        store
            .insert_checkpoint(&checkpoint("ftjob-1", step))
            .await
            .unwrap();
    }
    let page = store.list_checkpoints("ftjob-1", None, 2).await.unwrap();
    let steps: Vec<i64> = page.data.iter().map(|c| c.step_number).collect();
    assert_eq!(steps, [30, 20]);
    assert!(page.has_more);
    let page = store
        .list_checkpoints("ftjob-1", Some("ftckpt_20"), 2)
        .await
        .unwrap();
    assert_eq!(page.data, vec![checkpoint("ftjob-1", 10)]);
    assert!(!page.has_more);

    assert_eq!(
        store.get_checkpoint_by_step("ftjob-1", 20).await.unwrap(),
        Some(checkpoint("ftjob-1", 20))
    );
    assert_eq!(
        store.get_checkpoint_by_step("ftjob-1", 25).await.unwrap(),
        None
    );
    let duplicate = store.insert_checkpoint(&checkpoint("ftjob-1", 10)).await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict(_))),
        "{duplicate:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn checkpoint_with_model_is_one_transaction(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-1", 100).await;
    start(&store, "w", 100).await;
    let held = lease("ftjob-1", "w");
    let ckpt = checkpoint("ftjob-1", 10);
    let servable = model(&ckpt.fine_tuned_model_checkpoint, Some("ftjob-1"), Some(10));
    assert!(store
        .leased_checkpoint(&held, Some(&ckpt), &servable)
        .await
        .unwrap());
    assert_eq!(
        store.get_model(&servable.id).await.unwrap(),
        Some(servable.clone())
    );

    // The model name is taken, so the second checkpoint must not be kept either.
    let mut second = checkpoint("ftjob-1", 20);
    second.id = "ftckpt_other".into();
    let clash = store
        .leased_checkpoint(&held, Some(&second), &servable)
        .await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
    assert_eq!(
        store.get_checkpoint_by_step("ftjob-1", 20).await.unwrap(),
        None
    );
}

#[sqlx::test(migrations = false)]
async fn models_insert_get_list_delete(pool: SqlitePool) {
    let store = store(pool).await;
    let ckpt = model(
        "ft:m:temper::abcd1234:ckpt-step-10",
        Some("ftjob-1"),
        Some(10),
    );
    let last = model("ft:m:temper::abcd1234", Some("ftjob-1"), None);
    let other = model("ft:m:temper::zzzz9999", Some("ftjob-2"), None);
    for row in [&ckpt, &last, &other] {
        store.insert_model(row).await.unwrap();
    }
    let again = store.insert_model(&last).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(store.get_model(&last.id).await.unwrap(), Some(last.clone()));
    assert_eq!(store.get_model("nope").await.unwrap(), None);
    assert_eq!(
        store.list_models().await.unwrap(),
        vec![ckpt.clone(), last.clone(), other.clone()]
    );
    assert_eq!(
        store.models_of_job("ftjob-1").await.unwrap(),
        vec![ckpt.clone(), last.clone()]
    );
    assert!(store.delete_model(&ckpt.id).await.unwrap());
    assert!(!store.delete_model(&ckpt.id).await.unwrap());
    assert_eq!(store.list_models().await.unwrap(), vec![last, other]);
}
