//! Many LoRA fine-tunes of all-MiniLM-L6-v2 (sequence classification) served over one
//! shared base encoder, beside the same fine-tunes served as merged models of their own:
//! the process's memory with them loaded, and texts/s classifying Rotten Tomatoes texts
//! spread round-robin over the fine-tunes (one serving round, batches of 64). Drives the
//! serving backends directly, not the HTTP server. Each mode runs in its own process so
//! that its memory is its own; each prints one JSON line.
//!
//!     cargo run --release --example classifier_adapters -- assets /tmp/ckpt train
//!     cargo run --release --example classifier_adapters -- assets /tmp/ckpt adapters 10 512
//!     cargo run --release --example classifier_adapters -- assets /tmp/ckpt merged 10 512
//!
//! `train` fine-tunes one LoRA classifier (rank 8 on query/value, 1 epoch over 256 texts),
//! writes its checkpoint under the given directory and exports it as a PEFT adapter (for
//! bench/reference_classifier_adapters.py); the other modes load that checkpoint once per
//! fine-tune (each a separate adapter or model, as distinct fine-tunes would be). The JSON
//! line carries every text's predicted label, to compare the modes and the reference.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use temper::domain::dataset::{label_set, parse_classification};
use temper::domain::hyperparams::HyperparamRequest;
use temper::domain::task::Task;
use temper::tasks::sequence_classification::serve::{
    CheckpointClassifier, ClassPrediction, ClassifierServing,
};
use temper::tasks::sequence_classification::shared::{
    AdapterText, ClassifierAdapter, SharedEncoderClassifier,
};
use temper::tasks::sequence_classification::{run_classification, ClassificationJob};
use temper::tasks::serve::ServeBackend;

#[allow(dead_code)]
#[path = "common/peak_rss.rs"]
mod peak_rss;
use peak_rss::{mib, reset_peak, status_bytes, Quiet};

const MAX_BATCH: usize = 64;

fn base_dir(assets: &Path) -> PathBuf {
    assets.join("models/sentence-transformers/all-MiniLM-L6-v2")
}

fn texts(assets: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let csv = std::fs::read(assets.join("data/rotten_tomatoes/test.csv"))
        .context("run scripts/fetch-assets.sh first")?;
    let examples = parse_classification(&csv)?.examples;
    Ok(examples.into_iter().take(n).map(|e| e.text).collect())
}

fn train(assets: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let csv = std::fs::read(assets.join("data/rotten_tomatoes/train.csv"))?;
    let mut train = parse_classification(&csv)?.examples;
    train.truncate(256);
    let request = HyperparamRequest::parse(
        serde_json::json!({"n_epochs": 1, "batch_size": 16, "learning_rate": 5e-4, "lora_rank": 8})
            .as_object()
            .context("literal object")?,
    )?;
    let job = ClassificationJob {
        base_model_dir: base_dir(assets),
        base_model: temper::artifacts::BaseLocation::Directory {
            path: base_dir(assets),
        },
        labels: label_set(&train),
        config: request.resolve(Task::SequenceClassification, train.len(), 42),
        train,
        valid: None,
        work_dir: out.to_path_buf(),
        device: Device::Cpu,
    };
    match temper::runtime::on_own_pool(|| run_classification(&job, &mut Quiet))? {
        temper::train::TrainOutcome::Completed(summary) => Ok(summary.best_checkpoint),
        other => anyhow::bail!("training stopped: {other:?}"),
    }
}

