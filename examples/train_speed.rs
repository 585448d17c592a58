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
use temper::train::{Control, EventLevel, SavedCheckpoint, StepMetrics, TrainObserver};

const BATCH_SIZE: usize = 16;

#[derive(Default)]
struct Timings {
    losses: Vec<f64>,
    tokens: u64,
    /// When each step ended, and the tokens seen by then: the steady pace leaves out model
    /// loading, the first step's warm-up and the final save.
    step_ends: Vec<(Instant, u64)>,
}

impl TrainObserver for Timings {
    fn on_event(&mut self, _level: EventLevel, _message: String) {}
    fn on_step(&mut self, metrics: &StepMetrics) {
        self.losses.push(metrics.train_loss());
        self.tokens = metrics.tokens_seen;
        self.step_ends.push((Instant::now(), metrics.tokens_seen));
    }
    fn on_checkpoint(&mut self, _checkpoint: &SavedCheckpoint) {}
    fn control(&mut self) -> Control {
        Control::Continue
    }
}

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
        train,
        valid: None,
        labels,
        config: request.resolve(Task::SequenceClassification, limit, 42),
        work_dir: work_dir.path().to_path_buf(),
        device: Device::Cpu,
    };
    let mut timings = Timings::default();
    let start = Instant::now();
    // As the service runs a job: on a pool of its own (see `runtime::on_own_pool`).
    temper::runtime::on_own_pool(|| run_classification(&job, &mut timings))?;
    let seconds = start.elapsed().as_secs_f64();
    let (steady_samples_per_s, steady_tokens_per_s) =
        match (timings.step_ends.first(), timings.step_ends.last()) {
            (Some(&(t0, k0)), Some(&(t1, k1))) if timings.step_ends.len() > 1 => {
                let s = (t1 - t0).as_secs_f64();
                let steps = (timings.step_ends.len() - 1) as f64;
                (steps * BATCH_SIZE as f64 / s, (k1 - k0) as f64 / s)
            }
            _ => (0.0, 0.0),
        };
    // The median step: robust to the bursts of contention a shared machine has, which move
    // the mean by 10 % or more between identical runs.
    let mut step_ms: Vec<f64> = timings
        .step_ends
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_secs_f64() * 1e3)
        .collect();
    step_ms.sort_by(f64::total_cmp);
    let median_step_ms = step_ms.get(step_ms.len() / 2).copied().unwrap_or(0.0);
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
