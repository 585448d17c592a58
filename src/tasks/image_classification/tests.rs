//! `run_image_classification` on the tiny random EfficientNet-Lite fixture: the head alone
//! learns red from blue, unfreezing trains exactly the scheduled units (and moves only
//! their BatchNorm statistics), a pause across the unfreeze boundary resumes exactly, and
//! the export and the served model agree with the checkpoint.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::*;
use crate::artifacts::checkpoint;
use crate::artifacts::ExportFormat;
use crate::domain::dataset::images::{ImageAt, LabeledImage};
use crate::domain::hyperparams::{ImageOptions, TrainingConfig, UnfreezeStep};
use crate::tasks::sequence_classification::tests::{
    completed, config, pause_then_resume, resumable_config, trainable, Recorder,
};
use crate::tasks::serve::ServeBackend;
use crate::train::{StepMetrics, TrainOutcome};
use crate::zoo::fused::with_generic_ops;
use crate::zoo::test_tensors::max_abs_diff;

/// The fixture where this crate was built, or under the working directory when the test
/// binary runs elsewhere (`scripts/gpu-check.sh device` runs it from a copy of the tree).
fn base_dir() -> PathBuf {
    let relative = "tests/fixtures/vision/efficientnet_lite";
    let built_here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    match built_here.exists() {
        true => built_here,
        false => PathBuf::from(relative),
    }
}

