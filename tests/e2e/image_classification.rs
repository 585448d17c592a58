//! Image classification end to end with the tiny random EfficientNet-Lite fixture (timm
//! layout): a zip of class folders → job with gradual unfreezing → accuracy per epoch →
//! /v1/classifications with data-URL images → timm-layout download. Bad archives and bad
//! image inputs get OpenAI's envelope naming what is wrong.

use std::io::Write;

use base64::Engine;
use serde_json::{json, Value};

use crate::common::{assert_envelope, sentiment_jsonl, TestServer};

const IMAGE_MODEL: &str = "timm/tiny-lite";

/// A noisy image that is mostly red or mostly blue, as PNG bytes.
fn png(red: bool, seed: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(24, 20, |x, y| {
        let noise = ((x * 7 + y * 13 + seed * 31) % 40) as u8;
        if red {
            image::Rgb([200 + noise / 2, noise, 30])
        } else {
            image::Rgb([noise, 40, 200 + noise / 2])
        }
    });
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("png");
    bytes
}

fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        writer.start_file(name.as_str(), options).expect("entry");
        writer.write_all(bytes).expect("write");
    }
    writer.finish().expect("zip").into_inner()
}

fn class_folders(n_per_class: u32, offset: u32) -> Vec<(String, Vec<u8>)> {
    (0..n_per_class)
        .flat_map(|i| {
            [
                (format!("red/{i}.png"), png(true, i + offset)),
                (format!("blue/{i}.png"), png(false, i + offset)),
            ]
        })
        .collect()
}

fn data_url(bytes: &[u8]) -> Value {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{encoded}")}})
}

/// The fixture copied into the server's models directory as `timm/tiny-lite`.
fn install_image_model(server: &TestServer) {
    let models = server.data_dir.with_file_name("models").join(IMAGE_MODEL);
    std::fs::create_dir_all(&models).expect("models dir");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vision/efficientnet_lite");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(file), models.join(file)).expect("copy fixture");
    }
}

#[tokio::test]
async fn image_classification_end_to_end() {
    let server = TestServer::spawn().await;
    install_image_model(&server);
    let train = server
        .upload_ok("train.zip", zip_of(&class_folders(8, 0)))
        .await;
    let valid = server
        .upload_ok("valid.zip", zip_of(&class_folders(3, 100)))
        .await;
    let (_, file) = server.get(&format!("/v1/files/{train}")).await;
    assert_eq!(file["status"], "processed", "{file}");

    let (done, model) = server
        .fine_tune_as_estimated(json!({
            "model": IMAGE_MODEL, "training_file": train, "validation_file": valid, "suffix": "img",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 6, "batch_size": 4, "learning_rate": 0.01,
                "unfreeze_schedule": [{"epoch": 2, "blocks": 1}]}}},
        }))
        .await;
    let id = done["id"].as_str().expect("id").to_string();
    let echoed = &done["method"]["supervised"]["hyperparameters"];
    assert_eq!(
        echoed["unfreeze_schedule"],
        json!([{"epoch": 2, "blocks": 1}]),
        "{echoed}"
    );
    assert_eq!(echoed["freeze_backbone"], true, "{echoed}");
    assert_eq!(echoed["optimizer"], "adamw", "{echoed}");
    let metrics = server.metrics_data(&id).await;
    // One validation per epoch: 16 images / batch 4 = 4 steps an epoch.
    let evaluated: Vec<&Value> = metrics
        .iter()
        .filter(|m| m["valid_accuracy"].is_number())
        .collect();
    assert_eq!(evaluated.len(), 6, "{metrics:?}");
    // Events list newest first: the last epoch's validation gets every image right.
    assert_eq!(evaluated[0]["valid_accuracy"], 1.0, "{metrics:?}");
    let (_, events) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
        .await;
    let messages: Vec<&str> = events["data"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("epoch 2: last 1 of 9")),
        "{messages:?}"
    );

    let images: Vec<(bool, Vec<u8>)> = (0..3)
        .flat_map(|i| [(true, png(true, 200 + i)), (false, png(false, 200 + i))])
        .collect();
    let input: Vec<Value> = images.iter().map(|(_, bytes)| data_url(bytes)).collect();
    let (status, reply) = server
        .post(
            "/v1/classifications",
            json!({"model": model, "input": input}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let data = reply["data"].as_array().expect("data");
    assert_eq!(data.len(), 6);
    for (row, (red, _)) in data.iter().zip(&images) {
        assert_eq!(row["label"], if *red { "red" } else { "blue" }, "{row}");
        let total: f64 = row["scores"]
            .as_object()
            .expect("scores")
            .values()
            .filter_map(Value::as_f64)
            .sum();
        assert!((total - 1.0).abs() < 1e-4, "{row}");
    }

    // temper never fetches; a text sent to an image model, or a broken image, is a 400.
    for (input, needle) in [
        (
            json!([{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]),
            "does not fetch",
        ),
        (json!("a red thing"), "classifies images"),
        (json!([data_url(b"not an image")]), "is not a png"),
    ] {
        let (status, body) = server
            .post(
                "/v1/classifications",
                json!({"model": model, "input": input}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        let error = assert_envelope(&body, Some("input"));
        assert!(
            error["message"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{needle}: {body}"
        );
    }

    let reply = server
        .client
        .get(server.url(&format!("/v1/fine_tuning/jobs/{id}/download?format=merged")))
        .send()
        .await
        .expect("download");
    assert_eq!(reply.status().as_u16(), 200);
    let archive = reply.bytes().await.expect("tar bytes");
    let mut tar = tar::Archive::new(archive.as_ref());
    let (mut config, mut weights) = (None, false);
    for entry in tar.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().to_string();
        weights |= name.ends_with("/model.safetensors");
        if name.ends_with("/config.json") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).expect("read");
            config = Some(serde_json::from_str::<Value>(&text).expect("json"));
        }
    }
    let config = config.expect("config.json in the download");
    assert!(weights, "model.safetensors in the download");
    assert_eq!(config["architecture"], "efficientnet_lite0");
    assert_eq!(config["label_names"], json!(["blue", "red"]));
    assert_eq!(config["num_classes"], 2);
}

#[tokio::test]
async fn bad_archives_and_mismatched_models_are_named() {
    let server = TestServer::spawn().await;
    install_image_model(&server);
    let mut entries = class_folders(2, 0);
    entries.push(("../outside/x.png".to_string(), png(true, 9)));
    let (status, file) = server
        .upload("fine-tune", "bad.zip", zip_of(&entries))
        .await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["status"], "error", "{file}");
    let details = file["status_details"].as_str().unwrap_or_default();
    assert!(
        details.contains("`../outside/x.png` has an absolute path or `..`"),
        "{details}"
    );

    // Text data on an image model fails the job with OpenAI's `invalid_model` code.
    let text = server.upload_ok("text.jsonl", sentiment_jsonl(12)).await;
    let job = server
        .create_job(json!({"model": IMAGE_MODEL, "training_file": text}))
        .await;
    let failed = server
        .wait_for_status(job["id"].as_str().expect("id"), "failed")
        .await;
    assert_eq!(failed["error"]["code"], "invalid_model", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("is an image model"),
        "{failed}"
    );
}
