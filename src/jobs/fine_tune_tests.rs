//! The real runner on a tiny random BERT: a full job, bad inputs, and recovery after a
//! simulated SIGKILL.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::results::base64_decode;
use super::test_support::*;
use super::{
    ControlSignal, FineTuneRunner, JobFailure, JobRunner, Processed, RunContext, RunOutcome,
    Worker, WorkerPool,
};
use crate::blobs::Blobs;
use crate::domain::job::JobStatus;
use crate::train::RESULTS_CSV_HEADER;

pub(super) const MODEL: &str = "test-org/tiny-bert";

const POSITIVE: [&str; 5] = [
    "great movie, amazing acting",
    "wonderful story and nice music",
    "i love it, would recommend again",
    "amazing service, great place",
    "nice price, wonderful day",
];
const NEGATIVE: [&str; 5] = [
    "horrible plot and dull acting",
    "bad movie, never again",
    "poor service, horrible place",
    "dull story, bad music",
    "i would never recommend it",
];

pub(super) fn jsonl(rows: &[(&str, &str)]) -> Vec<u8> {
    rows.iter()
        .map(|(text, label)| json!({"text": text, "label": label}).to_string() + "\n")
        .collect::<String>()
        .into_bytes()
}

/// `n` examples alternating positive/negative.
pub(super) fn examples(n: usize) -> Vec<(&'static str, &'static str)> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                (POSITIVE[(i / 2) % 5], "positive")
            } else {
                (NEGATIVE[(i / 2) % 5], "negative")
            }
        })
        .collect()
}

pub(super) fn write_model(h: &Harness) {
    crate::zoo::testing::write_tiny_bert(&h.dir.path().join("models").join(MODEL), 7).unwrap();
}

/// 2 epochs of batches of 4, `"auto"` learning rate multiplier.
pub(super) fn two_epochs() -> Value {
    json!({"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": "auto"})
}

/// Uploads files and creates a job with these hyperparameters.
pub(super) async fn job_with(
    h: &Harness,
    train: &[u8],
    valid: Option<&[u8]>,
    hyper: Value,
) -> String {
    upload(&h.ctx, "file-train", train).await;
    let method = json!({"type": "supervised", "supervised": {"hyperparameters": hyper}});
    let id = create_job(&h.ctx, MODEL, "file-train", method).await;
    if let Some(valid) = valid {
        upload(&h.ctx, "file-valid", valid).await;
        sqlx::query("UPDATE fine_tuning_jobs SET validation_file = 'file-valid' WHERE id = ?")
            .bind(&id)
            .execute(h.ctx.store.pool())
            .await
            .unwrap();
    }
    id
}

pub(super) fn worker(h: &Harness, runner: impl JobRunner) -> Worker {
    Worker::new(
        h.ctx.clone(),
        Arc::new(runner),
        "cpu",
        CancellationToken::new(),
    )
}

/// Asserts `expected` appear in `messages` in this order (other messages may sit between).
pub(super) fn assert_in_order(messages: &[String], expected: &[&str]) {
    let mut rest = messages.iter();
    for want in expected {
        assert!(
            rest.any(|m| m.starts_with(want)),
            "`{want}` missing or out of order in {messages:#?}"
        );
    }
}

