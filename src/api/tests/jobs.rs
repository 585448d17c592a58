//! Handler tests for `/v1/fine_tuning/jobs`: creation checks and the lifecycle.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};

use super::{assert_envelope, harness, labelled_jsonl, Harness, Reply};
use crate::domain::hyperparams::HyperparamRequest;
use crate::domain::job_spec::Method as FineTuneMethod;

async fn create_job(h: &Harness, body: Value) -> Reply {
    h.call(Method::POST, "/v1/fine_tuning/jobs", Some(body))
        .await
}

#[tokio::test]
async fn job_creation_checks_model_and_files() {
    let h = harness(&[], 1 << 20).await;
    let train = h
        .upload("fine-tune", "t.jsonl", &labelled_jsonl(12))
        .await
        .json()["id"]
        .clone();
    let other = h.upload("assistants", "a.txt", b"hello").await.json()["id"].clone();
    let broken = h
        .upload("fine-tune", "b.jsonl", b"{\"text\": \"a\"}\n")
        .await
        .json()["id"]
        .clone();
    let unknown_model =
        create_job(&h, json!({"model": "nobody/none", "training_file": train})).await;
    let error = assert_envelope(&unknown_model, StatusCode::NOT_FOUND, Some("model"));
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(
        error["message"],
        "The model `nobody/none` does not exist or you do not have access to it. Base models available: `test-org/tiny`."
    );
    // Without its org, a model's name still finds it.
    let no_org = create_job(&h, json!({"model": "tiny", "training_file": train})).await;
    let message = assert_envelope(&no_org, StatusCode::NOT_FOUND, Some("model"))["message"].clone();
    assert!(
        message
            .as_str()
            .is_some_and(|m| m.contains("Did you mean `test-org/tiny`?")),
        "{message}"
    );
    let unknown_file = create_job(
        &h,
        json!({"model": "test-org/tiny", "training_file": "file-nope"}),
    )
    .await;
    assert_envelope(&unknown_file, StatusCode::NOT_FOUND, Some("training_file"));
    let wrong_purpose = create_job(
        &h,
        json!({"model": "test-org/tiny", "training_file": other}),
    )
    .await;
    assert_envelope(
        &wrong_purpose,
        StatusCode::BAD_REQUEST,
        Some("training_file"),
    );
    let bad_validation = create_job(
        &h,
        json!({"model": "test-org/tiny", "training_file": train, "validation_file": broken}),
    )
    .await;
    assert_envelope(
        &bad_validation,
        StatusCode::BAD_REQUEST,
        Some("validation_file"),
    );
    let bad_hyper = create_job(
        &h,
        json!({"model": "test-org/tiny", "training_file": train,
               "method": {"type": "supervised", "supervised": {"hyperparameters": {"lora_rank": "big"}}}}),
    )
    .await;
    assert_envelope(&bad_hyper, StatusCode::BAD_REQUEST, Some("lora_rank"));
    let fine_tuned = create_job(
        &h,
        json!({"model": "ft:test-org/tiny:temper::abcd1234", "training_file": train}),
    )
    .await;
    assert_envelope(&fine_tuned, StatusCode::BAD_REQUEST, Some("model"));
    let malformed = h
        .send(
            Request::post("/v1/fine_tuning/jobs")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{not json"))
                .expect("request"),
        )
        .await;
    assert_envelope(&malformed, StatusCode::BAD_REQUEST, None);
}

#[tokio::test]
async fn jobs_follow_the_lifecycle_and_list_their_events() {
    let h = harness(&[], 1 << 20).await;
    let train = h
        .upload("fine-tune", "t.jsonl", &labelled_jsonl(12))
        .await
        .json()["id"]
        .clone();
    let job = create_job(
        &h,
        json!({"model": "test-org/tiny", "training_file": train, "suffix": "demo", "metadata": {"team": "a"}}),
    )
    .await
    .json();
    assert_eq!(job["object"], "fine_tuning.job");
    assert_eq!(job["status"], "validating_files");
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["user_provided_suffix"], "demo");
    assert!(job["seed"].is_i64(), "{job}");
    assert_eq!(job["hyperparameters"]["n_epochs"], "auto");
    let id = job["id"].as_str().expect("id").to_string();
    let events = h
        .call(
            Method::GET,
            &format!("/v1/fine_tuning/jobs/{id}/events"),
            None,
        )
        .await
        .json();
    assert_eq!(
        events["data"][0]["message"],
        format!("Created fine-tuning job: {id}")
    );
    let filtered = h
        .call(Method::GET, "/v1/fine_tuning/jobs?metadata[team]=a", None)
        .await
        .json();
    assert_eq!(filtered["data"].as_array().map(Vec::len), Some(1));
    let none = h
        .call(Method::GET, "/v1/fine_tuning/jobs?metadata[team]=b", None)
        .await
        .json();
    assert_eq!(none["data"], json!([]));
    let train_id = train.as_str().expect("file id");
    let in_use = h
        .call(Method::DELETE, &format!("/v1/files/{train_id}"), None)
        .await;
    assert_envelope(&in_use, StatusCode::BAD_REQUEST, Some("id"));
    let paused = h
        .call(
            Method::POST,
            &format!("/v1/fine_tuning/jobs/{id}/pause"),
            None,
        )
        .await
        .json();
    assert_eq!(paused["status"], "paused");
    let resumed = h
        .call(
            Method::POST,
            &format!("/v1/fine_tuning/jobs/{id}/resume"),
            None,
        )
        .await
        .json();
    assert_eq!(resumed["status"], "queued");
    let again = h
        .call(
            Method::POST,
            &format!("/v1/fine_tuning/jobs/{id}/resume"),
            None,
        )
        .await;
    let error = assert_envelope(&again, StatusCode::BAD_REQUEST, Some("id"));
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("`queued`")),
        "{error}"
    );
    let cancelled = h
        .call(
            Method::POST,
            &format!("/v1/fine_tuning/jobs/{id}/cancel"),
            None,
        )
        .await
        .json();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["finished_at"].is_i64());
    let twice = h
        .call(
            Method::POST,
            &format!("/v1/fine_tuning/jobs/{id}/cancel"),
            None,
        )
        .await;
    assert_envelope(&twice, StatusCode::BAD_REQUEST, Some("id"));
    let missing = h
        .call(Method::POST, "/v1/fine_tuning/jobs/ftjob-none/cancel", None)
        .await;
    assert_envelope(&missing, StatusCode::NOT_FOUND, Some("id"));
}

