//! `POST /v1/token_classifications` through the router, over the stub's NER model.

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::{assert_envelope, harness, BUSY_MODEL};

pub(super) const NER_MODEL: &str = "ft:test-org/tiny:temper::ner00000";

#[tokio::test]
async fn entities_come_back_per_text_grouped_or_per_token() {
    let h = harness(&[], 1 << 20).await;
    let grouped = h
        .post(
            "/v1/token_classifications",
            json!({"model": NER_MODEL, "input": ["paris is nice", "rome too"]}),
        )
        .await;
    assert_eq!(grouped.status, StatusCode::OK);
    let body = grouped.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], NER_MODEL);
    assert!(body["id"].as_str().expect("id").starts_with("tokcls-"));
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(
        body["data"][1]["entities"],
        json!([{"entity_group": "LOC", "score": 0.75, "word": "rome", "start": 0, "end": 4}])
    );
    let tokens = h
        .post(
            "/v1/token_classifications",
            json!({"model": NER_MODEL, "input": "paris is nice", "aggregation": "none"}),
        )
        .await
        .json();
    assert_eq!(
        tokens["data"],
        json!([{"index": 0, "entities": [
            {"entity": "B-LOC", "score": 0.75, "index": 1, "word": "paris", "start": 0, "end": 5}
        ]}])
    );
}

#[tokio::test]
async fn bad_requests_unknown_models_and_a_full_queue_get_the_envelope() {
    let h = harness(&[], 1 << 20).await;
    for (body, param) in [
        (json!({"model": NER_MODEL}), "input"),
        (json!({"model": NER_MODEL, "input": []}), "input"),
        (
            json!({"model": NER_MODEL, "input": vec!["x"; 1025]}),
            "input",
        ),
        (
            json!({"model": NER_MODEL, "input": "x", "aggregation": "max"}),
            "aggregation",
        ),
        (json!({"input": "x"}), "model"),
    ] {
        let reply = h.post("/v1/token_classifications", body.clone()).await;
        assert_envelope(&reply, StatusCode::BAD_REQUEST, Some(param));
    }
    // The stub's classifier is a model of another kind: not found by this endpoint.
    let other_kind = h
        .post(
            "/v1/token_classifications",
            json!({"model": "ft:test-org/tiny:temper::abcd1234", "input": "x"}),
        )
        .await;
    let error = assert_envelope(&other_kind, StatusCode::NOT_FOUND, Some("model"));
    assert_eq!(error["code"], "model_not_found");
    let busy = h
        .call(
            Method::POST,
            "/v1/token_classifications",
            Some(json!({"model": BUSY_MODEL, "input": "x"})),
        )
        .await;
    let error = assert_envelope(&busy, StatusCode::TOO_MANY_REQUESTS, None);
    assert_eq!(error["code"], "rate_limit_exceeded");
}
