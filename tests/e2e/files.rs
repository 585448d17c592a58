//! Files lifecycle: upload → list → retrieve → content (byte-identical) → delete.

use crate::common::{sentiment_jsonl, TestServer};

#[tokio::test]
async fn files_lifecycle() {
    let server = TestServer::spawn().await;
    let content = sentiment_jsonl(20);
    let (status, file) = server
        .upload("fine-tune", "train.jsonl", content.clone())
        .await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["object"], "file");
    assert_eq!(file["status"], "processed");
    assert_eq!(file["filename"], "train.jsonl");
    assert_eq!(file["bytes"].as_u64(), Some(content.len() as u64));
    let id = file["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("file-"));
    let (_, other) = server
        .upload("assistants", "notes.txt", b"hello".to_vec())
        .await;

    let (status, list) = server.get("/v1/files").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [other["id"].as_str().expect("id"), id.as_str()],
        "newest first"
    );
    let (_, filtered) = server.get("/v1/files?purpose=fine-tune&limit=1").await;
    assert_eq!(filtered["data"][0]["id"], id.as_str());
    assert_eq!(filtered["has_more"], false);
    let (_, page) = server.get("/v1/files?limit=1&order=asc").await;
    assert_eq!(page["data"][0]["id"], id.as_str());
    assert_eq!(page["has_more"], true);
    assert_eq!(page["last_id"], id.as_str());

    let (status, retrieved) = server.get(&format!("/v1/files/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(retrieved, file);

    let reply = server
        .client
        .get(server.url(&format!("/v1/files/{id}/content")))
        .send()
        .await
        .expect("content");
    assert_eq!(reply.status().as_u16(), 200);
    assert!(reply.headers().contains_key("x-request-id"));
    assert_eq!(reply.bytes().await.expect("bytes").to_vec(), content);

    let (status, deleted) = server.delete(&format!("/v1/files/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        deleted,
        serde_json::json!({"id": id, "object": "file", "deleted": true})
    );
    let (status, _) = server.get(&format!("/v1/files/{id}")).await;
    assert_eq!(status, 404);
    assert!(!server.data_dir.join("files").join(&id).exists());
}
