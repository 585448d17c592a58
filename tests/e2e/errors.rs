//! Bad input: each case asserts the status code AND the OpenAI envelope (or the file/job
//! error OpenAI reports instead of an HTTP error).

use serde_json::json;

use crate::common::{
    assert_envelope, job_body, sentiment_jsonl, TestOptions, TestServer, BASE_MODEL, DECODER_MODEL,
};

#[tokio::test]
async fn bad_training_files_are_marked_with_their_line() {
    let server = TestServer::spawn().await;
    let mut malformed = sentiment_jsonl(4);
    malformed.extend_from_slice(b"{\"text\": \"broken\", \"label\": \n");
    let (status, file) = server
        .upload("fine-tune", "malformed.jsonl", malformed)
        .await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["status"], "error");
    let details = file["status_details"].as_str().expect("details");
    assert!(details.contains("Example 5"), "{details}");

    let missing_label = b"{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\"}\n".to_vec();
    let (_, file) = server
        .upload("fine-tune", "nolabel.jsonl", missing_label)
        .await;
    assert_eq!(file["status"], "error");
    let details = file["status_details"].as_str().expect("details");
    assert!(
        details.contains("Example 2") && details.contains("label"),
        "{details}"
    );

    let headerless = b"good movie,positive\nbad movie,negative\n".to_vec();
    let (_, file) = server.upload("fine-tune", "noheader.csv", headerless).await;
    assert_eq!(file["status"], "error");
    let details = file["status_details"].as_str().expect("details");
    assert!(details.contains("text,label"), "{details}");

    let file_id = file["id"].as_str().expect("id");
    let (status, body) = server
        .post(
            "/v1/fine_tuning/jobs",
            json!({"model": BASE_MODEL, "training_file": file_id}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        assert_envelope(&body, Some("training_file"))["code"],
        "invalid_training_file"
    );
}

#[tokio::test]
async fn too_few_examples_fail_the_job_with_openais_code() {
    let server = TestServer::spawn().await;
    let file = server.upload_ok("seven.jsonl", sentiment_jsonl(7)).await;
    let job = server
        .create_job(job_body(&file, json!({"n_epochs": 1})))
        .await;
    let id = job["id"].as_str().expect("id");
    let failed = server.wait_for_status(id, "failed").await;
    assert_eq!(failed["error"]["code"], "invalid_n_examples", "{failed}");
    assert_eq!(failed["error"]["param"], "training_file");
    assert!(
        failed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("7 example")),
        "{failed}"
    );
    assert_eq!(failed["fine_tuned_model"], serde_json::Value::Null);
    let (_, events) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/events"))
        .await;
    assert_eq!(events["data"][0]["level"], "error", "{events}");
}

