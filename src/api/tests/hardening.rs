//! Handler tests for the limits and the hygiene of the HTTP surface: body limits, 429s,
//! normalised model ids, short echoes of bad values, the served contract.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::json;

use super::{assert_envelope, harness, labelled_jsonl, model_row, BUSY_MODEL};
use crate::api::{JSON_BODY_LIMIT_BYTES, OPENAPI_YAML};

#[tokio::test]
async fn an_oversized_json_body_is_413_request_too_large() {
    let h = harness(&[], 1 << 20).await;
    let padding = "x".repeat(JSON_BODY_LIMIT_BYTES);
    for uri in [
        "/v1/classifications",
        "/v1/fine_tuning/jobs",
        "/v1/chat/completions",
    ] {
        let body = json!({"model": "m", "input": padding});
        let reply = h.call(Method::POST, uri, Some(body)).await;
        let error = assert_envelope(&reply, StatusCode::PAYLOAD_TOO_LARGE, None);
        assert_eq!(error["code"], "request_too_large", "{uri}");
        assert_eq!(
            error["message"],
            "The request body is larger than the limit of 33554432 bytes."
        );
    }
    // Just under the limit is parsed (and then judged on its content).
    let body = json!({"model": "m", "input": "x".repeat(1024)});
    let reply = h
        .call(Method::POST, "/v1/classifications", Some(body))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_429_carries_retry_after() {
    let h = harness(&[], 1 << 20).await;
    let reply = h
        .call(
            Method::POST,
            "/v1/classifications",
            Some(json!({"model": BUSY_MODEL, "input": "x"})),
        )
        .await;
    let error = assert_envelope(&reply, StatusCode::TOO_MANY_REQUESTS, None);
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(
        reply.headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let not_found = h
        .call(
            Method::POST,
            "/v1/classifications",
            Some(json!({"model": "nope", "input": "x"})),
        )
        .await;
    assert!(not_found.headers.get(header::RETRY_AFTER).is_none());
}

#[tokio::test]
async fn model_ids_are_normalised_wherever_they_come_in() {
    let h = harness(&[], 1 << 20).await;
    let name = "ft:test-org/tiny:temper::abcd1234";
    h.state
        .store
        .insert_model(&model_row(name))
        .await
        .expect("insert");
    let train = h
        .upload("fine-tune", "t.jsonl", &labelled_jsonl(12))
        .await
        .json()["id"]
        .clone();
    for spelling in ["test-org/tiny/", " test-org//tiny ", "/test-org/tiny"] {
        let job = h
            .post(
                "/v1/fine_tuning/jobs",
                json!({"model": spelling, "training_file": train}),
            )
            .await;
        assert_eq!(job.status, StatusCode::OK, "{spelling:?}");
        assert_eq!(job.json()["model"], "test-org/tiny", "{spelling:?}");
    }
    for uri in ["/v1/models/test-org/tiny/", "/v1/models/test-org//tiny"] {
        let model = h.call(Method::GET, uri, None).await;
        assert_eq!(model.status, StatusCode::OK, "{uri}");
        assert_eq!(model.json()["id"], "test-org/tiny", "{uri}");
    }
    let model = h
        .call(Method::GET, &format!("/v1/models/{name}/"), None)
        .await;
    assert_eq!(model.json()["id"], name);
    let classified = h
        .post(
            "/v1/classifications",
            json!({"model": format!(" {name}/"), "input": "x"}),
        )
        .await;
    assert_eq!(classified.status, StatusCode::OK);
    assert_eq!(classified.json()["model"], name);
    // Still one base model and one fine-tuned model.
    let listed = h.call(Method::GET, "/v1/models", None).await.json();
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2), "{listed}");
}

#[tokio::test]
async fn errors_echo_at_most_a_short_prefix_of_a_bad_value() {
    let h = harness(&[], 1 << 20).await;
    let long = "z".repeat(5000);
    let cases = [
        (Method::GET, format!("/v1/fine_tuning/jobs/{long}"), None),
        (Method::GET, format!("/v1/files/{long}"), None),
        (Method::GET, format!("/v1/models/{long}"), None),
        (Method::GET, format!("/v1/{long}"), None),
        (
            Method::GET,
            format!("/v1/fine_tuning/jobs?limit={long}"),
            None,
        ),
        (Method::GET, format!("/v1/files?order={long}"), None),
        (
            Method::POST,
            "/v1/classifications".to_string(),
            Some(json!({"model": long, "input": "x"})),
        ),
        (
            Method::POST,
            "/v1/chat/completions".to_string(),
            Some(json!({"model": "m", "messages": [{"role": long, "content": "x"}]})),
        ),
        (
            Method::POST,
            "/v1/chat/completions".to_string(),
            Some(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "temperature": long}),
            ),
        ),
        (
            Method::POST,
            "/v1/fine_tuning/jobs".to_string(),
            Some(json!({"model": "test-org/tiny", "training_file": long})),
        ),
    ];
    for (method, uri, body) in cases {
        let reply = h.call(method.clone(), &uri, body).await;
        assert!(reply.status.is_client_error(), "{method} {uri}");
        let message = reply.json()["error"]["message"]
            .as_str()
            .expect("message")
            .to_string();
        assert!(
            message.contains("zzz…") && !message.contains(&"z".repeat(65)),
            "{method} {}: {message}",
            &uri[..uri.len().min(40)]
        );
        assert!(message.chars().count() < 300, "{message}");
    }
}

#[tokio::test]
async fn the_contract_is_served_without_a_key() {
    let h = harness(&["sk-good"], 1 << 20).await;
    let request = Request::get("/openapi.yaml").body(Body::empty());
    let reply = h.send(request.expect("request")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"application/yaml"[..])
    );
    assert_eq!(reply.body, OPENAPI_YAML.as_bytes());
    assert!(OPENAPI_YAML.starts_with("openapi: 3.1"));
}

/// A multipart body that ends without its closing boundary, its file's bytes in several
/// chunks (so the body ends while the file is being written to disk).
fn truncated_upload() -> Request<Body> {
    let boundary = "XtemperBOUNDARYx";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let line = b"{\"text\": \"more\", \"label\": \"y\"}\n".repeat(256);
    let mut parts: Vec<Result<bytes::Bytes, std::io::Error>> = vec![Ok(head.into())];
    parts.extend((0..4).map(|_| Ok(bytes::Bytes::from(line.clone()))));
    Request::post("/v1/files")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from_stream(futures::stream::iter(parts)))
        .expect("request")
}

/// The client's body ending early is its error (a 400 it can read), not ours (a 500 in the
/// logs); the e2e suite does the same with a real socket the client half-closes.
#[tokio::test]
async fn a_body_that_ends_mid_upload_is_a_400_not_a_500() {
    let h = harness(&[], 1 << 20).await;
    let reply = h.send(truncated_upload()).await;
    let error = assert_envelope(&reply, StatusCode::BAD_REQUEST, None);
    assert_eq!(error["code"], "invalid_multipart_body", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("incomplete data")),
        "{error}"
    );
    assert_eq!(
        h.call(Method::GET, "/v1/files", None).await.json()["data"],
        json!([])
    );
    let leftovers = std::fs::read_dir(h.state.blobs.root().join("files"))
        .expect("files dir")
        .count();
    assert_eq!(leftovers, 0);
}
