//! The folded prefix against the layer-by-layer path on the EfficientNet-Lite fixture
//! (tiny random timm weights with non-trivial BatchNorm statistics).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use super::super::efficientnet::EfficientNetLite;
use super::super::layers::Weights;
use super::super::Role;
use crate::zoo::test_tensors::{max_abs, max_abs_diff};

fn fixture_net() -> EfficientNetLite {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vision/efficientnet_lite/model.safetensors");
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    EfficientNetLite::load(&Weights {
        tensors,
        trainable_prefixes: Vec::new(),
    })
    .unwrap()
}

fn images(n: usize) -> Tensor {
    Tensor::randn(0f32, 1.0, (n, 48, 40, 3), &Device::Cpu).unwrap()
}

fn roles(frozen: usize, units: usize) -> Vec<Role> {
    (0..units)
        .map(|u| {
            if u < frozen {
                Role::Frozen
            } else {
                Role::Train
            }
        })
        .collect()
}

#[test]
fn the_folded_prefix_gives_the_layer_by_layer_activations() {
    let net = fixture_net();
    let units = net.n_stages() + 2;
    assert_eq!(units, 9);
    // One image (its products split over the pool) and five (an image per thread).
    for n in [1, 5] {
        let x = images(n);
        for frozen in 1..=units {
            let folded = net.frozen_prefix(frozen).unwrap().forward(&x).unwrap();
            let layered = net.run_units(&x, &roles(units, units), 0..frozen).unwrap();
            assert_eq!(folded.dims(), layered.dims());
            assert_eq!(folded.dims()[0], n);
            let scale = max_abs(&layered);
            let diff = max_abs_diff(&folded, &layered);
            assert!(
                scale > 0.1 && diff < 2e-6 * scale,
                "n {n}, {frozen} frozen units: activations differ by {diff} (largest {scale})"
            );
        }
    }
}

/// The whole forward, training units after a folded prefix: their batch statistics over
/// a few values per channel (2×2 positions in the last stages) magnify the prefix's
/// rounding differences, so the bound is looser than the prefix's own.
#[test]
fn features_with_a_folded_prefix_match_the_layer_by_layer_forward() {
    let x = images(5);
    for frozen in [1, 4, 8, 9] {
        let roles = roles(frozen, 9);
        // Training units move their running statistics: one model per path.
        let folded = fixture_net().features(&x, &roles).unwrap();
        let layered = fixture_net().run_units(&x, &roles, 0..9).unwrap();
        let scale = max_abs(&layered);
        let diff = max_abs_diff(&folded, &layered);
        assert!(
            scale > 0.1 && diff < 5e-5 * scale,
            "{frozen} frozen units: features differ by {diff} (largest {scale})"
        );
    }
}

#[test]
fn a_tracked_input_runs_layer_by_layer() {
    let net = fixture_net();
    let var = candle_core::Var::from_tensor(&images(2)).unwrap();
    let features = net.features(var.as_tensor(), &roles(9, 9)).unwrap();
    let grads = features.sum_all().unwrap().backward().unwrap();
    let grad = grads.get(var.as_tensor()).unwrap();
    assert_eq!(grad.dims(), &[2, 48, 40, 3]);
    assert!(max_abs(grad) > 0.0, "the input got a zero gradient");
}

#[test]
fn wrong_inputs_are_errors() {
    let net = fixture_net();
    let empty = Tensor::zeros((0, 48, 40, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(net.features(&empty, &roles(9, 9)).is_err());
    let two_channels = Tensor::zeros((2, 48, 40, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(net.features(&two_channels, &roles(9, 9)).is_err());
    assert!(net.features(&images(2), &roles(3, 4)).is_err());
}
