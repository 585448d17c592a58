//! Many LoRA adapters of SmolLM2-135M-Instruct served unmerged by one generation engine,
//! beside the same load on one merged model: concurrent greedy streams (each adapter's
//! rows in the same decode steps as the others'), tokens/s, time to first token, and the
//! process's memory (base alone, with the adapters, peak while generating). Drives the
//! engine directly, not the HTTP server. Prints one JSON line.
//!
//!     cargo run --release --example multi_adapter -- assets
//!     cargo run --release --example multi_adapter -- assets 20 32 128
//!
//! Arguments: assets dir, adapters (20), concurrent streams (32), new tokens per stream
//! (128). Adapters are rank 8 on every projection, random (A as PEFT initializes it, B
//! small and non-zero), alpha 16; prompts are 64-token windows of one text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use temper::domain::hyperparams::LoraSettings;
use temper::infer::generate::{CausalLmBackend, GenEngine, GenEngineConfig};
use temper::infer::{GenerationParams, GenerationRequest, Prompt};
use temper::zoo::decoder::adapter::ADAPTER_MODULES;
use temper::zoo::decoder::{CausalLm, DecoderConfig, DecoderSpec, LoraScaling, ServedAdapter};

// Shared by the probes; this one uses part of each.
#[allow(dead_code)]
#[path = "common/peak_rss.rs"]
mod peak_rss;
use peak_rss::{mib, reset_peak, status_bytes};

#[allow(dead_code)]
#[path = "common/smollm2_sarcasm.rs"]
mod smollm2_sarcasm;
use smollm2_sarcasm::materialized_smollm2;

const RANK: usize = 8;
const ALPHA: f64 = 16.0;
const PROMPT_TOKENS: usize = 64;

/// PEFT-named tensors of a random rank-8 adapter on every projection of every layer.
fn random_adapter(config: &DecoderConfig, seed: u64) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let hidden = config.hidden_size;
    let (q, kv) = (
        config.num_attention_heads * config.head_dim,
        config.num_key_value_heads * config.head_dim,
    );
    let inter = config.intermediate_size;
    let dims = [
        (hidden, q),
        (hidden, kv),
        (hidden, kv),
        (q, hidden),
        (hidden, inter),
        (hidden, inter),
        (inter, hidden),
    ];
    let mut tensors = HashMap::new();
    for layer in 0..config.num_hidden_layers {
        for (module, (input, output)) in ADAPTER_MODULES.iter().zip(dims) {
            let bound = 1.0 / (input as f32).sqrt();
            let a: Vec<f32> = (0..RANK * input)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let b: Vec<f32> = (0..output * RANK)
                .map(|_| rng.random_range(-0.01..0.01))
                .collect();
            let name = format!("base_model.model.model.layers.{layer}.{module}");
            tensors.insert(
                format!("{name}.lora_A.weight"),
                Tensor::from_vec(a, (RANK, input), &Device::Cpu)?,
            );
            tensors.insert(
                format!("{name}.lora_B.weight"),
                Tensor::from_vec(b, (output, RANK), &Device::Cpu)?,
            );
        }
    }
    Ok(tensors)
}

