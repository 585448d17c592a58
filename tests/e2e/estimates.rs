//! `POST /v1/fine_tuning/estimates` over HTTP: the estimate's object (every key the spec
//! lists), its numbers against the job then run with the same body, the next estimate's
//! duration from that run, and errors in the OpenAI envelope.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::common::{assert_envelope, job_body, sentiment_csv, sentiment_jsonl, TestServer};

const ESTIMATE_KEYS: [&str; 15] = [
    "object",
    "model",
    "task",
    "method",
    "auto_choices",
    "warnings",
    "training_examples",
    "validation_examples",
    "tokens_per_epoch",
    "trained_tokens",
    "n_epochs",
    "steps_per_epoch",
    "total_steps",
    "training_flops",
    "devices",
];

fn keys(object: &Value) -> BTreeSet<&str> {
    object
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

#[tokio::test]
async fn an_estimate_predicts_the_run_and_learns_its_pace() {
    let server = TestServer::spawn().await;
    let train = server.upload_ok("train.jsonl", sentiment_jsonl(20)).await;
    let valid = server.upload_ok("valid.csv", sentiment_csv(6)).await;
    let mut body = job_body(&train, json!({"n_epochs": 2, "batch_size": 8}));
    body["validation_file"] = json!(valid);

    let (status, estimate) = server.post("/v1/fine_tuning/estimates", body.clone()).await;
    assert_eq!(status, 200, "{estimate}");
    assert_eq!(keys(&estimate), BTreeSet::from(ESTIMATE_KEYS));
    assert_eq!(estimate["object"], "fine_tuning.estimate");
    assert_eq!(estimate["task"], "classification");
    assert_eq!(estimate["training_examples"], 20);
    assert_eq!(estimate["validation_examples"], 6);
    // 20 examples in batches of 8: 3 steps an epoch.
    assert_eq!(estimate["steps_per_epoch"], 3);
    assert_eq!(estimate["total_steps"], 6);
    // The method echoes what the job will run with: "auto" resolved.
    let hyper = &estimate["method"]["supervised"]["hyperparameters"];
    assert_eq!(hyper["n_epochs"], 2);
    assert!(hyper["learning_rate_multiplier"].is_number(), "{hyper}");
    let cpu = &estimate["devices"][0];
    assert_eq!(cpu["device"], "cpu");
    assert!(
        cpu["memory"]["total_bytes"].as_u64().unwrap_or(0) > 0,
        "{cpu}"
    );
    assert_eq!(cpu["memory"]["fits"], true, "{cpu}");
    assert_eq!(cpu["duration"]["basis"], "flops", "{cpu}");
    let (status, jobs) = server.get("/v1/fine_tuning/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(jobs["data"], json!([]), "an estimate creates no job");

    let (done, _) = server.fine_tune_to_success(body.clone()).await;
    assert_eq!(done["trained_tokens"], estimate["trained_tokens"]);
    let id = done["id"].as_str().expect("id");
    let steps: Vec<u64> = server
        .metrics_data(id)
        .await
        .iter()
        .filter_map(|data| data["step"].as_u64())
        .collect();
    assert_eq!(steps.iter().max(), Some(&6), "{steps:?}");

    let (status, again) = server.post("/v1/fine_tuning/estimates", body).await;
    assert_eq!(status, 200, "{again}");
    let duration = &again["devices"][0]["duration"];
    assert_eq!(duration["basis"], "history", "{duration}");
    assert_eq!(duration["history_jobs"], 1);
    assert_eq!(duration["unit"], "tokens");
    // The run's setup once, then its tokens at the run's training pace.
    let per_second = duration["per_second"].as_f64().expect("pace");
    let setup = duration["setup_seconds"].as_f64().expect("setup");
    let tokens = again["trained_tokens"].as_f64().expect("tokens");
    let seconds = duration["seconds"].as_f64().expect("seconds");
    assert!(setup >= 0.0 && setup < seconds, "{duration}");
    assert!(
        (seconds - (setup + tokens / per_second)).abs() <= 1e-9 * seconds,
        "{duration}"
    );
}

#[tokio::test]
async fn estimate_errors_come_in_the_envelope() {
    let server = TestServer::spawn().await;
    let (status, body) = server
        .post(
            "/v1/fine_tuning/estimates",
            job_body("file-nope", json!({})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_envelope(&body, Some("training_file"));

    let train = server.upload_ok("train.jsonl", sentiment_jsonl(12)).await;
    let (status, body) = server
        .post(
            "/v1/fine_tuning/estimates",
            job_body(&train, json!({"n_epochs": 0})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_envelope(&body, Some("n_epochs"));

    // A training file the job would reject: too few examples, said at once.
    let few = server.upload_ok("few.jsonl", sentiment_jsonl(4)).await;
    let (status, body) = server
        .post("/v1/fine_tuning/estimates", job_body(&few, json!({})))
        .await;
    assert_eq!(status, 400, "{body}");
    let error = assert_envelope(&body, Some("training_file"));
    assert_eq!(error["code"], "invalid_n_examples", "{body}");
}
