//! Extractive QA end to end with the tiny random encoder: SQuAD-layout upload → job →
//! EM/F1 metrics → /v1/question_answering → merged download; wrong-kind models are 404.

use serde_json::{json, Value};

use crate::common::{assert_envelope, TestServer, BASE_MODEL};

/// Words of the tiny vocabulary, so every context token is a real token.
const CONTEXTS: [(&str, &str, &str); 4] = [
    (
        "what was good?",
        "the movie was good and the food was bad",
        "movie",
    ),
    (
        "what was bad?",
        "the movie was good and the food was bad",
        "food",
    ),
    ("who was happy?", "he was happy but she was sad", "he"),
    (
        "what was fun?",
        "the story was boring but the music was really fun",
        "the music",
    ),
];

/// `n` questions in Hugging Face's SQuAD JSONL layout, plus one unanswerable (SQuAD v2).
fn squad_jsonl(n: usize) -> String {
    let mut lines: Vec<Value> = (0..n)
        .map(|i| {
            let (question, context, answer) = CONTEXTS[i % CONTEXTS.len()];
            let start = context.find(answer).expect("answer in context");
            json!({"id": format!("q{i}"), "question": question, "context": context,
                   "answers": {"text": [answer], "answer_start": [start]}})
        })
        .collect();
    lines.push(
        json!({"id": "none", "question": "who was sad?", "context": "the film was great",
                      "answers": {"text": [], "answer_start": []}}),
    );
    lines.iter().map(|line| format!("{line}\n")).collect()
}

#[tokio::test]
async fn question_answering_end_to_end() {
    let server = TestServer::spawn().await;
    let train = server
        .upload_ok("train.jsonl", squad_jsonl(16).into_bytes())
        .await;
    let valid = server
        .upload_ok("valid.jsonl", squad_jsonl(4).into_bytes())
        .await;
    let (_, file) = server.get(&format!("/v1/files/{train}")).await;
    assert_eq!(file["status"], "processed", "{file}");
    let (done, model) = server
        .fine_tune_as_estimated(json!({
            "model": BASE_MODEL, "training_file": train, "validation_file": valid, "suffix": "qa",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 50}}},
        }))
        .await;
    let id = done["id"].as_str().expect("id").to_string();
    let metrics = server.metrics_data(&id).await;
    let evaluated = metrics
        .iter()
        .find(|m| m["valid_f1"].is_number())
        .expect("a metrics event with validation scores");
    for name in ["valid_exact_match", "valid_f1", "valid_loss"] {
        let value = evaluated[name].as_f64().expect(name);
        assert!(value >= 0.0, "{name}: {evaluated}");
    }
    assert!(evaluated["valid_f1"].as_f64().expect("f1") <= 100.0);

    let result_files = done["result_files"].as_array().expect("result files");
    let mut names = Vec::new();
    for file in result_files {
        let (_, meta) = server
            .get(&format!("/v1/files/{}", file.as_str().expect("id")))
            .await;
        names.push(meta["filename"].as_str().unwrap_or_default().to_string());
    }
    assert!(names.iter().any(|n| n.ends_with(".csv")), "{names:?}");

    let context = "the movie was good and the food was bad";
    let (status, reply) = server
        .post(
            "/v1/question_answering",
            json!({"model": model, "question": "what was bad?", "context": context}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["object"], "list");
    let answer = &reply["data"][0];
    assert_eq!(answer["index"], 0);
    let (start, end) = (
        answer["start"].as_u64().expect("start") as usize,
        answer["end"].as_u64().expect("end") as usize,
    );
    let text = answer["answer"].as_str().expect("answer");
    assert_eq!(
        &context[start..end],
        text,
        "offsets point at the answer: {answer}"
    );
    let score = answer["score"].as_f64().expect("score");
    assert!((0.0..=1.0).contains(&score), "{answer}");

    let (status, reply) = server
        .post(
            "/v1/question_answering",
            json!({"model": model, "input": [
                {"question": "what was good?", "context": context},
                {"question": "who was happy?", "context": "he was happy but she was sad"},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["data"].as_array().expect("data").len(), 2);
    assert_eq!(reply["data"][1]["index"], 1);

    let (status, body) = server
        .post(
            "/v1/question_answering",
            json!({"model": model, "question": "q"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_envelope(&body, Some("context"));

    // A model of another kind is not found by this endpoint, nor this one by others.
    let (status, body) = server
        .post(
            "/v1/classifications",
            json!({"model": model, "input": "good"}),
        )
        .await;
    assert!(status == 400 || status == 404, "{status} {body}");

    let reply = server
        .client
        .get(server.url(&format!("/v1/fine_tuning/jobs/{id}/download?format=merged")))
        .send()
        .await
        .expect("download");
    assert_eq!(reply.status().as_u16(), 200);
    let archive = reply.bytes().await.expect("tar bytes");
    let mut tar = tar::Archive::new(archive.as_ref());
    let mut config = None;
    for entry in tar.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().to_string();
        if name.ends_with("/config.json") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).expect("read");
            config = Some(serde_json::from_str::<Value>(&text).expect("json"));
        }
    }
    let config = config.expect("config.json in the download");
    assert_eq!(config["architectures"], json!(["BertForQuestionAnswering"]));
}