/// `streams` prompts of about 64 tokens: windows of one text at different offsets.
fn prompts(model_dir: &Path, streams: usize) -> anyhow::Result<Vec<String>> {
    let tokenizer = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = "The history of the lighthouse begins with fires lit on hilltops to guide ships \
        home. Over centuries keepers tended lamps of oil, then of gas, then of electricity, and \
        the lenses grew from plain glass to the great Fresnel lenses that throw a beam for miles. "
        .repeat(20);
    let ids = tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ids = ids.get_ids();
    (0..streams)
        .map(|i| {
            let start = (i * 5) % (ids.len() - PROMPT_TOKENS);
            tokenizer
                .decode(&ids[start..start + PROMPT_TOKENS], true)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect()
}

struct LoadResult {
    tokens_per_s: f64,
    completion_tokens: usize,
    ttft_p50_ms: f64,
    seconds: f64,
    peak_rss: u64,
}

/// Every prompt at once on `engine`, prompt `i` with `adapters[i % len]` (none if empty).
async fn run_load(
    engine: &GenEngine,
    prompts: &[String],
    adapters: &[Arc<ServedAdapter>],
    new_tokens: usize,
) -> anyhow::Result<LoadResult> {
    reset_peak()?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let request = GenerationRequest {
            prompt: Prompt::Text(prompt.clone()),
            params: GenerationParams {
                temperature: 0.0,
                max_tokens: Some(new_tokens),
                ..GenerationParams::default()
            },
        };
        let adapter = (!adapters.is_empty()).then(|| adapters[i % adapters.len()].clone());
        tasks.push(async move {
            let mut stream = match adapter {
                None => engine.generate(request).await?,
                Some(adapter) => engine.generate_with_adapter(request, adapter).await?,
            };
            let mut first = None;
            let mut tokens = 0;
            while let Some(event) = stream.next().await {
                match event? {
                    temper::infer::GenerationEvent::Delta { .. } => {
                        first.get_or_insert_with(|| start.elapsed());
                    }
                    temper::infer::GenerationEvent::Usage(usage) => {
                        tokens = usage.completion_tokens
                    }
                    temper::infer::GenerationEvent::Finished { .. } => {}
                }
            }
            anyhow::Ok((first.unwrap_or_default(), tokens))
        });
    }
    let outcomes = futures::future::try_join_all(tasks).await?;
    let seconds = start.elapsed().as_secs_f64();
    let completion_tokens: usize = outcomes.iter().map(|(_, t)| t).sum();
    let mut ttft: Vec<f64> = outcomes
        .iter()
        .map(|(f, _)| f.as_secs_f64() * 1e3)
        .collect();
    ttft.sort_by(f64::total_cmp);
    Ok(LoadResult {
        tokens_per_s: completion_tokens as f64 / seconds,
        completion_tokens,
        ttft_p50_ms: ttft[ttft.len() / 2],
        seconds,
        peak_rss: status_bytes("VmHWM:")?,
    })
}

fn engine_config(streams: usize) -> GenEngineConfig {
    GenEngineConfig {
        max_batch_sequences: streams,
        ..GenEngineConfig::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let assets = PathBuf::from(args.get(1).map(String::as_str).unwrap_or("assets"));
    let count: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let streams: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let new_tokens: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let tmp = tempfile::tempdir()?;
    let model_dir = materialized_smollm2(&assets, tmp.path())?;
    let (config, _) = DecoderConfig::from_dir(&model_dir)?;
    let prompts = prompts(&model_dir, streams)?;

    let rss_start = status_bytes("VmRSS:")?;
    let base = CausalLmBackend::load_dir(&model_dir, &Device::Cpu)?;
    let base_bytes = temper::infer::LmBackend::parameter_bytes(&base);
    let engine = GenEngine::spawn("base", base, engine_config(streams))?;
    let rss_base = status_bytes("VmRSS:")?;
    let scaling = LoraScaling {
        alpha: ALPHA,
        rslora: false,
    };
    let mut adapters = Vec::new();
    for k in 0..count {
        let tensors = random_adapter(&config, k as u64)?;
        adapters.push(Arc::new(ServedAdapter::from_peft(
            &config,
            &tensors,
            scaling,
            &Device::Cpu,
        )?));
    }
    let adapter_bytes = adapters.first().map_or(0, |a| a.bytes());
    let rss_adapters = status_bytes("VmRSS:")?;
    let unmerged = run_load(&engine, &prompts, &adapters, new_tokens).await?;
    drop(adapters);
    drop(engine);

    // The same load on one merged model (adapter 0 folded into the base), as temper served
    // every fine-tune before.
    let spec = DecoderSpec {
        lora: Some(LoraSettings {
            rank: RANK,
            alpha: ALPHA,
            dropout: 0.0,
            target_modules: Vec::new(),
        }),
        quantize: None,
    };
    let mut tuned = CausalLm::from_pretrained(&model_dir, &spec, &Device::Cpu, 0)?;
    tuned.load_trainable(&random_adapter(&config, 0)?)?;
    tuned.merge_lora()?;
    let merged_dir = tmp.path().join("merged");
    tuned.export_merged(&model_dir, &merged_dir)?;
    drop(tuned);
    let merged = CausalLmBackend::load_dir(&merged_dir, &Device::Cpu).context("merged")?;
    let engine = GenEngine::spawn("merged", merged, engine_config(streams))?;
    let merged_run = run_load(&engine, &prompts, &[], new_tokens).await?;

    let result = serde_json::json!({
        "adapters": count,
        "streams": streams,
        "new_tokens": new_tokens,
        "base_parameter_mib": mib(base_bytes as u64),
        "adapter_mib": mib(adapter_bytes as u64),
        "rss_start_mib": mib(rss_start),
        "rss_base_mib": mib(rss_base),
        "rss_with_adapters_mib": mib(rss_adapters),
        "adapters_rss_growth_mib": mib(rss_adapters.saturating_sub(rss_base)),
        "adapters_bytes_mib": mib((count * adapter_bytes) as u64),
        "unmerged": {
            "tokens_per_s": unmerged.tokens_per_s,
            "completion_tokens": unmerged.completion_tokens,
            "seconds": unmerged.seconds,
            "ttft_p50_ms": unmerged.ttft_p50_ms,
            "peak_rss_mib": mib(unmerged.peak_rss),
        },
        "merged_one_model": {
            "tokens_per_s": merged_run.tokens_per_s,
            "completion_tokens": merged_run.completion_tokens,
            "seconds": merged_run.seconds,
            "ttft_p50_ms": merged_run.ttft_p50_ms,
            "peak_rss_mib": mib(merged_run.peak_rss),
        },
        "unmerged_over_merged_tokens_per_s": unmerged.tokens_per_s / merged_run.tokens_per_s,
    });
    println!("{result}");
    Ok(())
}
