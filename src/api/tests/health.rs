//! `/health`, `/health/ready` and `/health/live`: no key needed, the store and the worker
//! pool's tasks checked, what failed in the JSON.

use super::*;

/// Status and body of the three probes, in that order.
async fn probes(h: &Harness) -> Vec<(StatusCode, Value)> {
    let mut replies = Vec::new();
    for path in ["/health", "/health/ready", "/health/live"] {
        let reply = h.call(Method::GET, path, None).await;
        replies.push((reply.status, reply.json()));
    }
    replies
}

#[tokio::test]
async fn readiness_follows_the_store_and_the_workers_and_liveness_does_not() {
    // A key is configured: the probes need none.
    let h = harness(&["sk-good"], 1024).await;
    let (worker, requeue) = (h.state.workers.running(), h.state.workers.running());
    let replies = probes(&h).await;
    for (status, body) in &replies[..2] {
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(
            body,
            &json!({"status": "ok", "store": {"status": "ok"},
                "workers": {"status": "ok", "tasks": 2, "running": 2}})
        );
    }
    assert_eq!(replies[2], (StatusCode::OK, json!({"status": "ok"})));

    // A worker task ended (returned or panicked): not ready, still alive.
    drop(worker);
    let replies = probes(&h).await;
    for (status, body) in &replies[..2] {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "unavailable");
        assert_eq!(body["store"], json!({"status": "ok"}));
        assert_eq!(
            body["workers"],
            json!({"status": "error", "tasks": 2, "running": 1})
        );
    }
    assert_eq!(replies[2].0, StatusCode::OK);

    // The store stops answering too.
    h.state.store.close().await;
    let replies = probes(&h).await;
    for (status, body) in &replies[..2] {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["store"]["status"], "error");
        assert!(!body["store"]["error"].as_str().unwrap_or("").is_empty());
    }
    assert_eq!(replies[2].0, StatusCode::OK);
    drop(requeue);
}