#[tokio::test]
async fn a_classification_job_trains_and_records_everything() {
    let h = harness().await;
    write_model(&h);
    let valid = jsonl(&examples(4));
    let id = job_with(&h, &jsonl(&examples(20)), Some(&valid), two_epochs()).await;
    let w = worker(&h, FineTuneRunner);
    assert_eq!(
        w.process_next().await.unwrap(),
        Processed::Succeeded(id.clone())
    );

    let row = job(&h.ctx, &id).await;
    let id8 = &id["ftjob-".len().."ftjob-".len() + 8];
    let model = format!("ft:{MODEL}:temper::{id8}");
    assert_eq!(row.fine_tuned_model.as_deref(), Some(model.as_str()));
    assert_eq!(resolved_knobs(&row), (4, 1.0, 2));
    assert_eq!(row.resolved.as_ref().unwrap().beta, None);
    assert_eq!(row.task.as_deref(), Some("classification"));
    assert!(row.trained_tokens.unwrap() > 0);

    let messages = messages(&h.ctx, &id).await;
    assert_in_order(
        &messages,
        &[
            &format!("Created fine-tuning job: {id}"),
            "Validating training file: file-train and validation file: file-valid",
            "Files validated, moving job to queued state",
            "Fine-tuning job started",
            "Step 1/10: training loss=",
            "Step 10/10: training loss=",
            &format!("New fine-tuned model created: {model}"),
            "The job has successfully completed",
        ],
    );
    assert_eq!(
        metric_steps(&h.ctx, &id).await,
        (1..=10).collect::<Vec<u64>>()
    );

    let checkpoints = h
        .ctx
        .store
        .list_checkpoints(&id, None, 100)
        .await
        .unwrap()
        .data;
    assert!(
        checkpoints.iter().any(|c| c.step_number == 10),
        "{checkpoints:?}"
    );
    for checkpoint in &checkpoints {
        let step = checkpoint.step_number;
        assert_eq!(
            checkpoint.fine_tuned_model_checkpoint,
            format!("{model}:ckpt-step-{step}")
        );
        assert_eq!(checkpoint.metrics["step"], json!(step));
        let row = h
            .ctx
            .store
            .get_model(&checkpoint.fine_tuned_model_checkpoint)
            .await
            .unwrap();
        assert!(row.unwrap().is_checkpoint);
        assert!(h
            .ctx
            .blobs
            .path(&checkpoint.artifact_dir)
            .join("meta.json")
            .is_file());
    }
    let final_model = h.ctx.store.get_model(&model).await.unwrap().unwrap();
    assert!(!final_model.is_checkpoint);
    assert!(h.ctx.blobs.path(&final_model.artifact_dir).is_dir());

    assert_eq!(row.result_files.len(), 2);
    let csv_file = h
        .ctx
        .store
        .get_file(&row.result_files[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (csv_file.purpose.as_str(), csv_file.filename.as_str()),
        ("fine-tune-results", "step_metrics.csv")
    );
    let encoded = h
        .ctx
        .blobs
        .read(&Blobs::file_rel(&csv_file.id))
        .await
        .unwrap();
    let csv =
        String::from_utf8(base64_decode(std::str::from_utf8(&encoded).unwrap()).unwrap()).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], RESULTS_CSV_HEADER);
    assert_eq!(lines.len(), 11, "{csv}");
    assert!(lines[10].starts_with("10,"));
    let report_file = h
        .ctx
        .store
        .get_file(&row.result_files[1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report_file.filename, "classification_report.json");
    let report = h
        .ctx
        .blobs
        .read(&Blobs::file_rel(&report_file.id))
        .await
        .unwrap();
    assert!(serde_json::from_slice::<Value>(&report)
        .unwrap()
        .is_object());
}