/// A noisy image that is mostly red or mostly blue, as PNG bytes.
fn png(red: bool, seed: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(20, 16, |x, y| {
        let noise = ((x * 7 + y * 13 + seed * 31) % 40) as u8;
        if red {
            image::Rgb([200 + noise / 2, noise, 30])
        } else {
            image::Rgb([noise, 40, 200 + noise / 2])
        }
    });
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

fn images(n_per_class: u32) -> Vec<LabeledImage> {
    (0..n_per_class)
        .flat_map(|i| [(true, i), (false, i)])
        .enumerate()
        .map(|(number, (red, i))| LabeledImage {
            label: if red { "red" } else { "blue" }.to_string(),
            bytes: png(red, i),
            at: ImageAt::Entry {
                number: number + 1,
                path: format!("{}/{i}.png", if red { "red" } else { "blue" }),
            },
        })
        .collect()
}

fn image_config(base: TrainingConfig, image: ImageOptions) -> TrainingConfig {
    let mut cfg = TrainingConfig {
        weight_decay: 0.0,
        ..base
    };
    cfg.task_options.image = image.resolve();
    cfg
}

fn job(root: &Path, work: &str, config: TrainingConfig) -> ImageClassificationJob {
    ImageClassificationJob {
        base_model_dir: base_dir(),
        base_model: crate::artifacts::BaseLocation::Directory { path: base_dir() },
        train: images(6),
        valid: Some(images(3)),
        labels: vec!["blue".to_string(), "red".to_string()],
        config,
        work_dir: root.join(work),
        device: Device::Cpu,
    }
}

#[test]
fn the_new_head_alone_learns_and_reports_per_class() {
    let root = tempfile::tempdir().unwrap();
    let cfg = image_config(config(0, 1e-2, 8), ImageOptions::default());
    let job = job(root.path(), "head", cfg);
    let mut rec = Recorder::default();
    let summary = completed(run_image_classification(&job, &mut rec).unwrap());
    // 12 images in batches of 4: 3 steps an epoch.
    assert_eq!(rec.steps.len(), 24);
    let last = rec.steps.last().unwrap();
    assert_eq!(last.value("valid_accuracy"), Some(1.0), "{last:?}");
    assert_eq!(summary.report["accuracy"], 1.0);
    assert_eq!(summary.report["split"], "validation");
    assert_eq!(summary.report["image_size"], 64);
    // Only the head is trainable; the backbone's statistics are the base model's.
    let saved = trainable(&summary.best_checkpoint);
    let base =
        candle_core::safetensors::load(base_dir().join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(saved.contains_key("classifier.weight"));
    assert!(!saved.contains_key("conv_head.weight"));
    assert_eq!(
        max_abs_diff(&saved["bn2.running_var"], &base["bn2.running_var"]),
        0.0
    );
    assert!(
        rec.events
            .iter()
            .any(|e| e.contains("stays frozen; only the new head trains")),
        "{:?}",
        rec.events
    );
    // The memory check ran before the first step and said what it found.
    let estimate = rec
        .events
        .iter()
        .position(|e| e.starts_with("Estimated training memory ") && e.ends_with("on cpu"));
    let plan = rec.events.iter().position(|e| e.contains("stays frozen"));
    assert!(estimate.is_some() && estimate < plan, "{:?}", rec.events);
}

#[test]
fn unfreezing_trains_the_scheduled_units_from_their_epoch_on() {
    let root = tempfile::tempdir().unwrap();
    let schedule = ImageOptions {
        unfreeze_schedule: Some(vec![UnfreezeStep {
            epoch: 2,
            blocks: 1,
        }]),
        ..ImageOptions::default()
    };
    let two_epochs = job(
        root.path(),
        "two",
        image_config(config(0, 1e-2, 2), schedule),
    );
    let mut rec = Recorder::default();
    completed(run_image_classification(&two_epochs, &mut rec).unwrap());
    let base =
        candle_core::safetensors::load(base_dir().join("model.safetensors"), &Device::Cpu).unwrap();
    // Each epoch ends with a checkpoint: step 3 after epoch 1, step 6 after epoch 2.
    let epoch1 = trainable(&checkpoint::step_dir(&two_epochs.work_dir, 3));
    let epoch2 = trainable(&checkpoint::step_dir(&two_epochs.work_dir, 6));
    // The last unit (conv_head + bn2) is a var from the start but moves only in epoch 2.
    let unchanged =
        |a: &HashMap<String, Tensor>, name: &str| max_abs_diff(&a[name], &base[name]) == 0.0;
    assert!(unchanged(&epoch1, "conv_head.weight"));
    assert!(unchanged(&epoch1, "bn2.running_mean"));
    assert!(!unchanged(&epoch2, "conv_head.weight"));
    assert!(!unchanged(&epoch2, "bn2.running_mean"));
    // The unit below stays frozen: its statistics never move, its weights are not saved.
    assert!(unchanged(&epoch2, "blocks.6.0.bn3.running_var"));
    assert!(!epoch2.contains_key("blocks.6.0.conv_pwl.weight"));
    assert!(
        rec.events
            .iter()
            .any(|e| e.contains("starts frozen; unfrozen units (epoch 2: last 1 of 9)")),
        "{:?}",
        rec.events
    );
}

#[test]
fn pause_across_the_unfreeze_boundary_resumes_exactly() {
    let root = tempfile::tempdir().unwrap();
    let recipe = ImageOptions {
        unfreeze_schedule: Some(vec![UnfreezeStep {
            epoch: 2,
            blocks: 2,
        }]),
        head_hidden: Some(8),
        head_dropout: Some(0.5),
        optimizer: Some(crate::domain::hyperparams::OptimizerKind::Adam),
        ..ImageOptions::default()
    };
    let cfg = image_config(resumable_config(), recipe);
    let straight = job(root.path(), "straight", cfg.clone());
    let paused = job(root.path(), "paused", cfg);
    // 12 images / batch 3 = 4 batches, accumulation 2: 2 steps an epoch, 6 in 3 epochs;
    // the pause lands in epoch 2, right after the unfreeze.
    let runs = pause_then_resume(
        (&straight, &straight.work_dir),
        (&paused, &paused.work_dir),
        6,
        3,
        run_image_classification,
    );
    assert_eq!(runs.resumed.best_step, runs.expected.best_step);
    assert_eq!(runs.resumed.report, runs.expected.report);
}

#[test]
fn the_export_is_timm_layout_and_serving_agrees_with_the_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let recipe = ImageOptions {
        head_hidden: Some(8),
        ..ImageOptions::default()
    };
    let job = job(
        root.path(),
        "export",
        image_config(config(0, 1e-2, 2), recipe),
    );
    let summary = completed(run_image_classification(&job, &mut Recorder::default()).unwrap());
    let out = root.path().join("timm");
    crate::tasks::export_checkpoint(
        &summary.best_checkpoint,
        &crate::artifacts::BaseModels::default(),
        ExportFormat::Merged,
        "timm/x",
        &out,
    )
    .unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architecture"], "efficientnet_lite0");
    assert_eq!(config["num_classes"], 2);
    assert_eq!(config["label_names"], serde_json::json!(["blue", "red"]));
    assert_eq!(config["head_hidden"], 8);
    assert_eq!(
        config["pretrained_cfg"]["input_size"],
        serde_json::json!([3, 64, 64])
    );
    let exported =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let base =
        candle_core::safetensors::load(base_dir().join("model.safetensors"), &Device::Cpu).unwrap();
    // Every backbone tensor under timm's name; the old 3-class head replaced by the new one.
    for (name, tensor) in &base {
        if !name.starts_with("classifier.") {
            assert_eq!(exported[name].dims(), tensor.dims(), "{name}");
        }
    }
    assert_eq!(exported["classifier.0.weight"].dims(), &[8, 1280]);
    assert_eq!(exported["classifier.3.weight"].dims(), &[2, 8]);
    assert!(crate::tasks::export_checkpoint(
        &summary.best_checkpoint,
        &crate::artifacts::BaseModels::default(),
        ExportFormat::Adapter,
        "timm/x",
        &out
    )
    .is_err());

    // The served model answers the validation images as the report counted them.
    let mut serving = serve::ImageServing::load(
        &crate::artifacts::BaseModels::default()
            .open(&summary.best_checkpoint)
            .expect("open checkpoint"),
        &Device::Cpu,
    )
    .unwrap();
    let inputs: Vec<Vec<u8>> = images(3).into_iter().map(|i| i.bytes).collect();
    let prepared: Vec<Vec<f32>> = inputs.iter().map(|b| serving.prepare(b).unwrap()).collect();
    let round: Vec<(&Vec<u8>, &Vec<f32>)> = inputs.iter().zip(&prepared).collect();
    let answers = serving.serve_round(&round, 4);
    let right = answers
        .iter()
        .zip(images(3))
        .filter(|(a, i)| a.as_ref().unwrap().label == i.label)
        .count();
    let accuracy = right as f64 / 6.0;
    assert_eq!(serde_json::json!(accuracy), summary.report["accuracy"]);
    let scores = &answers[0].as_ref().unwrap().scores;
    assert!((scores.iter().map(|(_, p)| p).sum::<f32>() - 1.0).abs() < 1e-5);
    let refused = serving.prepare(&b"not an image".to_vec()).unwrap_err();
    assert!(refused.to_string().contains("is not a png"), "{refused}");
}

/// The whole backbone fine-tuned (BatchNorm on batch statistics throughout) on `device`,
/// every op on `path` (the fused CPU kernels, or the composed ones a GPU runs): every step's
/// metrics and the checkpoint's trainable tensors.
fn whole_backbone_run(
    device: Device,
    path: impl FnOnce(&dyn Fn() -> TrainOutcome) -> TrainOutcome,
) -> (Vec<StepMetrics>, HashMap<String, Tensor>) {
    let root = tempfile::tempdir().unwrap();
    let options = ImageOptions {
        freeze_backbone: Some(false),
        ..ImageOptions::default()
    };
    let mut job = job(
        root.path(),
        "whole",
        image_config(config(0, 1e-3, 8), options),
    );
    job.device = device;
    let rec = std::cell::RefCell::new(Recorder::default());
    let outcome = path(&|| run_image_classification(&job, &mut *rec.borrow_mut()).unwrap());
    let summary = completed(outcome);
    let steps = rec.borrow().steps.clone();
    (steps, trainable(&summary.best_checkpoint))
}

fn train_loss(step: &StepMetrics) -> f64 {
    step.value("train_loss").unwrap()
}

/// The first epoch's train losses of two runs: equal to `tol`. Later steps drift apart on
/// rounding alone: BatchNorm over 4 images of a random backbone amplifies any difference
/// (measured: 4e-4 at step 3, 1e-2 at step 4 between the two paths).
fn assert_first_epoch_alike(a: &[StepMetrics], b: &[StepMetrics], tol: f64) {
    for (x, y) in a.iter().zip(b).take(3) {
        assert!(
            (train_loss(x) - train_loss(y)).abs() < tol,
            "{x:?} vs {y:?}"
        );
    }
}

/// Each path gives the same run every time (the CPU kernels' parallel sums are added in a
/// fixed order), and the two paths the same first epoch.
#[test]
fn a_whole_backbone_fine_tunes_the_same_every_run_on_either_path() {
    let (fused, saved) = whole_backbone_run(Device::Cpu, |run| run());
    let (again, _) = whole_backbone_run(Device::Cpu, |run| run());
    assert_eq!(fused, again);
    let (generic, _) = whole_backbone_run(Device::Cpu, |run| with_generic_ops(run));
    let (generic_again, _) = whole_backbone_run(Device::Cpu, |run| with_generic_ops(run));
    assert_eq!(generic, generic_again);
    assert_eq!(fused.len(), 24);
    assert!(saved.contains_key("conv_stem.weight"));
    assert_first_epoch_alike(&fused, &generic, 1e-3);
}

/// On a GPU (`scripts/gpu-check.sh`): the whole backbone fine-tunes there on the composed
/// vision ops as on the CPU (the first epoch alike). It once asked for a valid accuracy of
/// 1.0, which the CPU runs of this recipe do not reach either.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::*;

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn a_whole_backbone_fine_tunes_on_cuda() {
        let (cuda, saved) = whole_backbone_run(Device::new_cuda(0).unwrap(), |run| run());
        let (generic, _) = whole_backbone_run(Device::Cpu, |run| with_generic_ops(run));
        assert!(saved.contains_key("conv_stem.weight"));
        assert_eq!(cuda.len(), 24);
        assert_first_epoch_alike(&cuda, &generic, 1e-3);
    }
}
