//! Tensor helpers shared by the numerical tests of every model module.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};

/// max |t| over all elements (f32).
pub(crate) fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a − b| over all elements (f32).
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// A deterministic, non-trivial tensor of `shape` (values in ±scale).
pub(crate) fn wave(shape: &[usize], scale: f32, phase: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i as f32) * 0.731 + phase).sin() * scale)
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}