/// Files of one job, and the `(code, param, message prefix)` it must fail with.
type BadInput = (Vec<u8>, Option<Vec<u8>>, [&'static str; 3]);

#[tokio::test]
async fn bad_inputs_fail_with_openai_codes() {
    let bad_line = [jsonl(&examples(12)), b"{\"text\": \"x\"}\n".to_vec()].concat();
    let cases: [(&str, BadInput); 4] = [
        ("7 examples", (jsonl(&examples(7)), None, ["invalid_n_examples", "training_file",
            "Training file has 7 example(s), but must have at least 10 examples"])),
        ("missing label", (bad_line, None, ["invalid_training_file", "training_file",
            "The job failed due to an invalid training file. Invalid file format. Example 13"])),
        ("unknown validation label", (jsonl(&examples(10)), Some(jsonl(&[("great", "neutral")])),
            ["invalid_validation_file", "validation_file",
            "The job failed due to an invalid validation file. Example 1 has label 'neutral'"])),
        ("no base model", (jsonl(&examples(10)), None, ["invalid_model", "model",
            "The model `test-org/tiny-bert` does not exist"])),
    ];
    for (name, (train, valid, [code, param, message])) in cases {
        let h = harness().await;
        let id = job_with(&h, &train, valid.as_deref(), two_epochs()).await;
        assert_eq!(
            worker(&h, FineTuneRunner).process_next().await.unwrap(),
            Processed::Failed(id.clone()),
            "{name}"
        );
        let error = job(&h.ctx, &id).await.error.unwrap();
        assert_eq!(
            (error["code"].as_str(), error["param"].as_str()),
            (Some(code), Some(param)),
            "{name}"
        );
        let text = error["message"].as_str().unwrap();
        assert!(text.starts_with(message), "{name}: {text}");
        let last = events(&h.ctx, &id).await.pop().unwrap();
        assert_eq!(
            (last.level.as_str(), last.message.as_str()),
            ("error", text),
            "{name}"
        );
    }
}

/// Runs the real runner but "dies" (stops training, writes nothing, keeps the lease) as
/// soon as the first checkpoint row exists, like a SIGKILLed process.
struct DiesAfterFirstCheckpoint;

impl JobRunner for DiesAfterFirstCheckpoint {
    fn run(&self, run: RunContext) -> BoxFuture<'static, Result<RunOutcome, JobFailure>> {
        let (store, id, flag) = (
            run.ctx.store.clone(),
            run.job.id.clone(),
            run.control.clone(),
        );
        let watcher = tokio::spawn(async move {
            loop {
                if !store
                    .list_checkpoints(&id, None, 1)
                    .await
                    .unwrap()
                    .data
                    .is_empty()
                {
                    flag.raise(ControlSignal::LeaseLost);
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        });
        Box::pin(async move {
            let outcome = FineTuneRunner.run(run).await;
            watcher.abort();
            outcome
        })
    }
}

const TOTAL_STEPS: u64 = 100;

#[tokio::test]
async fn a_killed_job_resumes_from_its_last_checkpoint_in_a_new_pool() {
    let h = harness().await;
    write_model(&h);
    // 100 steps with a checkpoint every 5. The progress channel is bounded, so the trainer
    // is at most PROGRESS_CHANNEL_CAPACITY messages ahead of the rows the watcher sees:
    // the "kill" lands well before the end.
    let hyper = json!({"n_epochs": 2, "batch_size": 2, "save_steps": 5});
    let id = job_with(&h, &jsonl(&examples(100)), None, hyper).await;
    let first = worker(&h, DiesAfterFirstCheckpoint);
    assert_eq!(
        first.process_next().await.unwrap(),
        Processed::Abandoned(id.clone())
    );
    let orphan = job(&h.ctx, &id).await;
    assert_eq!(orphan.status, JobStatus::Running);
    assert!(orphan.lease_owner.unwrap().starts_with(first.owner()));
    drop(first);
    // The kill landed between the newest checkpoint's rename and its row: that directory
    // (the one the job resumes from) has no checkpoint or model row.
    let work_dir = h.ctx.blobs.job_dir(&id);
    let (unlisted, _) = crate::artifacts::checkpoint::latest_resumable(&work_dir)
        .unwrap()
        .unwrap();
    for table in ["fine_tuning_checkpoints", "models"] {
        let sql = format!(
            "DELETE FROM {table} WHERE {} = ?",
            match table {
                "models" => "step",
                _ => "step_number",
            }
        );
        sqlx::query(&sql)
            .bind(unlisted as i64)
            .execute(h.ctx.store.pool())
            .await
            .unwrap();
    }

    // The "next process": a new store handle and pool on the same files.
    let ctx = context_in(&h.dir).await;
    let shutdown = CancellationToken::new();
    let pool = WorkerPool::spawn(ctx.clone(), shutdown.clone());
    wait_for_status(&ctx, &id, JobStatus::Succeeded).await;
    shutdown.cancel();
    pool.join().await;

    let messages = messages(&ctx, &id).await;
    let resumed = messages
        .iter()
        .find_map(|m| m.strip_prefix("Resuming fine-tuning job from step "))
        .unwrap_or_else(|| panic!("no resume event in {messages:#?}"));
    let resumed: u64 = resumed.parse().unwrap();
    assert!(resumed < TOTAL_STEPS, "the kill came after the last step");
    let steps = metric_steps(&ctx, &id).await;
    // Same final step as an uninterrupted run (100 examples / batch 2 × 2 epochs), and the
    // resumed session continued right after its checkpoint.
    assert_eq!(steps.last(), Some(&TOTAL_STEPS));
    let after_resume = steps.iter().rposition(|&s| s == resumed + 1).unwrap();
    let expected: Vec<u64> = (resumed + 1..=TOTAL_STEPS).collect();
    assert_eq!(steps[after_resume..], expected[..]);
    let job_row = job(&ctx, &id).await;
    assert_eq!(job_row.attempts, 2);
    let checkpoints = ctx
        .store
        .list_checkpoints(&id, None, 100)
        .await
        .unwrap()
        .data;
    let mut seen: Vec<i64> = checkpoints.iter().map(|c| c.step_number).collect();
    let total = seen.len();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), total, "one checkpoint row per step");
    // The directory without a row was reconciled when the job resumed: listed, servable.
    assert_eq!(resumed, unlisted as u64);
    let row = ctx
        .store
        .get_checkpoint_by_step(&id, unlisted as i64)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("checkpoint step-{unlisted} was never listed"));
    let model = ctx
        .store
        .get_model(&row.fine_tuned_model_checkpoint)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(model.step, Some(unlisted as i64));
    assert!(ctx
        .blobs
        .path(&model.artifact_dir)
        .join("trainable.safetensors")
        .is_file());
    assert_eq!(row.metrics["step"], unlisted as u64);
}