#[tokio::test]
async fn a_dpo_job_is_stored_typed_and_echoed_as_openai_does() {
    let h = harness(&[], 1 << 20).await;
    let train = h
        .upload("fine-tune", "t.jsonl", &labelled_jsonl(12))
        .await
        .json()["id"]
        .clone();
    let created = create_job(
        &h,
        json!({"model": "test-org/tiny", "training_file": train,
               "method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "lora_rank": 4}}}}),
    )
    .await;
    assert_eq!(created.status, StatusCode::OK);
    let job = created.json();
    assert_eq!(
        job["method"],
        json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto", "batch_size": "auto",
            "learning_rate_multiplier": "auto", "n_epochs": 2, "lora_rank": 4}}})
    );
    assert_eq!(job["hyperparameters"], json!({}));
    let id = job["id"].as_str().expect("id");
    let row = h
        .state
        .store
        .get_job(id)
        .await
        .expect("store")
        .expect("row");
    assert_eq!(
        row.spec.method,
        FineTuneMethod::Dpo {
            hyperparameters: HyperparamRequest {
                n_epochs: Some(2),
                lora_rank: Some(4),
                ..HyperparamRequest::default()
            },
            beta: None,
        }
    );
    // Retrieval echoes the same object.
    let retrieved = h
        .call(Method::GET, &format!("/v1/fine_tuning/jobs/{id}"), None)
        .await
        .json();
    assert_eq!(retrieved["method"], job["method"]);

    for beta in [json!(0), json!(3), json!("high")] {
        let bad = create_job(
            &h,
            json!({"model": "test-org/tiny", "training_file": train,
                   "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": beta}}}}),
        )
        .await;
        let error = assert_envelope(&bad, StatusCode::BAD_REQUEST, Some("beta"));
        assert_eq!(
            error["message"],
            "`beta` must be \"auto\" or a number greater than 0 and at most 2."
        );
    }
}
