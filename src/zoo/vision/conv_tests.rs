//! The channels-last convolutions against candle's own NCHW `conv2d` (forward and both
//! gradients), and the promise that frozen parts get no gradient at all.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor, Var};

use super::*;
use crate::zoo::test_tensors::max_abs_diff;

fn seeded(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n as u64)
        .map(|i| {
            let z = crate::zoo::cpu::dropout::mix(seed ^ crate::zoo::cpu::dropout::mix(i));
            (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn nhwc(x: &Tensor) -> Tensor {
    x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()
}

/// Ours on NHWC vs candle's on NCHW: outputs and the gradients of a weighted sum.
fn check_against_candle(c_in: usize, c_out: usize, size: usize, spec: ConvSpec) {
    let x_nchw = Var::from_tensor(&seeded(&[2, c_in, size, size], 1)).unwrap();
    let w = Var::from_tensor(&seeded(
        &[c_out, c_in / spec.groups, spec.kernel, spec.kernel],
        2,
    ))
    .unwrap();
    let reference = x_nchw
        .as_tensor()
        .conv2d(w.as_tensor(), spec.padding, spec.stride, 1, spec.groups)
        .unwrap();
    let probe = seeded(reference.dims(), 3);
    let ref_grads = (&reference * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();

    let x = Var::from_tensor(&nhwc(x_nchw.as_tensor())).unwrap();
    let ours = conv2d(x.as_tensor(), w.as_tensor(), spec).unwrap();
    let diff = max_abs_diff(&ours, &nhwc(&reference));
    assert!(diff < 1e-5, "{spec:?}: output differs by {diff}");
    let grads = (&ours * nhwc(&probe))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let dw = max_abs_diff(
        grads.get(w.as_tensor()).unwrap(),
        ref_grads.get(w.as_tensor()).unwrap(),
    );
    assert!(dw < 1e-4, "{spec:?}: weight gradient differs by {dw}");
    let dx = max_abs_diff(
        grads.get(x.as_tensor()).unwrap(),
        &nhwc(ref_grads.get(x_nchw.as_tensor()).unwrap()),
    );
    assert!(dx < 1e-5, "{spec:?}: input gradient differs by {dx}");
}

#[test]
fn dense_convolutions_match_candle_forward_and_backward() {
    let dense = |kernel, stride, padding| ConvSpec {
        kernel,
        stride,
        padding,
        groups: 1,
    };
    check_against_candle(3, 5, 9, dense(7, 2, 3)); // ResNet's stem
    check_against_candle(4, 6, 8, dense(3, 1, 1));
    check_against_candle(4, 6, 9, dense(3, 2, 1));
    check_against_candle(4, 6, 8, dense(1, 1, 0)); // pointwise: a plain matmul
    check_against_candle(4, 6, 8, dense(1, 2, 0)); // ResNet's downsample
}

#[test]
fn depthwise_convolutions_match_candle_forward_and_backward() {
    let depthwise = |channels, kernel, stride| ConvSpec {
        kernel,
        stride,
        padding: kernel / 2,
        groups: channels,
    };
    check_against_candle(6, 6, 8, depthwise(6, 3, 1));
    check_against_candle(6, 6, 9, depthwise(6, 3, 2));
    check_against_candle(6, 6, 10, depthwise(6, 5, 2));
    check_against_candle(6, 6, 7, depthwise(6, 5, 1));
    // Two full register blocks of channels and a tail of five.
    check_against_candle(37, 37, 8, depthwise(37, 3, 1));
    check_against_candle(37, 37, 9, depthwise(37, 5, 2));
}

#[test]
fn a_frozen_input_gets_no_gradient_and_a_frozen_weight_none_either() {
    let spec = ConvSpec {
        kernel: 3,
        stride: 1,
        padding: 1,
        groups: 1,
    };
    // Trainable weight, input from frozen layers: only dW.
    let x = seeded(&[1, 5, 5, 2], 4);
    let w = Var::from_tensor(&seeded(&[3, 2, 3, 3], 5)).unwrap();
    let y = conv2d(&x, w.as_tensor(), spec).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(w.as_tensor()).is_some());
    assert!(grads.get(&x).is_none());
    // Nothing trainable: the output records no graph.
    let frozen = conv2d(&x, &w.as_tensor().detach(), spec).unwrap();
    assert!(!frozen.track_op());
    let dw_frozen = ConvSpec { groups: 2, ..spec };
    let dw_weight = seeded(&[2, 1, 3, 3], 6);
    assert!(!conv2d(&x, &dw_weight, dw_frozen).unwrap().track_op());
}

#[test]
fn grouped_convolutions_other_than_depthwise_are_refused() {
    let x = seeded(&[1, 4, 4, 4], 7);
    let w = seeded(&[4, 2, 3, 3], 8);
    let spec = ConvSpec {
        kernel: 3,
        stride: 1,
        padding: 1,
        groups: 2,
    };
    let err = conv2d(&x, &w, spec).unwrap_err().to_string();
    assert!(err.contains("only depthwise"), "{err}");
}
