//! Task options at job creation: the training file's format decides the task, an option of
//! another task is a 400 naming it, a stride that leaves no window is a 400, and the job
//! object echoes what was given.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::{assert_envelope, harness, labelled_jsonl, Harness, Reply};

async fn create_job(h: &Harness, body: Value) -> Reply {
    h.call(Method::POST, "/v1/fine_tuning/jobs", Some(body))
        .await
}

fn squad_jsonl(n: usize) -> Vec<u8> {
    let row = json!({"context": "Paris is in France.", "question": "Where is Paris?",
        "answers": {"text": ["France"], "answer_start": [12]}});
    format!("{row}\n").repeat(n).into_bytes()
}

fn tags_jsonl(n: usize) -> Vec<u8> {
    let row = json!({"tokens": ["Paris", "is", "nice"], "tags": ["B-LOC", "O", "O"]});
    format!("{row}\n").repeat(n).into_bytes()
}

async fn upload(h: &Harness, name: &str, content: &[u8]) -> Value {
    let reply = h.upload("fine-tune", name, content).await;
    assert_eq!(reply.json()["status"], "processed", "{name}");
    reply.json()["id"].clone()
}

fn supervised(file: &Value, hyperparameters: Value) -> Value {
    json!({"model": "test-org/tiny", "training_file": file,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}})
}

#[tokio::test]
async fn an_option_of_another_task_is_a_400_naming_it() {
    let h = harness(&[], 1 << 20).await;
    let classification = upload(&h, "c.jsonl", &labelled_jsonl(12)).await;
    let squad = upload(&h, "q.jsonl", &squad_jsonl(12)).await;
    let tags = upload(&h, "t.jsonl", &tags_jsonl(12)).await;
    let refused = [
        (&classification, json!({"doc_stride": 64}), "doc_stride"),
        (
            &classification,
            json!({"max_answer_length": 5}),
            "max_answer_length",
        ),
        (
            &classification,
            json!({"label_all_tokens": true}),
            "label_all_tokens",
        ),
        (
            &classification,
            json!({"max_prompt_length": 64}),
            "max_prompt_length",
        ),
        (
            &squad,
            json!({"label_all_tokens": true}),
            "label_all_tokens",
        ),
        (&tags, json!({"doc_stride": 64}), "doc_stride"),
    ];
    for (file, hyper, param) in refused {
        let reply = create_job(&h, supervised(file, hyper.clone())).await;
        let error = assert_envelope(&reply, StatusCode::BAD_REQUEST, Some(param));
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("`{param}` is a hyperparameter of "))),
            "{hyper}: {error}"
        );
    }
    let error = assert_envelope(
        &create_job(&h, supervised(&classification, json!({"doc_stride": 64}))).await,
        StatusCode::BAD_REQUEST,
        Some("doc_stride"),
    );
    assert_eq!(
        error["message"],
        "`doc_stride` is a hyperparameter of extractive question answering (SQuAD data); this job's training data is text classification data"
    );
    // No job was stored for any of them.
    let list = h
        .call(Method::GET, "/v1/fine_tuning/jobs", None)
        .await
        .json();
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn a_stride_without_room_for_a_window_is_a_400() {
    let h = harness(&[], 1 << 20).await;
    let squad = upload(&h, "q.jsonl", &squad_jsonl(12)).await;
    // QA windows are 384 tokens unless `max_seq_len` says otherwise.
    for hyper in [
        json!({"doc_stride": 384}),
        json!({"doc_stride": 64, "max_seq_len": 64}),
    ] {
        let reply = create_job(&h, supervised(&squad, hyper.clone())).await;
        let error = assert_envelope(&reply, StatusCode::BAD_REQUEST, Some("doc_stride"));
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("must be less than `max_seq_len`")),
            "{hyper}: {error}"
        );
    }
    let zero = create_job(&h, supervised(&squad, json!({"max_answer_length": 0}))).await;
    assert_envelope(&zero, StatusCode::BAD_REQUEST, Some("max_answer_length"));
}

#[tokio::test]
async fn each_task_accepts_and_echoes_its_own_options() {
    let h = harness(&[], 1 << 20).await;
    let squad = upload(&h, "q.jsonl", &squad_jsonl(12)).await;
    let tags = upload(&h, "t.jsonl", &tags_jsonl(12)).await;
    let classification = upload(&h, "c.jsonl", &labelled_jsonl(12)).await;
    let qa = create_job(
        &h,
        supervised(&squad, json!({"doc_stride": 64, "max_answer_length": 5})),
    )
    .await;
    assert_eq!(qa.status, StatusCode::OK, "{}", qa.json());
    let echoed = &qa.json()["method"]["supervised"]["hyperparameters"];
    assert_eq!(
        (&echoed["doc_stride"], &echoed["max_answer_length"]),
        (&json!(64), &json!(5))
    );

    let ner = create_job(&h, supervised(&tags, json!({"label_all_tokens": true}))).await;
    assert_eq!(ner.status, StatusCode::OK, "{}", ner.json());
    assert_eq!(
        ner.json()["method"]["supervised"]["hyperparameters"]["label_all_tokens"],
        true
    );

    // A dpo job is DPO whatever its file holds: max_prompt_length is its option.
    let dpo = create_job(
        &h,
        json!({"model": "test-org/tiny", "training_file": classification,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"max_prompt_length": 64}}}}),
    )
    .await;
    assert_eq!(dpo.status, StatusCode::OK, "{}", dpo.json());
    assert_eq!(
        dpo.json()["method"]["dpo"]["hyperparameters"]["max_prompt_length"],
        64
    );
}
