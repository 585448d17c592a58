//! The composed vision ops (what a GPU runs) against the CPU kernels: forward values and
//! every gradient for dense and depthwise convolutions (strides 1 and 2, padded), the
//! padded overlapping max pool, and training-mode BatchNorm with each activation and its
//! running-statistics update.
#![allow(clippy::unwrap_used)]

use candle_core::{Tensor, Var};

use crate::zoo::fused::with_generic_ops;
use crate::zoo::linear::Param;
use crate::zoo::test_tensors::{max_abs, max_abs_diff, wave};
use crate::zoo::vision::conv::{conv2d, ConvSpec};
use crate::zoo::vision::norm::{Activation, BatchNorm};
use crate::zoo::vision::pool::max_pool2d;
use crate::zoo::vision::Role;

/// Output and the gradients (of Σ output · probe) of `inputs`, from `f` on fresh vars.
fn run(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor, generic: bool) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let forward = || {
        let out = f(&tensors);
        let probe = wave(out.dims(), 1.0, 0.7);
        let grads = (&out * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        (out, grads)
    };
    let (out, grads) = if generic {
        with_generic_ops(forward)
    } else {
        forward()
    };
    let grads = vars
        .iter()
        .map(|v| grads.get(v.as_tensor()).unwrap().clone())
        .collect();
    (out, grads)
}

fn assert_paths_agree(what: &str, inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor) {
    let (fused, fused_grads) = run(inputs, f, false);
    let (generic, generic_grads) = run(inputs, f, true);
    let scale = max_abs(&fused).max(1e-3);
    assert!(
        max_abs_diff(&fused, &generic) / scale < 1e-5,
        "{what}: outputs differ"
    );
    for (i, (a, b)) in fused_grads.iter().zip(&generic_grads).enumerate() {
        let diff = max_abs_diff(a, b) / max_abs(a).max(1e-3);
        assert!(max_abs(a) > 0.0, "{what}: gradient {i} is zero");
        assert!(
            diff < 1e-4,
            "{what}: gradient {i} differs by {diff} of its scale"
        );
    }
}

#[test]
fn composed_convolutions_equal_the_kernels() {
    let cases = [
        (
            "dense 3x3 s1 p1",
            5,
            4,
            ConvSpec {
                kernel: 3,
                stride: 1,
                padding: 1,
                groups: 1,
            },
        ),
        (
            "dense 3x3 s2 p1",
            5,
            4,
            ConvSpec {
                kernel: 3,
                stride: 2,
                padding: 1,
                groups: 1,
            },
        ),
        (
            "dense 1x1",
            6,
            3,
            ConvSpec {
                kernel: 1,
                stride: 1,
                padding: 0,
                groups: 1,
            },
        ),
        (
            "dense 7x7 s2 p3",
            3,
            4,
            ConvSpec {
                kernel: 7,
                stride: 2,
                padding: 3,
                groups: 1,
            },
        ),
        (
            "depthwise 3x3 s1",
            6,
            6,
            ConvSpec {
                kernel: 3,
                stride: 1,
                padding: 1,
                groups: 6,
            },
        ),
        (
            "depthwise 5x5 s2",
            6,
            6,
            ConvSpec {
                kernel: 5,
                stride: 2,
                padding: 2,
                groups: 6,
            },
        ),
    ];
    for (what, c_in, c_out, spec) in cases {
        let x = wave(&[2, 9, 9, c_in], 1.0, 0.1);
        let w = wave(
            &[c_out, c_in / spec.groups, spec.kernel, spec.kernel],
            0.5,
            0.3,
        );
        assert_paths_agree(what, &[x, w], &|t| conv2d(&t[0], &t[1], spec).unwrap());
    }
}

#[test]
fn the_composed_max_pool_equals_the_kernel() {
    // ResNet's 3×3 stride-2 pool with padding 1, on distinct values (no ties).
    let x = wave(&[2, 9, 8, 3], 1.0, 0.2);
    assert_paths_agree("max pool", &[x], &|t| max_pool2d(&t[0], 3, 2, 1).unwrap());
}

