//! A whole training step of each fixture backbone (EfficientNet-Lite, ResNet basic and
//! bottleneck blocks) with every unit training, on the composed ops a GPU runs, against the
//! CPU kernels: the logits, every trainable tensor's gradient and the BatchNorm running
//! statistics the step moved, at 64 px where EfficientNet-Lite's late feature maps are
//! 2×2 to 4×4 (channels of almost no batch variance: the case that needs the BatchNorm
//! statistics in f64). Whole runs are not compared: AdamW turns the float noise of
//! gradients that are zero in exact arithmetic into full-size steps on either path.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use crate::zoo::fused::with_generic_ops;
use crate::zoo::test_tensors::{max_abs, max_abs_diff, wave};
use crate::zoo::vision::{ImageClassifier, ImageClassifierSpec};

/// Logits, gradients by name and the buffers after one train-mode step.
type Step = (Tensor, Vec<(String, Tensor)>, Vec<(String, Tensor)>);

fn step(dir: &std::path::Path) -> Step {
    let units = ImageClassifier::count_units(dir).unwrap();
    let spec = ImageClassifierSpec {
        num_classes: 3,
        head_hidden: 16,
        head_dropout: 0.2,
        trainable_units: units,
    };
    let model = ImageClassifier::from_pretrained(dir, &spec, &Device::Cpu, 5).unwrap();
    let images = wave(&[8, 64, 64, 3], 1.5, 0.3);
    let logits = model.forward(&images, units, true, 9).unwrap();
    let probe = wave(logits.dims(), 1.0, 0.8);
    let grads = (&logits * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let named = model
        .trainable_vars()
        .iter()
        .map(|v| {
            let g = grads.get(v.var.as_tensor());
            let g = g.unwrap_or_else(|| panic!("{} has no gradient", v.name));
            (v.name.clone(), g.clone())
        })
        .collect();
    let buffers = model
        .buffers()
        .iter()
        .map(|b| (b.name.clone(), b.var.as_tensor().copy().unwrap()))
        .collect();
    (logits, named, buffers)
}

#[test]
fn every_fixture_backbone_steps_alike_on_the_generic_path() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vision");
    for arch in ["efficientnet_lite", "resnet_basic", "resnet_bottleneck"] {
        let dir = root.join(arch);
        let (logits, grads, buffers) = step(&dir);
        let (g_logits, g_grads, g_buffers) = with_generic_ops(|| step(&dir));
        let scale = max_abs(&logits);
        let logit_diff = max_abs_diff(&logits, &g_logits) / scale;
        assert!(
            logit_diff < 1e-4,
            "{arch}: logits differ by {logit_diff} of {scale}"
        );
        assert!(grads.len() > 10, "{arch}: the whole backbone trains");
        // Each gradient against its own scale, floored at a thousandth of the model's
        // largest: a gradient that is zero in exact arithmetic (a bias before a BatchNorm)
        // is rounding noise on both paths.
        let largest = grads.iter().map(|(_, g)| max_abs(g)).fold(0f32, f32::max);
        let mut worst = 0f32;
        for ((name, a), (_, b)) in grads.iter().zip(&g_grads) {
            let diff = max_abs_diff(a, b) / max_abs(a).max(1e-3 * largest);
            worst = worst.max(diff);
            assert!(diff < 1e-3, "{arch}: {name} differs by {diff} of its scale");
        }
        for ((name, a), (_, b)) in buffers.iter().zip(&g_buffers) {
            let diff = max_abs_diff(a, b) / max_abs(a).max(1e-6);
            assert!(diff < 1e-4, "{arch}: {name} differs by {diff}");
        }
        eprintln!(
            "{arch}: {} gradients, worst relative difference {worst:e}",
            grads.len()
        );
    }
}
