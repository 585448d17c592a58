//! Trains the sequence classifier directly (no server) on the Rotten Tomatoes split and
//! prints one JSON line: training samples/s, step timings, final loss. A profiling aid for
//! the trainer; the user-facing benchmark goes through the service (bench/).
//!
//!     cargo run --release --example train_speed -- assets 512 [lora_rank]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use temper::domain::dataset::{label_set, parse_classification};
use temper::domain::hyperparams::HyperparamRequest;
use temper::domain::task::Task;
use temper::tasks::sequence_classification::{run_classification, ClassificationJob};

#[path = "common/step_timings.rs"]
mod step_timings;
use step_timings::StepTimings;

const BATCH_SIZE: usize = 16;

fn main() -> anyhow::Result<()> {
    temper::runtime::tune_for_cpu_training();
    let args: Vec<String> = std::env::args().collect();
    let assets = PathBuf::from(args.get(1).map(String::as_str).unwrap_or("assets"));
    let limit: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(512);
    let lora_rank: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let csv = std::fs::read(assets.join("data/rotten_tomatoes/train.csv"))
        .context("run scripts/fetch-assets.sh first")?;
    let mut train = parse_classification(&csv)?.examples;
    train.truncate(limit);
    let labels = label_set(&train);
    let request = HyperparamRequest::parse(
        serde_json::json!({"n_epochs": 1, "batch_size": BATCH_SIZE, "learning_rate": 5e-5, "weight_decay": 0.01,
                           "warmup_ratio": 0.1, "lora_rank": lora_rank})
        .as_object()
        .context("literal object")?,
    )?;
    let work_dir = tempfile::tempdir()?;
    let job = ClassificationJob {
        base_model_dir: assets.join("models/sentence-transformers/all-MiniLM-L6-v2"),
        base_model: temper::artifacts::BaseLocation::Directory {
            path: assets.join("models/sentence-transformers/all-MiniLM-L6-v2"),
        },
        train,
        valid: None,
        labels,
        config: request.resolve(Task::SequenceClassification, limit, 42),
        work_dir: work_dir.path().to_path_buf(),
        device: Device::Cpu,
    };
    let mut timings = StepTimings::default();
    let start = Instant::now();
    // As the service runs a job: on a pool of its own (see `runtime::on_own_pool`).
    temper::runtime::on_own_pool(|| run_classification(&job, &mut timings))?;
    let seconds = start.elapsed().as_secs_f64();
    let (steady_steps_per_s, steady_tokens_per_s) = timings.steady_rates();
    let steady_samples_per_s = steady_steps_per_s * BATCH_SIZE as f64;
    let median_step_ms = timings.median_step_ms();
    println!(
        "{}",
        serde_json::json!({
            "median_step_ms": median_step_ms,
            "examples": limit, "lora_rank": lora_rank, "seconds": seconds,
            "samples_per_s": limit as f64 / seconds,
            "steady_samples_per_s": steady_samples_per_s, "steady_tokens_per_s": steady_tokens_per_s, "tokens_per_s": timings.tokens as f64 / seconds,
            "steps": timings.losses.len(), "first_loss": timings.losses.first(), "last_loss": timings.losses.last(),
        })
    );
    Ok(())
}
