//! The webhook outbox: the trigger writes one event per job end, whatever wrote the end.

use serde_json::json;
use sqlx::SqlitePool;

use super::{create, store};
use crate::domain::job::JobStatus;
use crate::store::{ControlAction, DeliveryCounts, EventRow};

#[sqlx::test(migrations = false)]
async fn every_way_a_job_ends_writes_exactly_one_event(pool: SqlitePool) {
    let store = store(pool).await;
    for id in ["ftjob-c", "ftjob-f", "ftjob-s", "ftjob-q"] {
        create(&store, id, 100).await;
    }
    let cancel = EventRow::info("ftjob-c", "Fine-tuning job cancelled", 101);
    store
        .request_control("ftjob-c", ControlAction::Cancel, &cancel, 101)
        .await
        .unwrap();
    let error = json!({"code": "x", "message": "y", "param": null});
    assert!(store.finish_failed("ftjob-f", &error, 102).await.unwrap());
    let running = [JobStatus::ValidatingFiles];
    assert!(store
        .transition("ftjob-s", &running, JobStatus::Running, 103)
        .await
        .unwrap());
    assert!(store
        .transition("ftjob-s", &[JobStatus::Running], JobStatus::Succeeded, 104)
        .await
        .unwrap());
    // A second final write (refused by the compare-and-set or not) adds nothing.
    assert!(!store.finish_failed("ftjob-s", &error, 105).await.unwrap());
    assert!(store
        .transition("ftjob-q", &running, JobStatus::Queued, 106)
        .await
        .unwrap());

    for (id, kind) in [
        ("ftjob-c", "fine_tuning.job.cancelled"),
        ("ftjob-f", "fine_tuning.job.failed"),
        ("ftjob-s", "fine_tuning.job.succeeded"),
    ] {
        let events = store.webhook_events_of(id).await.unwrap();
        assert_eq!(events.len(), 1, "{id}: {events:?}");
        assert_eq!(events[0].1, kind);
        assert!(events[0].0.starts_with("evt_") && events[0].0.len() == 28);
    }
    assert!(store.webhook_events_of("ftjob-q").await.unwrap().is_empty());
}

#[sqlx::test(migrations = false)]
async fn events_fan_out_once_per_endpoint_and_attempts_are_recorded(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-a", 100).await;
    let error = json!({"code": "x", "message": "y", "param": null});
    store.finish_failed("ftjob-a", &error, 101).await.unwrap();
    let urls = vec!["http://a.test/".to_string(), "http://b.test/".to_string()];
    assert_eq!(store.dispatch_webhook_events(&urls, 110).await.unwrap(), 1);
    // Dispatched events are not fanned out again.
    assert_eq!(store.dispatch_webhook_events(&urls, 111).await.unwrap(), 0);
    assert!(store
        .due_webhook_deliveries(&urls, 109, 10)
        .await
        .unwrap()
        .is_empty());
    let due = store.due_webhook_deliveries(&urls, 110, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(due[0].event_type, "fine_tuning.job.failed");
    assert_eq!(
        (due[0].job_id.as_str(), due[0].created_at),
        ("ftjob-a", 101)
    );
    assert_eq!(due[0].attempts, 0);
    let event = due[0].event_id.clone();

    store
        .webhook_delivered(&event, &urls[0], 112)
        .await
        .unwrap();
    store
        .webhook_attempt_failed(&event, &urls[1], "503", Some(120), 112)
        .await
        .unwrap();
    let later = store.due_webhook_deliveries(&urls, 119, 10).await.unwrap();
    assert!(later.is_empty(), "{later:?}");
    let retry = store.due_webhook_deliveries(&urls, 120, 10).await.unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!(
        (retry[0].url.as_str(), retry[0].attempts),
        ("http://b.test/", 1)
    );
    // An endpoint no longer configured is not attempted.
    assert!(store
        .due_webhook_deliveries(&urls[..1], 120, 10)
        .await
        .unwrap()
        .is_empty());
    store
        .webhook_attempt_failed(&event, &urls[1], "503", None, 121)
        .await
        .unwrap();
    let counts = store.webhook_delivery_counts().await.unwrap();
    assert_eq!(
        counts,
        DeliveryCounts {
            pending: 0,
            delivered: 1,
            abandoned: 1
        }
    );
}

#[sqlx::test(migrations = false)]
async fn without_endpoints_events_are_kept_but_never_delivered(pool: SqlitePool) {
    let store = store(pool).await;
    create(&store, "ftjob-a", 100).await;
    let cancel = EventRow::info("ftjob-a", "cancelled", 101);
    store
        .request_control("ftjob-a", ControlAction::Cancel, &cancel, 101)
        .await
        .unwrap();
    assert_eq!(store.dispatch_webhook_events(&[], 102).await.unwrap(), 1);
    // An endpoint configured later does not receive what ended before it.
    let urls = vec!["http://a.test/".to_string()];
    assert_eq!(store.dispatch_webhook_events(&urls, 103).await.unwrap(), 0);
    assert!(store
        .due_webhook_deliveries(&urls, 200, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.webhook_events_of("ftjob-a").await.unwrap().len(), 1);
}