/// The newest checkpoint under `out` (written by `train`).
fn checkpoint(out: &Path) -> anyhow::Result<PathBuf> {
    let dir = out.join("checkpoints");
    let mut steps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("no checkpoints in {}: run `train` first", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    steps.sort();
    steps.pop().context("no checkpoint")
}

/// Serves one round over `backend`: texts/s and each text's predicted label.
fn timed_round<B: ServeBackend<Output = ClassPrediction>>(
    backend: &mut B,
    inputs: &[B::Input],
) -> anyhow::Result<(f64, Vec<String>)> {
    let prepared: Vec<B::Prepared> = inputs
        .iter()
        .map(|i| backend.prepare(i))
        .collect::<Result<_, _>>()?;
    let round: Vec<(&B::Input, &B::Prepared)> = inputs.iter().zip(&prepared).collect();
    let start = Instant::now();
    let answered = backend.serve_round(&round, MAX_BATCH);
    let seconds = start.elapsed().as_secs_f64();
    let labels = answered
        .into_iter()
        .map(|answer| answer.map(|p| p.label))
        .collect::<Result<_, _>>()?;
    Ok((inputs.len() as f64 / seconds, labels))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let assets = PathBuf::from(args.get(1).map(String::as_str).unwrap_or("assets"));
    let out = PathBuf::from(args.get(2).context("a checkpoint directory")?);
    let mode = args.get(3).map(String::as_str).unwrap_or("adapters");
    let fine_tunes: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let n_texts: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(512);
    if mode == "train" {
        let best = train(&assets, &out)?;
        // The same fine-tune as a PEFT adapter, for the peft reference
        // (bench/reference_classifier_adapters.py).
        let adapter = out.join("peft-adapter");
        temper::tasks::export_checkpoint(
            &best,
            &temper::artifacts::BaseModels::default(),
            temper::artifacts::ExportFormat::Adapter,
            "sentence-transformers/all-MiniLM-L6-v2",
            &adapter,
        )?;
        println!(
            "{}",
            serde_json::json!({"mode": "train", "checkpoint": best, "peft_adapter": adapter})
        );
        return Ok(());
    }
    let ckpt = checkpoint(&out)?;
    let texts = texts(&assets, n_texts)?;
    let rss_start = status_bytes("VmRSS:")?;
    let (rss_loaded, texts_per_s, labels) = match mode {
        "adapters" => {
            let mut backend = SharedEncoderClassifier::load(&base_dir(&assets), &Device::Cpu)?;
            let adapters: Vec<Arc<ClassifierAdapter>> = (0..fine_tunes)
                .map(|_| ClassifierAdapter::load(&ckpt, &Device::Cpu).map(Arc::new))
                .collect::<Result<_, _>>()?;
            let inputs: Vec<AdapterText> = texts
                .iter()
                .enumerate()
                .map(|(i, text)| AdapterText {
                    text: text.clone(),
                    adapter: adapters[i % fine_tunes].clone(),
                })
                .collect();
            // The first round builds every adapter's model over the shared base.
            timed_round(&mut backend, &inputs[..fine_tunes.min(inputs.len())])?;
            let rss_loaded = status_bytes("VmRSS:")?;
            reset_peak()?;
            let (rate, labels) = timed_round(&mut backend, &inputs)?;
            (rss_loaded, rate, labels)
        }
        "merged" => {
            let mut models: Vec<ClassifierServing> = (0..fine_tunes)
                .map(|_| {
                    CheckpointClassifier::load(
                        &temper::artifacts::BaseModels::default()
                            .open(&ckpt)
                            .expect("open checkpoint"),
                        &Device::Cpu,
                    )
                })
                .map(|m| m.map(|m| ClassifierServing(Box::new(m))))
                .collect::<Result<_, _>>()?;
            let rss_loaded = status_bytes("VmRSS:")?;
            reset_peak()?;
            // Each model serves its round-robin share; the rates add up as one round.
            let mut seconds = 0.0;
            let mut labels = vec![String::new(); texts.len()];
            for (m, model) in models.iter_mut().enumerate() {
                let share: Vec<String> =
                    texts.iter().skip(m).step_by(fine_tunes).cloned().collect();
                let (rate, share_labels) = timed_round(model, &share)?;
                seconds += share.len() as f64 / rate;
                for (k, label) in share_labels.into_iter().enumerate() {
                    labels[m + k * fine_tunes] = label;
                }
            }
            (rss_loaded, texts.len() as f64 / seconds, labels)
        }
        other => anyhow::bail!("unknown mode {other}: train, adapters or merged"),
    };
    println!(
        "{}",
        serde_json::json!({
            "mode": mode, "fine_tunes": fine_tunes, "texts": texts.len(),
            "texts_per_s": (texts_per_s * 10.0).round() / 10.0,
            "rss_start_mib": mib(rss_start), "rss_loaded_mib": mib(rss_loaded),
            "rss_growth_mib": mib(rss_loaded.saturating_sub(rss_start)),
            "peak_rss_mib": mib(status_bytes("VmHWM:")?),
            "labels": labels,
        })
    );
    Ok(())
}
