//! Token classification (NER) end to end with the tiny random encoder: CoNLL training and
//! JSONL validation uploads → job → entity F1 in the events → /v1/token_classifications
//! (offsets slice the text to each entity's word) → merged download; wrong kinds are 404.

use serde_json::{json, Value};

use crate::common::{assert_envelope, TestServer, BASE_MODEL};

/// Words of the tiny vocabulary, so every word is one token and its own entity word.
const SENTENCES: [(&str, &str); 4] = [
    ("i love the good film", "O O O B-LOC O"),
    ("we liked the music and the story", "O O O B-LOC I-LOC O O"),
    ("he was in the place", "B-PER O O O B-LOC"),
    ("the movie was really fun", "O O O O O"),
];

fn conll(n: usize) -> Vec<u8> {
    let mut out = String::from("-DOCSTART- O\n\n");
    for (words, tags) in SENTENCES.iter().cycle().take(n) {
        for (word, tag) in words.split(' ').zip(tags.split(' ')) {
            out.push_str(&format!("{word} {tag}\n"));
        }
        out.push('\n');
    }
    out.into_bytes()
}

fn jsonl(n: usize) -> Vec<u8> {
    SENTENCES
        .iter()
        .cycle()
        .take(n)
        .map(|(words, tags)| {
            let tokens: Vec<&str> = words.split(' ').collect();
            let tags: Vec<&str> = tags.split(' ').collect();
            json!({"tokens": tokens, "tags": tags}).to_string() + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

/// The characters `[start, end)` of `text` (offsets count characters, not bytes).
fn slice(text: &str, entity: &Value) -> String {
    let at = |key: &str| entity[key].as_u64().expect(key) as usize;
    text.chars()
        .skip(at("start"))
        .take(at("end") - at("start"))
        .collect()
}

#[tokio::test]
async fn token_classification_end_to_end() {
    let server = TestServer::spawn().await;
    let train = server.upload_ok("train.txt", conll(16)).await;
    let valid = server.upload_ok("valid.jsonl", jsonl(4)).await;
    let (done, model) = server
        .fine_tune_as_estimated(json!({
            "model": BASE_MODEL, "training_file": train, "validation_file": valid, "suffix": "ner",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 10, "batch_size": 4, "learning_rate_multiplier": 500}}},
        }))
        .await;
    let id = done["id"].as_str().expect("id").to_string();
    let evaluated: Vec<Value> = server
        .metrics_data(&id)
        .await
        .into_iter()
        .filter(|data| data["valid_entity_f1"].is_number())
        .collect();
    assert!(!evaluated.is_empty(), "no metrics event has entity F1");
    // 40 steps at 1e-2 (the default 2e-5 × 500) learn the four sentences' tags.
    let last = evaluated
        .iter()
        .max_by_key(|data| data["step"].as_u64())
        .expect("evaluations");
    assert_eq!(last["valid_entity_f1"], 1.0, "{last}");
    for name in [
        "valid_entity_precision",
        "valid_entity_recall",
        "valid_entity_f1",
        "valid_token_accuracy",
    ] {
        let value = evaluated[0][name].as_f64().expect(name);
        assert!((0.0..=1.0).contains(&value), "{name}: {}", evaluated[0]);
    }

    let texts = ["we liked the music and the story", "i love the good film"];
    // (label, word) of each entity per text, as the training tags say.
    let expected = |aggregation: &str| -> Vec<Vec<(&str, &str)>> {
        if aggregation == "simple" {
            vec![vec![("LOC", "music and")], vec![("LOC", "good")]]
        } else {
            vec![
                vec![("B-LOC", "music"), ("I-LOC", "and")],
                vec![("B-LOC", "good")],
            ]
        }
    };
    for aggregation in ["simple", "none"] {
        let (status, reply) = server
            .post(
                "/v1/token_classifications",
                json!({"model": model, "input": texts, "aggregation": aggregation}),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["object"], "list");
        assert_eq!(reply["model"], model.as_str());
        let data = reply["data"].as_array().expect("data");
        assert_eq!(data.len(), 2);
        for (i, (item, text)) in data.iter().zip(texts).enumerate() {
            assert_eq!(item["index"], i);
            let mut found = Vec::new();
            for entity in item["entities"].as_array().expect("entities") {
                let label = if aggregation == "simple" {
                    entity["entity_group"].as_str().expect("entity_group")
                } else {
                    assert!(entity["index"].as_u64().expect("index") >= 1, "{entity}");
                    entity["entity"].as_str().expect("entity")
                };
                assert!(["LOC", "PER", "B-LOC", "I-LOC", "B-PER", "I-PER"].contains(&label));
                assert_eq!(slice(text, entity), entity["word"], "{entity}");
                let score = entity["score"].as_f64().expect("score");
                assert!((0.0..=1.0).contains(&score), "{entity}");
                found.push((label, entity["word"].as_str().expect("word")));
            }
            assert_eq!(found, expected(aggregation)[i], "{reply}");
        }
    }
    // The default aggregation is `simple`.
    let (status, reply) = server
        .post(
            "/v1/token_classifications",
            json!({"model": model, "input": texts[0]}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let entities = reply["data"][0]["entities"].as_array().expect("entities");
    assert!(
        entities.iter().all(|e| e.get("entity").is_none()),
        "{reply}"
    );

    let (status, body) = server
        .post(
            "/v1/token_classifications",
            json!({"model": model, "input": "fun", "aggregation": "first"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_envelope(&body, Some("aggregation"));
    let (status, body) = server
        .post(
            "/v1/token_classifications",
            json!({"model": model, "input": []}),
        )
        .await;
    assert_eq!(status, 400);
    assert_envelope(&body, Some("input"));

    // Another kind's endpoint does not find this model (as this one does not find theirs:
    // tested in `infer`), and classification names the endpoint to use.
    let (status, body) = server
        .post(
            "/v1/question_answering",
            json!({"model": model, "question": "who?", "context": "he was"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    let (status, body) = server
        .post(
            "/v1/classifications",
            json!({"model": model, "input": "good"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_envelope(&body, Some("model"));

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
    assert_eq!(
        config["architectures"],
        json!(["BertForTokenClassification"])
    );
    assert_eq!(config["id2label"]["0"], "O");
    assert_eq!(config["label2id"]["B-LOC"], 1);
}