#[tokio::test]
async fn creation_rejects_unknown_models_files_and_purposes() {
    let server = TestServer::spawn().await;
    let train = server.upload_ok("train.jsonl", sentiment_jsonl(12)).await;
    let (_, notes) = server
        .upload("assistants", "notes.txt", b"hi".to_vec())
        .await;

    let (status, body) = server
        .post(
            "/v1/fine_tuning/jobs",
            json!({"model": "nobody/nothing", "training_file": train}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        assert_envelope(&body, Some("model"))["code"],
        "model_not_found"
    );

    let (status, body) = server
        .post(
            "/v1/fine_tuning/jobs",
            json!({"model": BASE_MODEL, "training_file": "file-missing"}),
        )
        .await;
    assert_eq!(status, 404);
    assert_envelope(&body, Some("training_file"));

    let (status, body) = server
        .post(
            "/v1/fine_tuning/jobs",
            json!({"model": BASE_MODEL, "training_file": train, "validation_file": "file-missing"}),
        )
        .await;
    assert_eq!(status, 404);
    assert_envelope(&body, Some("validation_file"));

    let (status, body) = server
        .post(
            "/v1/fine_tuning/jobs",
            json!({"model": BASE_MODEL, "training_file": notes["id"]}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        assert_envelope(&body, Some("training_file"))["code"],
        "invalid_file_purpose"
    );

    let (status, body) = server
        .post(
            "/v1/fine_tuning/jobs",
            job_body(&train, json!({"learning_rate": 5})),
        )
        .await;
    assert_eq!(status, 400);
    assert_envelope(&body, Some("learning_rate"));

    let (status, body) = server.get("/v1/fine_tuning/jobs/ftjob-missing").await;
    assert_eq!(status, 404);
    assert_envelope(&body, Some("id"));
    let (status, body) = server.get("/v1/files/file-missing").await;
    assert_eq!(status, 404);
    assert_eq!(
        assert_envelope(&body, Some("id"))["message"],
        "No such File object: file-missing"
    );
}

#[tokio::test]
async fn oversized_uploads_get_413_and_leave_nothing_behind() {
    let server = TestServer::spawn_with(TestOptions {
        max_upload_bytes: Some(1024),
        ..TestOptions::default()
    })
    .await;
    let (status, body) = server
        .upload("fine-tune", "big.jsonl", sentiment_jsonl(200))
        .await;
    assert_eq!(status, 413, "{body}");
    assert_envelope(&body, Some("file"));
    let (_, list) = server.get("/v1/files").await;
    assert_eq!(list["data"], json!([]));
    let leftovers = std::fs::read_dir(server.data_dir.join("files"))
        .expect("files dir")
        .count();
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn api_keys_are_enforced() {
    let mut server = TestServer::spawn_with(TestOptions {
        api_keys: vec!["sk-right".to_string()],
        ..TestOptions::default()
    })
    .await;
    let (status, _) = server.get("/v1/models").await;
    assert_eq!(status, 200);
    server.token = Some("sk-wrong".to_string());
    let (status, body) = server.get("/v1/models").await;
    assert_eq!(status, 401);
    assert_eq!(assert_envelope(&body, None)["code"], "invalid_api_key");
    server.token = None;
    let (status, body) = server.get("/v1/files").await;
    assert_eq!(status, 401);
    assert_eq!(assert_envelope(&body, None)["code"], "invalid_api_key");
    let (status, _) = server.get("/health").await;
    assert_eq!(status, 200);
}

/// `bars/tiny-llama/`, `bars//tiny-llama` and ` bars/tiny-llama ` are the model
/// `bars/tiny-llama` for job creation, inference and `/v1/models/{id}`: never a second one.
#[tokio::test]
async fn model_ids_are_normalised_end_to_end() {
    let server = TestServer::spawn().await;
    let train = server.upload_ok("train.jsonl", sentiment_jsonl(12)).await;
    let job = server
        .create_job(
            json!({"model": format!("{BASE_MODEL}/"), "training_file": train,
            "hyperparameters": {"n_epochs": 1}}),
        )
        .await;
    assert_eq!(job["model"], BASE_MODEL);
    let id = job["id"].as_str().expect("id");
    // Cancelled so it stops using the CPU; the tiny job may have finished already (it takes
    // tens of milliseconds), and then the cancel is OpenAI's 400 for a finished job.
    let (status, _) = server
        .post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), json!({}))
        .await;
    if status != 200 {
        assert_eq!(status, 400);
        let (_, job) = server.get(&format!("/v1/fine_tuning/jobs/{id}")).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }

    for spelling in [
        format!("{DECODER_MODEL}/"),
        DECODER_MODEL.replace('/', "//"),
        format!(" {DECODER_MODEL} "),
    ] {
        let (status, reply) = server
            .post(
                "/v1/chat/completions",
                json!({"model": spelling, "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(status, 200, "{spelling:?}: {reply}");
        assert_eq!(reply["model"], DECODER_MODEL, "{spelling:?}");
    }
    let (status, model) = server.get(&format!("/v1/models/{DECODER_MODEL}/")).await;
    assert_eq!(status, 200, "{model}");
    assert_eq!(model["id"], DECODER_MODEL);
    let (_, models) = server.get("/v1/models").await;
    // The base models once each; the job's own models too when it finished before the
    // cancel arrived (see above).
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .filter(|id| !id.starts_with("ft:"))
        .collect();
    assert_eq!(ids, [BASE_MODEL, DECODER_MODEL], "{models}");
}

/// A multipart body that ends before its closing boundary is the client's error: 400,
/// nothing stored.
#[tokio::test]
async fn a_truncated_upload_is_a_400_and_leaves_nothing_behind() {
    let server = TestServer::spawn().await;
    let body = "--B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n\
                --B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n\r\n\
                {\"text\": \"a\", \"label\": \"x\"}\n";
    let (status, reply) = server
        .send(
            server
                .client
                .post(server.url("/v1/files"))
                .header("content-type", "multipart/form-data; boundary=B")
                .body(body),
        )
        .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(
        assert_envelope(&reply, None)["code"],
        "invalid_multipart_body"
    );
    let (_, list) = server.get("/v1/files").await;
    assert_eq!(list["data"], json!([]));
}

/// A client that stops sending mid-upload and half-closes its socket (as one that gives
/// up does) reads a 400 `incomplete_request_body`; it was a 500 and an error in the log.
#[tokio::test]
async fn a_client_that_hangs_up_mid_upload_gets_a_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::spawn().await;
    let address = server.base_url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let mut request = b"POST /v1/files HTTP/1.1\r\nHost: temper\r\n\
        Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 10000000\r\n\r\n\
        --B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n\
        --B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n\r\n"
        .to_vec();
    request.extend(sentiment_jsonl(2000));
    socket.write_all(&request).await.expect("send");
    socket.shutdown().await.expect("half-close");
    let mut reply = String::new();
    socket.read_to_string(&mut reply).await.expect("reply");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(
        reply.contains("\"code\":\"incomplete_request_body\""),
        "{reply}"
    );
    let (_, list) = server.get("/v1/files").await;
    assert_eq!(list["data"], json!([]));
}

/// A JSON body over the limit is 413 `request_too_large` (it was a 400) over real HTTP.
#[tokio::test]
async fn oversized_json_bodies_are_413_over_real_http() {
    let server = TestServer::spawn().await;
    let padding = "x".repeat(temper::api::JSON_BODY_LIMIT_BYTES);
    let (status, reply) = server
        .post(
            "/v1/chat/completions",
            json!({"model": DECODER_MODEL, "messages": [{"role": "user", "content": padding}]}),
        )
        .await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(assert_envelope(&reply, None)["code"], "request_too_large");
}
