//! Estimates against real tiny runs: the examples, tokens and steps an estimate promises
//! are the ones the job then trains on, its memory is the one the job checks, and once a
//! job has run the next estimate's duration comes from that run's measured pace.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::domain::job_spec::JobSpec;
use crate::domain::task::Task;
use crate::jobs::fine_tune_tests::{examples, jsonl};
use crate::jobs::test_support::*;
use crate::jobs::{FineTuneRunner, Processed, Worker};
use crate::store::{FileRow, ThroughputRow};
use crate::train::memory::MemoryEstimate;
use crate::train::plan::TrainingPlan;
use crate::zoo::decoder::DecoderArch;

const DECODER: &str = "test-org/tiny-llama";
const ENCODER: &str = "test-org/tiny-bert";

/// The file's blob and its row, as an upload leaves them.
async fn uploaded(h: &Harness, id: &str, bytes: &[u8], format: &str) {
    upload(&h.ctx, id, bytes).await;
    let row = FileRow {
        id: id.into(),
        bytes: bytes.len() as i64,
        created_at: 0,
        filename: format!("{id}.jsonl"),
        purpose: "fine-tune".into(),
        status: "processed".into(),
        status_details: None,
        format: Some(format.into()),
        n_examples: None,
    };
    h.ctx.store.insert_file(&row).await.unwrap();
}

fn service(h: &Harness, devices: &[&str]) -> JobService {
    let devices = devices.iter().map(|d| d.to_string()).collect();
    JobService::new(
        h.ctx.store.clone(),
        Arc::new(|| {}),
        h.ctx.models_dir.clone(),
        EstimateSetup::new(h.ctx.blobs.clone(), devices),
    )
}

fn new_job(model: &str, train: &str, valid: Option<&str>, method: &Value) -> NewJob {
    NewJob {
        model: model.into(),
        training_file: train.into(),
        validation_file: valid.map(str::to_string),
        suffix: None,
        seed: 42,
        metadata: None,
        spec: JobSpec::parse(Some(method), None).unwrap(),
    }
}