#[tokio::test]
async fn auto_hyperparameters_are_explained_in_the_events() {
    let h = harness().await;
    write_model(&h);
    // One epoch keeps it short; batch size and learning rate are "auto".
    let id = job_with(&h, &jsonl(&examples(10)), None, json!({"n_epochs": 1})).await;
    assert_eq!(
        worker(&h, FineTuneRunner).process_next().await.unwrap(),
        Processed::Succeeded(id.clone())
    );
    assert_eq!(resolved_knobs(&job(&h.ctx, &id).await), (1, 1.0, 1));
    assert_in_order(
        &messages(&h.ctx, &id).await,
        &[
            "Files validated, moving job to queued state",
            "batch_size=auto → 1 for 10 examples: text classification's usual 16 would make only 1 optimizer steps in 1 epochs",
            "learning_rate=auto → 2e-5: the text classification recipe's 2e-5 for full fine-tuning",
            "Fine-tuning job started",
        ],
    );
}

#[tokio::test]
async fn a_base_model_that_fails_to_load_is_named_by_its_id_not_its_path() {
    let h = harness().await;
    let dir = h.dir.path().join("models").join(MODEL);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type":"bert"}"#).unwrap();
    std::fs::write(dir.join("model.safetensors"), b"not safetensors").unwrap();
    std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
    let id = job_with(&h, &jsonl(&examples(10)), None, two_epochs()).await;
    assert_eq!(
        worker(&h, FineTuneRunner).process_next().await.unwrap(),
        Processed::Failed(id.clone())
    );
    let error = job(&h.ctx, &id).await.error.unwrap();
    let text = error["message"].as_str().unwrap();
    let root = h.dir.path().display().to_string();
    assert!(text.contains(&format!("`{MODEL}`")), "{text}");
    assert!(!text.contains(&root), "{text}");
    for message in messages(&h.ctx, &id).await {
        assert!(!message.contains(&root), "{message}");
    }
}

#[test]
fn tasks_need_their_architecture_and_a_trainer() {
    use super::training::check_model_fits_task;
    use crate::basemodels::BaseModelKind;
    use crate::domain::task::Task;

    assert!(
        check_model_fits_task("bert", BaseModelKind::Encoder, Task::SequenceClassification).is_ok()
    );
    assert!(check_model_fits_task("smol", BaseModelKind::Decoder, Task::CompletionSft).is_ok());
    let wrong = check_model_fits_task("smol", BaseModelKind::Decoder, Task::SequenceClassification)
        .expect_err("decoder for classification");
    assert_eq!(
        wrong,
        JobFailure::fatal(
            "invalid_model",
            "The model `smol` cannot be fine-tuned for text classification; use an encoder (BERT-family) model, or chat / prompt-completion data.",
            Some("model"),
        )
    );
    // DPO tunes decoders; preference data on an encoder names the model.
    assert!(check_model_fits_task("smol", BaseModelKind::Decoder, Task::Dpo).is_ok());
    let encoder = check_model_fits_task("bert", BaseModelKind::Encoder, Task::Dpo)
        .expect_err("DPO on an encoder");
    assert!(
        matches!(&encoder, JobFailure::Fatal { code, param, .. }
            if code == "invalid_model" && param.as_deref() == Some("model")),
        "{encoder:?}"
    );
}
