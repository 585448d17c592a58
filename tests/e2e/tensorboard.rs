//! `format=tensorboard` read by TensorBoard itself: a tiny classification job with
//! validation runs, its event file is downloaded and loaded with TensorBoard's
//! `EventAccumulator` (tests/tensorboard/read_events.py), and every scalar must equal the
//! job's metrics events: same tags, steps, wall times and values (as f32).
//!
//! The Python comes from `TEMPER_TENSORBOARD_PYTHON` (scripts/tensorboard-test.sh sets it to
//! a venv with tensorboard; then a missing package is a failure), else `python3`; without
//! Python or tensorboard the test says "skipped:" and returns.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::{sentiment_csv, sentiment_jsonl, TestServer, BASE_MODEL};

const PYTHON_ENV: &str = "TEMPER_TENSORBOARD_PYTHON";

/// Each event data field of a classification job and the tag it must be shown under.
const CLASSIFICATION_TAGS: [(&str, &str); 7] = [
    ("train_loss", "train/loss"),
    ("train_accuracy", "train/accuracy"),
    ("valid_loss", "valid/loss"),
    ("valid_accuracy", "valid/accuracy"),
    ("valid_f1", "valid/f1"),
    ("learning_rate", "train/learning_rate"),
    ("total_steps", "train/total_steps"),
];

/// A Python that imports tensorboard, or why there is none.
fn tensorboard_python() -> Result<String, String> {
    let (python, explicit) = match std::env::var(PYTHON_ENV) {
        Ok(python) => (python, true),
        Err(_) => ("python3".to_string(), false),
    };
    let imports = Command::new(&python)
        .args(["-c", "import tensorboard"])
        .output()
        .map(|out| out.status.success());
    match imports {
        Ok(true) => Ok(python),
        _ if explicit => panic!("{PYTHON_ENV}={python} cannot import tensorboard"),
        Ok(false) => Err(format!("{python} has no tensorboard package")),
        Err(error) => Err(format!("no {python}: {error}")),
    }
}

/// The scalars TensorBoard reads from `log_dir`: `{"file_version", "scalars": {tag: [...]}}`.
fn read_with_tensorboard(python: &str, log_dir: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tensorboard/read_events.py");
    let out = Command::new(python)
        .arg(script)
        .arg(log_dir)
        .output()
        .expect("run read_events.py");
    assert!(
        out.status.success(),
        "read_events.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from read_events.py")
}

/// `(step, wall_time, value as f32)` points by tag, from the job's metrics events.
type Curves = BTreeMap<String, Vec<(i64, f64, f32)>>;

fn expected_curves(events: &Value) -> Curves {
    let mut curves = Curves::new();
    // The API lists newest first; the curves run oldest first.
    for event in events["data"].as_array().expect("events").iter().rev() {
        if event["type"] != "metrics" {
            continue;
        }
        let data = &event["data"];
        let step = data["step"].as_i64().expect("step");
        let wall_time = event["created_at"].as_i64().expect("created_at") as f64;
        for (field, tag) in CLASSIFICATION_TAGS {
            if let Some(value) = data[field].as_f64() {
                let point = (step, wall_time, value as f32);
                curves.entry(tag.to_string()).or_default().push(point);
            }
        }
    }
    curves
}

fn read_curves(read: &Value) -> Curves {
    let scalars = read["scalars"].as_object().expect("scalars");
    scalars
        .iter()
        .map(|(tag, points)| {
            let points = points
                .as_array()
                .expect("points")
                .iter()
                .map(|point| {
                    (
                        point["step"].as_i64().expect("step"),
                        point["wall_time"].as_f64().expect("wall_time"),
                        point["value"].as_f64().expect("value") as f32,
                    )
                })
                .collect();
            (tag.clone(), points)
        })
        .collect()
}

#[tokio::test]
async fn tensorboard_reads_a_jobs_metrics_from_the_download() {
    let python = match tensorboard_python() {
        Ok(python) => python,
        Err(why) => {
            println!("skipped: {why} (scripts/tensorboard-test.sh installs it)");
            return;
        }
    };
    let server = TestServer::spawn().await;
    let train = server.upload_ok("train.jsonl", sentiment_jsonl(16)).await;
    let valid = server.upload_ok("valid.csv", sentiment_csv(6)).await;
    let (job, _) = server
        .fine_tune_to_success(json!({
            "model": BASE_MODEL, "training_file": train, "validation_file": valid,
            "method": {"type": "supervised", "supervised": {"hyperparameters":
                {"n_epochs": 2, "batch_size": 4, "eval_steps": 2}}},
        }))
        .await;
    let id = job["id"].as_str().expect("id");
    let created_at = job["created_at"].as_i64().expect("created_at");

    let reply = server
        .client
        .get(server.url(&format!(
            "/v1/fine_tuning/jobs/{id}/download?format=tensorboard"
        )))
        .send()
        .await
        .expect("download");
    assert_eq!(reply.status(), 200);
    let archive = reply.bytes().await.expect("tar");
    let unpacked = tempfile::tempdir().expect("temp dir");
    tar::Archive::new(archive.as_ref())
        .unpack(unpacked.path())
        .expect("unpack");
    let run_dir = unpacked.path().join(id);
    let files: Vec<String> = std::fs::read_dir(&run_dir)
        .expect("the run's directory")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        files,
        vec![format!("events.out.tfevents.{created_at}.temper")]
    );

    let read = read_with_tensorboard(&python, &run_dir);
    assert_eq!(read["file_version"], json!(2.0), "{read}");
    let (status, events) = server
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(events["has_more"], false, "every event on one page");
    let expected = expected_curves(&events);
    // 8 steps (16 rows, batch 4, 2 epochs), validation at every second one.
    assert_eq!(expected["train/loss"].len(), 8, "{expected:?}");
    assert_eq!(expected["valid/loss"].len(), 4, "{expected:?}");
    let tags: Vec<&str> = CLASSIFICATION_TAGS.iter().map(|(_, tag)| *tag).collect();
    let read = read_curves(&read);
    assert_eq!(read.keys().map(String::as_str).collect::<Vec<_>>(), {
        let mut sorted = tags.clone();
        sorted.sort_unstable();
        sorted
    });
    assert_eq!(read, expected);
}