fn chat_lines(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            let answer = if i % 3 == 0 { "yes, it is" } else { "no" };
            json!({"messages": [
                {"role": "user", "content": format!("is {i} a multiple of three?")},
                {"role": "assistant", "content": answer},
            ]})
            .to_string()
                + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

/// Runs the one queued job to its end on a CPU worker.
async fn run_queued(h: &Harness) -> Processed {
    let worker = Worker::new(
        h.ctx.clone(),
        Arc::new(FineTuneRunner),
        "cpu",
        CancellationToken::new(),
    );
    worker.process_next().await.unwrap()
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[tokio::test]
async fn a_chat_estimate_matches_the_run_and_the_next_one_uses_its_pace() {
    let h = harness().await;
    let dir = h.dir.path().join("models").join(DECODER);
    crate::zoo::testing::write_tiny_decoder(&dir, DecoderArch::Llama, 3).unwrap();
    uploaded(&h, "file-train", &chat_lines(10), "chat").await;
    let method = json!({"type": "supervised", "supervised": {"hyperparameters":
        {"n_epochs": 2, "batch_size": 4, "lora_rank": 4}}});
    let jobs = service(&h, &["cpu"]);
    let request = new_job(DECODER, "file-train", None, &method);

    let before = jobs.estimate(&request).await.unwrap();
    assert_eq!(before.task, Task::ChatSft);
    assert_eq!(before.config.n_epochs, 2);
    let plan = &before.plan;
    // 10 examples in batches of 4: 3 steps an epoch, the last of 2 examples.
    assert_eq!((plan.train_examples, plan.valid_examples), (10, 0));
    assert_eq!((plan.steps_per_epoch, plan.total_steps), (3, 6));
    assert!(plan.tokens_per_epoch > 10 * 3, "{plan:?}");
    let [cpu] = before.devices.as_slice() else {
        panic!("one device: {:?}", before.devices);
    };
    assert_eq!(cpu.device, "cpu");
    let memory = cpu.memory.clone().unwrap();
    assert!(memory.weights > 0 && memory.activations > 0, "{memory:?}");
    assert_eq!(cpu.fits(), Some(true));
    // No history yet: the FLOPs model, at the stated CPU rate.
    let duration = cpu.duration.clone().unwrap();
    let DurationBasis::Flops {
        flops,
        assumed_flops_per_second,
    } = duration.basis
    else {
        panic!("expected the FLOPs model: {duration:?}");
    };
    assert_eq!(Some(flops), plan.flops);
    let threads = rayon::current_num_threads() as f64;
    assert_eq!(assumed_flops_per_second, CPU_FLOPS_PER_THREAD * threads);
    assert_eq!(duration.seconds, flops / assumed_flops_per_second);
    // Creating nothing.
    assert!(h
        .ctx
        .store
        .list_jobs(None, 10, None)
        .await
        .unwrap()
        .data
        .is_empty());

    let id = create_job(&h.ctx, DECODER, "file-train", method.clone()).await;
    assert_eq!(run_queued(&h).await, Processed::Succeeded(id.clone()));
    let row = job(&h.ctx, &id).await;
    assert_eq!(row.trained_tokens, Some(plan.trained_tokens() as i64));
    assert_eq!(
        metric_steps(&h.ctx, &id).await,
        (1..=6).collect::<Vec<u64>>()
    );
    // The memory the job checked before loading is the one estimated.
    let said = messages(&h.ctx, &id).await;
    let checked = said
        .iter()
        .find(|m| m.starts_with("Estimated peak memory"))
        .unwrap();
    assert!(
        checked.starts_with(&format!("Estimated peak memory {} of", gib(memory.total()))),
        "{checked} vs {}",
        gib(memory.total())
    );

    let measured = h
        .ctx
        .store
        .recent_throughput(DECODER, "chat", "cpu")
        .await
        .unwrap();
    let [run] = measured.as_slice() else {
        panic!("one measured run: {measured:?}");
    };
    assert_eq!(run.job_id, id);
    assert_eq!(run.tokens, plan.trained_tokens() as i64);
    assert_eq!(run.samples, 20);
    assert!(run.seconds > 0.0);

    // The run's setup (files, tokenizing, loading) is a part of its time, not all of it.
    assert!(
        run.setup_seconds >= 0.0 && run.setup_seconds < run.seconds,
        "{run:?}"
    );

    let after = jobs.estimate(&request).await.unwrap();
    assert_eq!(after.plan, before.plan);
    let duration = after.devices[0].duration.clone().unwrap();
    let pace = run.tokens as f64 / (run.seconds - run.setup_seconds);
    assert_eq!(
        duration.basis,
        DurationBasis::History {
            jobs: 1,
            setup_seconds: run.setup_seconds,
            per_second: pace,
            unit: RateUnit::Tokens,
        }
    );
    assert_eq!(
        duration.seconds,
        run.setup_seconds + plan.trained_tokens() as f64 / pace
    );
}

#[tokio::test]
async fn a_classification_estimate_counts_both_files_as_the_run_trains_them() {
    let h = harness().await;
    let dir = h.dir.path().join("models").join(ENCODER);
    crate::zoo::testing::write_tiny_bert(&dir, 7).unwrap();
    uploaded(&h, "file-train", &jsonl(&examples(11)), "classification").await;
    uploaded(&h, "file-valid", &jsonl(&examples(5)), "classification").await;
    let method = json!({"type": "supervised", "supervised": {"hyperparameters":
        {"n_epochs": 3, "batch_size": 2, "gradient_accumulation_steps": 2}}});
    let request = new_job(ENCODER, "file-train", Some("file-valid"), &method);
    let estimate = service(&h, &["cpu"]).estimate(&request).await.unwrap();
    assert_eq!(estimate.task, Task::SequenceClassification);
    let plan = &estimate.plan;
    // 11 examples: 6 batches of 2 (the last of 1), 3 steps of 2 batches an epoch.
    assert_eq!((plan.train_examples, plan.valid_examples), (11, 5));
    assert_eq!((plan.steps_per_epoch, plan.total_steps), (3, 9));

    let mut row = crate::store::JobRow::new(
        "ftjob-estimated".into(),
        ENCODER.into(),
        "file-train".into(),
        42,
        unix_now(),
    );
    row.validation_file = Some("file-valid".into());
    row.spec = request.spec.clone();
    let created = crate::store::EventRow::info(&row.id, "Created", unix_now());
    h.ctx.store.create_job(&row, &created).await.unwrap();
    assert_eq!(run_queued(&h).await, Processed::Succeeded(row.id.clone()));
    let done = job(&h.ctx, &row.id).await;
    assert_eq!(done.trained_tokens, Some(plan.trained_tokens() as i64));
    assert_eq!(metric_steps(&h.ctx, &row.id).await.last(), Some(&9));
}

fn unix_now() -> i64 {
    crate::jobs::unix_now()
}

#[tokio::test]
async fn bad_data_and_settings_are_refused_as_the_job_would_fail() {
    let h = harness().await;
    crate::zoo::testing::write_tiny_bert(&h.dir.path().join("models").join(ENCODER), 7).unwrap();
    let mut bad = jsonl(&examples(10));
    bad.extend_from_slice(b"{\"text\": \"no label\"}\n");
    uploaded(&h, "file-bad", &bad, "classification").await;
    let method = json!({"type": "supervised", "supervised": {"hyperparameters": {}}});
    let jobs = service(&h, &["cpu"]);
    let error = jobs
        .estimate(&new_job(ENCODER, "file-bad", None, &method))
        .await
        .unwrap_err();
    let JobError::WouldFail(JobFailure::Fatal { message, param, .. }) = error else {
        panic!("expected the job's failure: {error:?}");
    };
    assert!(
        message.contains("Example 11 is missing key 'label'"),
        "{message}"
    );
    assert_eq!(param.as_deref(), Some("training_file"));

    let error = jobs
        .estimate(&new_job(ENCODER, "file-missing", None, &method))
        .await
        .unwrap_err();
    assert!(matches!(error, JobError::NoSuchFile { .. }), "{error:?}");
    let error = jobs
        .estimate(&new_job("test-org/none", "file-bad", None, &method))
        .await
        .unwrap_err();
    assert!(
        matches!(error, JobError::BaseModelNotFound { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_device_that_cannot_open_is_reported_beside_the_ones_that_can() {
    let h = harness().await;
    crate::zoo::testing::write_tiny_bert(&h.dir.path().join("models").join(ENCODER), 7).unwrap();
    uploaded(&h, "file-train", &jsonl(&examples(10)), "classification").await;
    let method = json!({"type": "supervised", "supervised": {"hyperparameters": {}}});
    let estimate = service(&h, &["cpu", "cpu", "tpu:0"])
        .estimate(&new_job(ENCODER, "file-train", None, &method))
        .await
        .unwrap();
    let names: Vec<&str> = estimate.devices.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(names, ["cpu", "tpu:0"]);
    assert!(estimate.devices[0].memory.is_ok());
    let why = estimate.devices[1].memory.clone().unwrap_err();
    assert!(why.contains("cpu` or `cuda:N"), "{why}");
    assert_eq!(estimate.devices[1].duration, None);
}

fn plan(tokens_per_epoch: u64, train_examples: usize, flops: Option<f64>) -> TrainingPlan {
    TrainingPlan {
        train_examples,
        valid_examples: 0,
        tokens_per_epoch,
        steps_per_epoch: 1,
        total_steps: 2,
        n_epochs: 2,
        memory: MemoryEstimate {
            weights: 0,
            optimizer: 0,
            activations: 0,
            loading: 0,
            checkpoint: 0,
        },
        flops,
    }
}

fn measured(seconds: f64, setup_seconds: f64, tokens: i64, samples: i64) -> ThroughputRow {
    ThroughputRow {
        job_id: "ftjob-x".into(),
        model: "m".into(),
        task: "image_classification".into(),
        device: "cpu".into(),
        seconds,
        setup_seconds,
        tokens,
        samples,
        finished_at: 0,
    }
}

#[test]
fn runs_of_two_sizes_give_a_fixed_part_and_a_pace() {
    // 1000 tokens in 4 s, 3000 in 8 s: 2 s whatever the size, then 500 tokens/s; the plan's
    // 2 epochs of 500 tokens take 2 + 2 s.
    let runs = [measured(4.0, 0.5, 1000, 10), measured(8.0, 0.5, 3000, 30)];
    let text = duration_from_history(&plan(500, 8, None), &runs).unwrap();
    assert!((text.seconds - 4.0).abs() < 1e-9, "{text:?}");
    let DurationBasis::History {
        jobs,
        setup_seconds,
        per_second,
        unit,
    } = text.basis
    else {
        panic!("{text:?}");
    };
    assert_eq!((jobs, unit), (2, RateUnit::Tokens));
    assert!((setup_seconds - 2.0).abs() < 1e-9 && (per_second - 500.0).abs() < 1e-6);
    // Images count examples: 10 in 4 s, 30 in 8 s: 2 s + 5/s; 2 epochs of 12 take 2 + 4.8.
    let images = duration_from_history(&plan(0, 12, None), &runs).unwrap();
    assert!((images.seconds - 6.8).abs() < 1e-9, "{images:?}");
}

#[test]
fn one_size_gives_the_runs_setup_and_their_pace_after_it() {
    // Two runs of 1000 tokens, 10 s each after 2 s and 4 s of setup: 3 s, then 1000 tokens
    // in 7 s on average.
    let runs = [measured(12.0, 2.0, 1000, 40), measured(14.0, 4.0, 1000, 40)];
    let text = duration_from_history(&plan(500, 8, None), &runs).unwrap();
    let pace = 2000.0 / 20.0;
    assert_eq!(
        text.basis,
        DurationBasis::History {
            jobs: 2,
            setup_seconds: 3.0,
            per_second: pace,
            unit: RateUnit::Tokens
        }
    );
    assert_eq!(text.seconds, 3.0 + 1000.0 / pace);
    // A fit that would make the fixed part negative (the larger run was slower per token)
    // falls back to the same reading.
    let slower = [measured(1.0, 0.5, 1000, 10), measured(3.0, 0.5, 2000, 20)];
    let read = duration_from_history(&plan(500, 8, None), &slower).unwrap();
    assert_eq!(read.seconds, 0.5 + 1000.0 / (3000.0 / 3.0));
    assert_eq!(duration_from_history(&plan(0, 12, None), &[]), None);
    // Neither history nor a FLOPs count: no duration.
    assert_eq!(duration_from_flops(&plan(0, 12, None), "cpu", 2), None);
    let gpu = duration_from_flops(&plan(10, 1, Some(GPU_FLOPS * 3.0)), "cuda:0", 2).unwrap();
    assert_eq!(gpu.seconds, 3.0);
}

#[test]
fn a_runs_setup_is_its_first_step_less_that_steps_share_of_the_work() {
    use crate::jobs::results::setup_seconds;
    // 10 s in all; the first step ended at 4 s with 100 of 1000 tokens; the other 900
    // took 6 s (150/s), so the first step's 100 took 2/3 s and setup was 10/3 s.
    let setup = setup_seconds(10.0, 4.0, 1000, 100);
    assert!((setup - 10.0 / 3.0).abs() < 1e-12, "{setup}");
    // One step: no later pace to measure, no setup told apart.
    assert_eq!(setup_seconds(10.0, 10.0, 100, 100), 0.0);
    // Never below 0 (a slow first step) nor above the run.
    assert_eq!(setup_seconds(10.0, 1.0, 1000, 500), 0.0);
}
