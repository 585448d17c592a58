//! The memory estimate (`train::memory`) beside the measured peak of a real run: trains
//! SmolLM2-135M-Instruct on the sarcasm chat split (no server) and prints one JSON line with
//! the estimate's parts and the growth of the process's peak RSS over training (`VmHWM`,
//! reset after the GGUF is materialized, minus the RSS before the job starts).
//!
//!     cargo run --release --example memory_estimate -- assets lora 4 64
//!     cargo run --release --example memory_estimate -- assets full 4 64
//!     cargo run --release --example memory_estimate -- assets lora 16 64 checkpointing
//!     cargo run --release --example memory_estimate -- assets lora 4 64 generic bf16
//!
//! Arguments: assets dir, `lora` | `qlora` | `full`, batch size, examples (one epoch), then
//! any of `checkpointing` (train with `gradient_checkpointing`), `generic` (every op on the
//! composed candle ops a GPU runs, `zoo::fused::with_generic_ops`) and `bf16` (`precision`
//! "bf16", the GPU's default). `generic bf16` is the GPU's path, run on the CPU.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use temper::domain::hyperparams::HyperparamRequest;
use temper::domain::task::Task;
use temper::tasks::sft::{run_sft, SftExamples, SftJob, SftTokenizer};
use temper::train::memory::{estimate_with, largest_step, RunMode, Tuning};
use temper::zoo::decoder::config::DEFAULT_LORA_TARGETS;
use temper::zoo::decoder::{DecoderConfig, QuantKind};

#[path = "common/peak_rss.rs"]
mod peak_rss;
use peak_rss::{mib, reset_peak, status_bytes, train_on_own_pool, Quiet};

#[path = "common/smollm2_sarcasm.rs"]
mod smollm2_sarcasm;
use smollm2_sarcasm::{materialized_smollm2, sarcasm_chats};

fn main() -> anyhow::Result<()> {
    temper::runtime::tune_for_cpu_training();
    let args: Vec<String> = std::env::args().collect();
    let assets = PathBuf::from(args.get(1).map(String::as_str).unwrap_or("assets"));
    let mode = args.get(2).map(String::as_str).unwrap_or("lora");
    let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let limit: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let flags = args.get(5..).unwrap_or_default();
    let checkpointing = flags.iter().any(|a| a == "checkpointing");
    let bf16 = flags.iter().any(|a| a == "bf16");
    let generic = flags.iter().any(|a| a == "generic");
    let train = sarcasm_chats(&assets, limit)?;
    let (rank, quantize) = match mode {
        "full" => (0, None),
        "qlora" => (8, Some("q4_0")),
        _ => (8, None),
    };
    let mut hyperparameters = serde_json::json!({"n_epochs": 1, "batch_size": batch,
        "learning_rate": 2e-4, "max_seq_len": 256, "lora_rank": rank, "lora_alpha": 16,
        "lora_dropout": 0.0, "gradient_checkpointing": checkpointing,
        "precision": if bf16 { "bf16" } else { "f32" }});
    if let Some(kind) = quantize {
        hyperparameters["quantize"] = kind.into();
    }
    let request = HyperparamRequest::parse(hyperparameters.as_object().context("literal object")?)?;
    let work_dir = tempfile::tempdir()?;
    let model_dir = materialized_smollm2(&assets, work_dir.path())?;
    let (config, _) = DecoderConfig::from_dir(&model_dir)?;
    let tokenizer = SftTokenizer::from_dir(&model_dir, &config.eos_token_ids)?;
    let examples = SftExamples::Chat(train);
    let prepared = tokenizer.prepare(&examples, 256)?;
    let lengths: Vec<(usize, usize)> = prepared
        .examples
        .iter()
        .map(|e| (e.ids.len(), e.n_targets()))
        .collect();
    let tuning = match mode {
        "full" => Tuning::Full,
        _ => Tuning::Lora {
            rank,
            targets: DEFAULT_LORA_TARGETS.iter().map(|t| t.to_string()).collect(),
            quantize: quantize.map(|_| QuantKind::Q4_0),
        },
    };
    let step = largest_step(&lengths, batch);
    let run_mode = RunMode {
        host: true,
        checkpointing,
        bf16,
    };
    let parts = estimate_with(&config, &tuning, step, run_mode);
    let job = SftJob {
        base_model: temper::artifacts::BaseLocation::Directory {
            path: model_dir.clone(),
        },
        base_model_dir: model_dir,
        train: examples,
        valid: None,
        config: request.resolve(Task::ChatSft, limit, 0),
        work_dir: work_dir.path().join("run"),
        device: Device::Cpu,
    };
    drop(tokenizer);
    // Materializing the GGUF peaked above training: start the peak from here.
    let before = reset_peak()?;
    train_on_own_pool(generic, || run_sft(&job, &mut Quiet))?;
    let peak = status_bytes("VmHWM:")?;
    let measured = peak.saturating_sub(before);
    println!(
        "{}",
        serde_json::json!({
            "mode": mode, "batch_size": batch, "examples": limit,
            "gradient_checkpointing": checkpointing, "bf16": bf16, "generic": generic,
            "largest_step_tokens": step.tokens, "largest_step_trained_rows": step.trained_rows,
            "estimate_mib": {"weights": mib(parts.weights), "optimizer": mib(parts.optimizer),
                             "activations": mib(parts.activations), "loading": mib(parts.loading),
                             "checkpoint": mib(parts.checkpoint), "total": mib(parts.total())},
            "rss_before_mib": mib(before), "peak_rss_mib": mib(peak),
            "measured_growth_mib": mib(measured),
            "estimate_over_measured": (parts.total() as f64 / measured as f64 * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}
