use sqlx::SqlitePool;

use super::{create, store};
use crate::domain::job::JobStatus;
use crate::store::{FileRow, SortOrder, StoreError};

pub(super) fn file(id: &str, purpose: &str, now: i64) -> FileRow {
    FileRow {
        id: id.to_string(),
        bytes: 1234,
        created_at: now,
        filename: format!("{id}.jsonl"),
        purpose: purpose.to_string(),
        status: "uploaded".to_string(),
        status_details: None,
        format: None,
        n_examples: None,
    }
}

fn ids(rows: &[FileRow]) -> Vec<&str> {
    rows.iter().map(|f| f.id.as_str()).collect()
}

#[sqlx::test(migrations = false)]
async fn insert_and_get_file_round_trip(pool: SqlitePool) {
    let store = store(pool).await;
    let row = file("file-a", "fine-tune", 10);
    store.insert_file(&row).await.unwrap();
    assert_eq!(store.get_file("file-a").await.unwrap(), Some(row.clone()));
    assert_eq!(store.get_file("file-missing").await.unwrap(), None);
    let again = store.insert_file(&row).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
}

#[sqlx::test(migrations = false)]
async fn list_files_pages_in_both_orders_and_filters_purpose(pool: SqlitePool) {
    let store = store(pool).await;
    // Same created_at for all: order must come from insertion order, not the clock.
    for (id, purpose) in [
        ("file-1", "fine-tune"),
        ("file-2", "fine-tune-results"),
        ("file-3", "fine-tune"),
        ("file-4", "fine-tune"),
    ] {
        store.insert_file(&file(id, purpose, 50)).await.unwrap();
    }
    let page = store
        .list_files(None, None, 2, SortOrder::Desc)
        .await
        .unwrap();
    assert_eq!(ids(&page.data), ["file-4", "file-3"]);
    assert!(page.has_more);
    let page = store
        .list_files(None, Some("file-3"), 2, SortOrder::Desc)
        .await
        .unwrap();
    assert_eq!(ids(&page.data), ["file-2", "file-1"]);
    assert!(!page.has_more, "exactly `limit` rows left means no more");

    let page = store
        .list_files(None, None, 3, SortOrder::Asc)
        .await
        .unwrap();
    assert_eq!(ids(&page.data), ["file-1", "file-2", "file-3"]);
    assert!(page.has_more);
    let page = store
        .list_files(None, Some("file-3"), 3, SortOrder::Asc)
        .await
        .unwrap();
    assert_eq!(ids(&page.data), ["file-4"]);
    assert!(!page.has_more);

    let page = store
        .list_files(Some("fine-tune"), None, 10, SortOrder::Desc)
        .await
        .unwrap();
    assert_eq!(ids(&page.data), ["file-4", "file-3", "file-1"]);
    let page = store
        .list_files(Some("fine-tune"), Some("file-3"), 10, SortOrder::Desc)
        .await
        .unwrap();
    assert_eq!(ids(&page.data), ["file-1"]);
    let unknown_cursor = store
        .list_files(None, Some("file-nope"), 10, SortOrder::Desc)
        .await
        .unwrap();
    assert!(unknown_cursor.data.is_empty());
}

#[sqlx::test(migrations = false)]
async fn update_file_status_records_validation(pool: SqlitePool) {
    let store = store(pool).await;
    store
        .insert_file(&file("file-a", "fine-tune", 10))
        .await
        .unwrap();
    store
        .update_file_status(
            "file-a",
            "processed",
            None,
            Some("classification"),
            Some(120),
        )
        .await
        .unwrap();
    let row = store.get_file("file-a").await.unwrap().unwrap();
    assert_eq!(row.status, "processed");
    assert_eq!(row.format.as_deref(), Some("classification"));
    assert_eq!(row.n_examples, Some(120));
    store
        .update_file_status("file-a", "error", Some("Example 3: bad"), None, None)
        .await
        .unwrap();
    let row = store.get_file("file-a").await.unwrap().unwrap();
    assert_eq!(
        (
            row.status.as_str(),
            row.status_details.as_deref(),
            row.n_examples
        ),
        ("error", Some("Example 3: bad"), None)
    );
    let missing = store
        .update_file_status("file-x", "processed", None, None, None)
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)));
}

#[sqlx::test(migrations = false)]
async fn delete_file_reports_whether_it_existed(pool: SqlitePool) {
    let store = store(pool).await;
    store
        .insert_file(&file("file-a", "fine-tune", 10))
        .await
        .unwrap();
    assert!(store.delete_file("file-a").await.unwrap());
    assert!(!store.delete_file("file-a").await.unwrap());
    assert_eq!(store.get_file("file-a").await.unwrap(), None);
}

#[sqlx::test(migrations = false)]
async fn file_in_use_while_a_job_is_unfinished(pool: SqlitePool) {
    let store = store(pool).await;
    assert!(!store.file_in_use("file-train").await.unwrap());
    let mut job = create(&store, "ftjob-1", 10).await;
    assert!(store.file_in_use("file-train").await.unwrap());
    assert!(!store.file_in_use("file-valid").await.unwrap());

    job.id = "ftjob-2".to_string();
    job.training_file = "file-other".to_string();
    job.validation_file = Some("file-valid".to_string());
    let event = crate::store::EventRow::info("ftjob-2", "Created", 11);
    store.create_job(&job, &event).await.unwrap();
    assert!(store.file_in_use("file-valid").await.unwrap());

    store
        .transition(
            "ftjob-1",
            &[JobStatus::ValidatingFiles],
            JobStatus::Cancelled,
            12,
        )
        .await
        .unwrap();
    assert!(!store.file_in_use("file-train").await.unwrap());
    let failed = serde_json::json!({"code": "x", "message": "y", "param": null});
    store.finish_failed("ftjob-2", &failed, 13).await.unwrap();
    assert!(!store.file_in_use("file-valid").await.unwrap());
}
