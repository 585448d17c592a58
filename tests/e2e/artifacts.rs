//! Fine-tunes outlive the server's directories: their checkpoints name the base model by id
//! (`artifacts`), so the data and models dirs can move to another path and every model
//! still answers as before; a base replaced under the same id is refused with a 400 naming
//! it, never served under the fine-tune's adapters.

use serde_json::{json, Value};

use crate::common::{
    assert_envelope, sentiment_jsonl, TestOptions, TestServer, BASE_MODEL, DECODER_MODEL,
};

const TEXTS: [&str; 2] = ["good great happy film", "bad awful sad film"];

/// Each text's scores by label, as the model answers them.
async fn scores(server: &TestServer, model: &str) -> Vec<Value> {
    let (status, reply) = server
        .post(
            "/v1/classifications",
            json!({"model": model, "input": TEXTS}),
        )
        .await;
    assert_eq!(status, 200, "{model}: {reply}");
    let data = reply["data"].as_array().expect("data");
    data.iter().map(|item| item["scores"].clone()).collect()
}

/// The greedy reply of a chat model and its tokens' log-probabilities (`None` unless 200).
async fn greedy(server: &TestServer, model: &str) -> Option<(Value, Value)> {
    let (status, reply) = server
        .post(
            "/v1/chat/completions",
            json!({"model": model, "max_tokens": 6, "temperature": 0, "logprobs": true,
                   "messages": [{"role": "user", "content": "good film?"}]}),
        )
        .await;
    let choice = &reply["choices"][0];
    (status == 200).then(|| {
        (
            choice["message"]["content"].clone(),
            choice["logprobs"].clone(),
        )
    })
}

async fn trained(server: &TestServer, body: Value) -> String {
    let job = server.create_job(body).await;
    let id = job["id"].as_str().expect("id");
    let done = server.wait_for_status(id, "succeeded").await;
    done["fine_tuned_model"]
        .as_str()
        .expect("model")
        .to_string()
}

fn chat_jsonl(n: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..n {
        let (question, answer) = if i % 2 == 0 {
            ("good film?", "yes")
        } else {
            ("bad film?", "no")
        };
        let row = json!({"messages": [{"role": "user", "content": question},
                                      {"role": "assistant", "content": answer}]});
        out.push_str(&format!("{row}\n"));
    }
    out.into_bytes()
}

#[tokio::test]
async fn fine_tunes_follow_their_directories_and_refuse_a_replaced_base() {
    let server = TestServer::spawn().await;
    let texts = server.upload_ok("train.jsonl", sentiment_jsonl(12)).await;
    let chats = server.upload_ok("chat.jsonl", chat_jsonl(12)).await;
    let hyper = |lora: bool| match lora {
        true => json!({"n_epochs": 2, "batch_size": 4, "lora_rank": 4, "lora_alpha": 8,
                       "learning_rate": 0.01}),
        false => json!({"n_epochs": 1, "batch_size": 4}),
    };
    let job = |model: &str, file: &str, hyperparameters: Value| {
        json!({"model": model, "training_file": file, "method": {"type": "supervised",
               "supervised": {"hyperparameters": hyperparameters}}})
    };
    // A LoRA classifier (served over the shared base), a full one (its own model) and a
    // LoRA chat model (an adapter over the base decoder).
    let lora = trained(&server, job(BASE_MODEL, &texts, hyper(true))).await;
    let full = trained(&server, job(BASE_MODEL, &texts, hyper(false))).await;
    let chat = trained(&server, job(DECODER_MODEL, &chats, hyper(true))).await;
    let before = (
        scores(&server, &lora).await,
        scores(&server, &full).await,
        greedy(&server, &chat).await,
    );
    assert!(before.2.is_some(), "the chat model answers");

    // The whole install moves: data dir and models dir under another root.
    let old_root = server.stop().await;
    let new_root = tempfile::tempdir().expect("new root");
    for dir in ["data", "models"] {
        std::fs::rename(old_root.path().join(dir), new_root.path().join(dir)).expect("move");
    }
    drop(old_root);
    let server = TestServer::start(new_root, TestOptions::default()).await;
    let after = (
        scores(&server, &lora).await,
        scores(&server, &full).await,
        greedy(&server, &chat).await,
    );
    assert_eq!(after, before, "the models answer as before the move");

    // Another model put under the base's ids: every fine-tune of it is refused, by name.
    let root = server.stop().await;
    let models = root.path().join("models");
    temper::zoo::testing::write_tiny_bert(&models.join(BASE_MODEL), 8).expect("other BERT");
    temper::zoo::testing::write_tiny_decoder(
        &models.join(DECODER_MODEL),
        temper::zoo::decoder::DecoderArch::Llama,
        8,
    )
    .expect("other decoder");
    let server = TestServer::start(root, TestOptions::default()).await;
    for (model, path) in [
        (&lora, "/v1/classifications"),
        (&full, "/v1/classifications"),
        (&chat, "/v1/chat/completions"),
    ] {
        let body = match path {
            "/v1/classifications" => json!({"model": model, "input": TEXTS}),
            _ => json!({"model": model, "max_tokens": 2,
                        "messages": [{"role": "user", "content": "good film?"}]}),
        };
        let (status, reply) = server.post(path, body).await;
        assert_eq!(status, 400, "{model}: {reply}");
        let error = assert_envelope(&reply, Some("model"));
        let message = error["message"].as_str().expect("message");
        assert!(
            message.contains(&format!("The model `{model}` cannot be served"))
                && message.contains("is not the one this checkpoint was trained over"),
            "{message}"
        );
    }
    // The bases themselves serve as the models they now are.
    assert!(greedy(&server, DECODER_MODEL).await.is_some());
}
