//! Trains SmolLM2-135M-Instruct with LoRA directly (no server) on the sarcasm chat split,
//! with `bench/run_sft.sh`'s recipe, and prints one JSON line: the median step, tokens/s,
//! the losses. A profiling aid for the decoder trainer; the user-facing benchmark goes
//! through the service (bench/sft.py).
//!
//!     cargo run --release --example sft_speed -- assets 96
//!     cargo run --release --example sft_speed -- assets 96 checkpointing
//!     cargo run --release --example sft_speed -- assets 96 bf16
//!
//! A third argument trains with `gradient_checkpointing` or `precision: "bf16"`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use temper::domain::hyperparams::HyperparamRequest;
use temper::domain::task::Task;
use temper::tasks::sft::{run_sft, SftExamples, SftJob};

#[path = "common/step_timings.rs"]
mod step_timings;
use step_timings::StepTimings;

#[path = "common/smollm2_sarcasm.rs"]
mod smollm2_sarcasm;
use smollm2_sarcasm::{materialized_smollm2, sarcasm_chats};

fn main() -> anyhow::Result<()> {
    temper::runtime::tune_for_cpu_training();
    let args: Vec<String> = std::env::args().collect();
    let assets = PathBuf::from(args.get(1).map(String::as_str).unwrap_or("assets"));
    let limit: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(96);
    let variant = args.get(3).map(String::as_str).unwrap_or("");
    let train = sarcasm_chats(&assets, limit)?;
    let mut hyperparameters = serde_json::json!({"n_epochs": 1, "batch_size": 4, "learning_rate": 2e-4,
        "lr_scheduler": "linear", "warmup_ratio": 0.0, "max_seq_len": 256, "lora_rank": 8,
        "lora_alpha": 16, "lora_dropout": 0.0});
    match variant {
        "checkpointing" => hyperparameters["gradient_checkpointing"] = true.into(),
        "bf16" => hyperparameters["precision"] = "bf16".into(),
        _ => {}
    }
    let request = HyperparamRequest::parse(hyperparameters.as_object().context("literal object")?)?;
    let work_dir = tempfile::tempdir()?;
    let model_dir = materialized_smollm2(&assets, work_dir.path())?;
    let job = SftJob {
        base_model: temper::artifacts::BaseLocation::Directory {
            path: model_dir.clone(),
        },
        base_model_dir: model_dir,
        train: SftExamples::Chat(train),
        valid: None,
        config: request.resolve(Task::ChatSft, limit, 0),
        work_dir: work_dir.path().join("run"),
        device: Device::Cpu,
    };
    let mut timings = StepTimings::default();
    let start = Instant::now();
    temper::runtime::on_own_pool(|| run_sft(&job, &mut timings))?;
    let seconds = start.elapsed().as_secs_f64();
    // Pace between the first and the last step: model loading, the first step's warm-up
    // and the final save left out. The median step is robust to a noisy machine.
    let (_, steady_tokens_per_s) = timings.steady_rates();
    let median_step_ms = timings.median_step_ms();
    println!(
        "{}",
        serde_json::json!({
            "variant": variant,
            "median_step_ms": median_step_ms, "steady_tokens_per_s": steady_tokens_per_s,
            "examples": limit, "seconds": seconds, "steps": timings.losses.len(), "tokens": timings.tokens,
            "first_loss": timings.losses.first(), "last_loss": timings.losses.last(),
        })
    );
    Ok(())
}
