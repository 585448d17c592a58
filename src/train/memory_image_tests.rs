#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use candle_core::Device;

use super::*;
use crate::zoo::vision::ImageClassifierSpec;

#[test]
fn the_estimate_adds_the_trained_units_the_widest_layer_and_the_pixels() {
    let footprint = [
        UnitFootprint {
            saved: 10,
            working: 100,
        },
        UnitFootprint {
            saved: 20,
            working: 50,
        },
        UnitFootprint {
            saved: 30,
            working: 70,
        },
    ];
    let step = ImageStep {
        footprint: &footprint,
        trained_units: 2,
        image_size: 4,
        trainable_params: 1000,
        frozen_images_at_once: None,
        generic: true,
    };
    // Per image 2·3·4·4 pixels, then the larger phase: the frozen stem's 100 working, or
    // the last two units' 20 + 30 saved and 70 working; on the composed ops × 8/5 as measured.
    let gpu = estimate_image(&step, 3, false);
    assert_eq!(gpu.activations, 4 * 3 * (96 + 120) * 8 / 5);
    assert_eq!(gpu.optimizer, 12_000);
    assert_eq!(gpu.total(), 12_000 + 4_147);
    let kernels = ImageStep {
        generic: false,
        ..step
    };
    assert_eq!(
        estimate_image(&kernels, 3, false).activations,
        4 * 3 * (96 + 120) * 27 / 20
    );
    // On the CPU a checkpoint's copy of the moments (8,000) outweighs this step.
    assert_eq!(estimate_image(&step, 3, true).total(), 12_000 + 8_000);
    let frozen = ImageStep {
        trained_units: 0,
        ..step
    };
    assert_eq!(
        estimate_image(&frozen, 3, false).activations,
        4 * 3 * (96 + 100) * 8 / 5
    );
    // A folded frozen prefix works on one image per thread: 2 of the 3 at once.
    let folded = ImageStep {
        frozen_images_at_once: Some(2),
        ..frozen
    };
    assert_eq!(
        estimate_image(&folded, 3, false).activations,
        4 * (3 * 96 + 2 * 100) * 8 / 5
    );
}

fn fixture_model(trainable_units: usize) -> ImageClassifier {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vision/efficientnet_lite");
    let spec = ImageClassifierSpec {
        num_classes: 2,
        head_hidden: 0,
        head_dropout: 0.0,
        trainable_units,
    };
    ImageClassifier::from_pretrained(&dir, &spec, &Device::Cpu, 0).unwrap()
}

const GPU: ImageRun<'static> = ImageRun {
    device: "cuda:0",
    host: false,
    generic: true,
};

/// Bytes a step of `batch` images of `size` training `units` adds, with the 15 % margin.
fn with_margin(model: &ImageClassifier, batch: usize, units: usize, size: usize) -> u64 {
    let total = fit_image_job(model, (batch, units, size), GPU, u64::MAX)
        .unwrap()
        .total();
    total + total * 3 / 20
}

#[test]
fn a_job_that_does_not_fit_is_told_the_batch_the_units_and_the_size_that_would() {
    let units = fixture_model(0).n_units();
    let model = fixture_model(units);
    let need = with_margin(&model, 16, units, 128);
    let parts = fit_image_job(&model, (16, units, 128), GPU, u64::MAX).unwrap();
    assert_eq!(
        fit_image_job(&model, (16, units, 128), GPU, need).unwrap(),
        parts
    );
    // 1 % short: each way out is the largest that fits.
    let budget = need - need / 100;
    let message = fit_image_job(&model, (16, units, 128), GPU, budget)
        .unwrap_err()
        .to_string();
    let batch = (2..16)
        .rev()
        .find(|&b| with_margin(&model, b, units, 128) <= budget)
        .unwrap();
    assert_eq!(batch, 15, "one image less is about 6 % less");
    let fewer = (0..units)
        .rev()
        .find(|&u| with_margin(&model, 16, u, 128) <= budget)
        .unwrap();
    assert!(fewer < units);
    assert!(message.contains("on `cuda:0`"), "{message}");
    assert!(
        message.contains("`batch_size` 15 (with `gradient_accumulation_steps` 2"),
        "{message}"
    );
    assert!(
        message.contains(&format!("at most {fewer} backbone units unfrozen")),
        "{message}"
    );
    assert!(message.contains("`image_size` 96"), "{message}");
}

#[test]
fn the_composed_ops_are_estimated_above_the_cpu_kernels() {
    let units = fixture_model(0).n_units();
    let model = fixture_model(units);
    let cpu = ImageRun {
        device: "cpu",
        host: true,
        generic: false,
    };
    let on_cpu = fit_image_job(&model, (8, units, 64), cpu, u64::MAX)
        .unwrap()
        .total();
    let on_gpu = fit_image_job(&model, (8, units, 64), GPU, u64::MAX)
        .unwrap()
        .total();
    let saved = |generic| -> u64 {
        let footprint = model.footprint(64, generic).unwrap();
        footprint.iter().map(|u| u.saved).sum()
    };
    assert!(saved(true) > 3 * saved(false));
    assert!(on_gpu > on_cpu, "{on_gpu} vs {on_cpu}");
}