#[test]
fn composed_training_batch_norm_equals_the_kernel_and_moves_the_same_statistics() {
    for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
        let stats = std::cell::RefCell::new(Vec::new());
        let f = |t: &[Tensor]| {
            let bn = BatchNorm {
                name: "bn".into(),
                weight: Param::Trainable(Var::from_tensor(&t[1]).unwrap()),
                bias: Param::Trainable(Var::from_tensor(&t[2]).unwrap()),
                running_mean: Var::from_tensor(&wave(&[4], 0.3, 0.5)).unwrap(),
                running_var: Var::from_tensor(
                    &(wave(&[4], 0.3, 0.9).abs().unwrap() + 0.5).unwrap(),
                )
                .unwrap(),
                eps: 1e-5,
            };
            // The weight and bias as the op sees them are the vars `run` differentiates.
            let bn = BatchNorm {
                weight: Param::Frozen(t[1].clone()),
                bias: Param::Frozen(t[2].clone()),
                ..bn
            };
            let y = bn.forward(&t[0], Role::Train, act).unwrap();
            stats.borrow_mut().push((
                bn.running_mean.as_tensor().clone(),
                bn.running_var.as_tensor().clone(),
            ));
            y
        };
        let x = (wave(&[2, 3, 5, 4], 2.0, 0.4) + 0.3).unwrap();
        let (w, b) = (wave(&[4], 1.0, 0.2), wave(&[4], 0.5, 0.6));
        assert_paths_agree(&format!("batch norm {act:?}"), &[x, w, b], &f);
        let stats = stats.into_inner();
        let (fused, generic) = (&stats[0], &stats[1]);
        assert!(
            max_abs_diff(&fused.0, &generic.0) < 1e-6,
            "{act:?}: running mean"
        );
        assert!(
            max_abs_diff(&fused.1, &generic.1) < 1e-5,
            "{act:?}: running var"
        );
    }
}

#[test]
fn composed_convolutions_equal_the_kernels_at_the_backbones_shapes() {
    // Small late feature maps (a 5×5 window over 2×2 to 4×4), many channels, strides 1/2.
    for (what, size, c_in, c_out, spec) in [
        (
            "dw5 s2 on 2x2",
            2,
            6,
            6,
            ConvSpec {
                kernel: 5,
                stride: 2,
                padding: 2,
                groups: 6,
            },
        ),
        (
            "dw3 s2 on 4x4",
            4,
            6,
            6,
            ConvSpec {
                kernel: 3,
                stride: 2,
                padding: 1,
                groups: 6,
            },
        ),
        (
            "dw5 s1 on 2x2",
            2,
            6,
            6,
            ConvSpec {
                kernel: 5,
                stride: 1,
                padding: 2,
                groups: 6,
            },
        ),
        (
            "dense3 s2 on 4x4",
            4,
            3,
            5,
            ConvSpec {
                kernel: 3,
                stride: 2,
                padding: 1,
                groups: 1,
            },
        ),
        (
            "dw3 s2 on 5x5",
            5,
            6,
            6,
            ConvSpec {
                kernel: 3,
                stride: 2,
                padding: 1,
                groups: 6,
            },
        ),
        (
            "dw5 s2 on 8x8",
            8,
            6,
            6,
            ConvSpec {
                kernel: 5,
                stride: 2,
                padding: 2,
                groups: 6,
            },
        ),
    ] {
        let x = wave(&[2, size, size, c_in], 1.0, 0.1);
        let w = wave(
            &[c_out, c_in / spec.groups, spec.kernel, spec.kernel],
            0.5,
            0.3,
        );
        assert_paths_agree(what, &[x, w], &|t| conv2d(&t[0], &t[1], spec).unwrap());
    }
}
