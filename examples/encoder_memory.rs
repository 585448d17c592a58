//! The encoder memory estimate (`train::memory::estimate_encoder`) beside the measured peak
//! of a real run: fine-tunes MiniLM-L6 for sequence classification on the Rotten Tomatoes
//! split (no server) and prints one JSON line with the estimate's parts and the growth of
//! the process's peak RSS over the job (`VmHWM` reset before it, minus the RSS then).
//!
//!     cargo run --release --example encoder_memory -- assets full 32 512
//!     cargo run --release --example encoder_memory -- assets lora 32 512 checkpointing
//!     cargo run --release --example encoder_memory -- assets full 32 512 generic bf16
//!
//! Arguments: assets dir, `full` | `lora`, batch size, examples (one epoch), then any of
//! `checkpointing` (`gradient_checkpointing`), `generic` (every op on the composed candle
//! ops a GPU runs) and `bf16` (`precision` "bf16"); `generic bf16` is a GPU's path.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use temper::domain::dataset::{label_set, parse_classification};
use temper::domain::hyperparams::HyperparamRequest;
use temper::domain::task::Task;
use temper::tasks::sequence_classification::data::encode_examples;
use temper::tasks::sequence_classification::{run_classification, ClassificationJob};
use temper::train::memory::{estimate_encoder, largest_step, RunMode, Tuning};
use temper::zoo::config::EncoderConfig;
use temper::zoo::TextTokenizer;

#[path = "common/peak_rss.rs"]
mod peak_rss;
use peak_rss::{mib, reset_peak, status_bytes, train_on_own_pool, Quiet};

fn main() -> anyhow::Result<()> {
    temper::runtime::tune_for_cpu_training();
    let args: Vec<String> = std::env::args().collect();
    let assets = PathBuf::from(args.get(1).map(String::as_str).unwrap_or("assets"));
    let mode = args.get(2).map(String::as_str).unwrap_or("full");
    let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let limit: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(512);
    let flags = args.get(5..).unwrap_or_default();
    let checkpointing = flags.iter().any(|a| a == "checkpointing");
    let generic = flags.iter().any(|a| a == "generic");
    let bf16 = flags.iter().any(|a| a == "bf16");
    let rank = if mode == "lora" { 8 } else { 0 };
    let csv = std::fs::read(assets.join("data/rotten_tomatoes/train.csv"))
        .context("run scripts/fetch-assets.sh first")?;
    let mut train = parse_classification(&csv)?.examples;
    train.truncate(limit);
    let labels = label_set(&train);
    let request = HyperparamRequest::parse(
        serde_json::json!({"n_epochs": 1, "batch_size": batch, "learning_rate": 5e-5,
                           "lora_rank": rank, "gradient_checkpointing": checkpointing,
                           "precision": if bf16 { "bf16" } else { "f32" }})
        .as_object()
        .context("literal object")?,
    )?;
    let config = request.resolve(Task::SequenceClassification, limit, 42);
    let base = assets.join("models/sentence-transformers/all-MiniLM-L6-v2");
    let (encoder, _) = EncoderConfig::from_dir(&base)?;
    let tokenizer = TextTokenizer::from_dir(&base)?;
    let encoded = encode_examples(&tokenizer, &train, &labels, config.max_seq_len)?;
    let pairs: Vec<(usize, usize)> = encoded.iter().map(|e| (e.ids.len(), 0)).collect();
    let longest = pairs.iter().map(|p| p.0).max().unwrap_or(0);
    let step = largest_step(&pairs, batch);
    let tuning = match rank {
        0 => Tuning::Full,
        _ => Tuning::Lora {
            rank,
            targets: temper::zoo::encoder_head::encoder_lora_targets(encoder.arch, &config.lora),
            quantize: None,
        },
    };
    let parts = estimate_encoder(
        &encoder,
        &tuning,
        labels.len(),
        step,
        longest,
        RunMode {
            host: true,
            checkpointing,
            bf16,
        },
    );
    let work_dir = tempfile::tempdir()?;
    let job = ClassificationJob {
        base_model: temper::artifacts::BaseLocation::Directory { path: base.clone() },
        base_model_dir: base,
        train,
        valid: None,
        labels,
        config,
        work_dir: work_dir.path().to_path_buf(),
        device: Device::Cpu,
    };
    drop((tokenizer, encoded));
    let before = reset_peak()?;
    train_on_own_pool(generic, || run_classification(&job, &mut Quiet))?;
    let measured = status_bytes("VmHWM:")?.saturating_sub(before);
    println!(
        "{}",
        serde_json::json!({
            "mode": mode, "batch_size": batch, "examples": limit,
            "gradient_checkpointing": checkpointing, "generic": generic, "bf16": bf16,
            "largest_step_tokens": step.tokens, "longest": longest,
            "estimate_mib": {"weights": mib(parts.weights), "optimizer": mib(parts.optimizer),
                             "activations": mib(parts.activations), "loading": mib(parts.loading),
                             "checkpoint": mib(parts.checkpoint), "total": mib(parts.total())},
            "measured_growth_mib": mib(measured),
            "estimate_over_measured": (parts.total() as f64 / measured as f64 * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}
