//! The image-job memory estimate (`train::memory::fit_image_job`) beside the measured peak
//! of a real run: fine-tunes the real EfficientNet-Lite0 (`scripts/fetch-assets.sh`) on
//! synthetic 256×256 images of two classes (no server) and prints one JSON line with the
//! estimate's parts and the growth of the process's peak RSS over the job (`VmHWM` reset
//! before it, minus the RSS then; the growth also holds the loaded model and the decoded
//! images, which the estimate leaves out as already resident).
//!
//!     cargo run --release --example image_memory -- assets frozen 32 224
//!     cargo run --release --example image_memory -- assets last3 32 224
//!     cargo run --release --example image_memory -- assets whole 16 224 generic
//!
//! Arguments: assets dir, `frozen` | `lastK` (the last K units train from the first epoch)
//! | `whole`, batch size, image size, and `generic` to run every op on the composed candle
//! ops a GPU runs.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use temper::domain::dataset::images::{ImageAt, LabeledImage};
use temper::domain::hyperparams::HyperparamRequest;
use temper::domain::task::Task;
use temper::tasks::image_classification::{run_image_classification, ImageClassificationJob};
use temper::train::memory::{fit_image_job, ImageRun};
use temper::zoo::vision::{ImageClassifier, ImageClassifierSpec};

#[path = "common/peak_rss.rs"]
mod peak_rss;
use peak_rss::{mib, reset_peak, status_bytes, train_on_own_pool, Quiet};

/// A 256×256 PNG of seeded noise, tinted red or blue by class.
fn png(red: bool, seed: u32) -> anyhow::Result<Vec<u8>> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let image = image::RgbImage::from_fn(256, 256, |_, _| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = (state >> 24) as u8 / 2;
        if red {
            image::Rgb([128 + noise, noise, noise])
        } else {
            image::Rgb([noise, noise, 128 + noise])
        }
    });
    let mut bytes = Vec::new();
    image.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}

fn main() -> anyhow::Result<()> {
    temper::runtime::tune_for_cpu_training();
    let args: Vec<String> = std::env::args().collect();
    let assets = PathBuf::from(args.get(1).map(String::as_str).unwrap_or("assets"));
    let mode = args.get(2).map(String::as_str).unwrap_or("frozen");
    let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let size: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(224);
    let generic = args.get(5).is_some_and(|a| a == "generic");
    let base = assets.join("models/timm/efficientnet_lite0");
    anyhow::ensure!(base.exists(), "run scripts/fetch-assets.sh first");
    let all_units = ImageClassifier::count_units(&base)?;
    let units = match mode {
        "frozen" => 0,
        "whole" => all_units,
        last => last
            .strip_prefix("last")
            .and_then(|k| k.parse().ok())
            .context("mode: frozen, lastK or whole")?,
    };
    let mut hyperparameters = serde_json::json!({"n_epochs": 1, "batch_size": batch,
        "learning_rate": 1e-3, "image_size": size, "freeze_backbone": mode != "whole"});
    if units > 0 && mode != "whole" {
        hyperparameters["unfreeze_schedule"] = serde_json::json!([{"epoch": 1, "blocks": units}]);
    }
    let request = HyperparamRequest::parse(hyperparameters.as_object().context("literal object")?)?;
    let n_images = 2 * batch;
    let train = (0..n_images)
        .map(|i| {
            let red = i % 2 == 0;
            Ok(LabeledImage {
                label: if red { "red" } else { "blue" }.to_string(),
                bytes: png(red, i as u32)?,
                at: ImageAt::Entry {
                    number: i + 1,
                    path: format!("{i}.png"),
                },
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = ImageClassifierSpec {
        num_classes: 2,
        head_hidden: 0,
        head_dropout: 0.0,
        trainable_units: units,
    };
    let model = ImageClassifier::from_pretrained(&base, &spec, &Device::Cpu, 0)?;
    let run = ImageRun {
        device: "cpu",
        host: true,
        generic,
    };
    let parts = fit_image_job(&model, (batch, units, size), run, u64::MAX)?;
    drop(model);
    let work_dir = tempfile::tempdir()?;
    let job = ImageClassificationJob {
        base_model: temper::artifacts::BaseLocation::Directory { path: base.clone() },
        base_model_dir: base,
        train,
        valid: None,
        labels: vec!["blue".to_string(), "red".to_string()],
        config: request.resolve(Task::ImageClassification, n_images, 0),
        work_dir: work_dir.path().to_path_buf(),
        device: Device::Cpu,
    };
    let before = reset_peak()?;
    train_on_own_pool(generic, || run_image_classification(&job, &mut Quiet))?;
    let measured = status_bytes("VmHWM:")?.saturating_sub(before);
    println!(
        "{}",
        serde_json::json!({
            "mode": mode, "trained_units": units, "of_units": all_units, "batch_size": batch,
            "image_size": size, "generic": generic,
            "estimate_mib": {"optimizer": mib(parts.optimizer), "activations": mib(parts.activations),
                             "checkpoint": mib(parts.checkpoint), "total": mib(parts.total())},
            "measured_growth_mib": mib(measured),
            "estimate_over_measured": (parts.total() as f64 / measured as f64 * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}
