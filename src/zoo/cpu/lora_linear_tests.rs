#![allow(clippy::unwrap_used)]

use candle_core::{Tensor, Var};

use super::lora_linear;
use crate::zoo::test_tensors::{max_abs_diff, wave};

const SCALE: f64 = 2.5;

/// The layer as the composed ops compute it: `x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ`.
fn composed(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, a: &Tensor, b: &Tensor) -> Tensor {
    let mut base = x.matmul(&w.t().unwrap()).unwrap();
    if let Some(bias) = bias {
        base = base.broadcast_add(bias).unwrap();
    }
    let up = x
        .matmul(&a.t().unwrap())
        .unwrap()
        .matmul(&b.t().unwrap())
        .unwrap();
    (base + (up * SCALE).unwrap()).unwrap()
}

/// Gradients of `Σ y · weights` (weights fixed and non-uniform).
fn grads_of(y: &Tensor) -> candle_core::backprop::GradStore {
    let weights = wave(y.dims(), 1.0, 2.3);
    (y * weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

/// Compares the fused layer with the composed one, forward and every gradient, at sizes
/// where the products split over the pool (300 rows: the base products split) or do not.
fn check(rows: usize, with_bias: bool) {
    let (in_dim, out, rank) = (48, 40, 4);
    let x = Var::from_tensor(&wave(&[rows, in_dim], 1.5, 0.3)).unwrap();
    let w = wave(&[out, in_dim], 0.4, 1.1);
    let bias = with_bias.then(|| wave(&[out], 0.2, 0.7));
    let a = Var::from_tensor(&wave(&[rank, in_dim], 0.3, 0.5)).unwrap();
    let b = Var::from_tensor(&wave(&[out, rank], 0.6, 1.7)).unwrap();
    let fused = lora_linear(
        x.as_tensor(),
        &w,
        bias.as_ref(),
        (a.as_tensor(), b.as_tensor()),
        SCALE,
    )
    .unwrap();
    let reference = composed(
        x.as_tensor(),
        &w,
        bias.as_ref(),
        a.as_tensor(),
        b.as_tensor(),
    );
    let d = max_abs_diff(&fused, &reference);
    assert!(d < 1e-4, "output differs by {d}");
    let (gf, gc) = (grads_of(&fused), grads_of(&reference));
    for (name, var) in [("x", &x), ("A", &a), ("B", &b)] {
        let (f, c) = (
            gf.get(var.as_tensor()).unwrap(),
            gc.get(var.as_tensor()).unwrap(),
        );
        assert_eq!(f.dims(), c.dims(), "{name}");
        let d = max_abs_diff(f, c);
        assert!(d < 1e-3, "{name} gradient differs by {d}");
    }
    // The frozen base gets none.
    assert!(gf.get(&w).is_none());
}

#[test]
fn fused_lora_layer_matches_the_composed_ops_and_every_gradient() {
    check(300, false);
    check(3, false);
}

#[test]
fn a_frozen_bias_seeds_the_output() {
    check(300, true);
}

#[test]
fn an_input_without_gradient_gets_none_and_the_adapter_still_trains() {
    let x = wave(&[6, 8], 1.0, 0.9);
    let w = wave(&[5, 8], 0.5, 0.2);
    let a = Var::from_tensor(&wave(&[2, 8], 0.3, 0.1)).unwrap();
    let b = Var::from_tensor(&wave(&[5, 2], 0.7, 0.4)).unwrap();
    let fused = lora_linear(&x, &w, None, (a.as_tensor(), b.as_tensor()), SCALE).unwrap();
    let grads = grads_of(&fused);
    assert!(grads.get(&x).is_none());
    let reference = grads_of(&composed(&x, &w, None, a.as_tensor(), b.as_tensor()));
    for var in [&a, &b] {
        let d = max_abs_diff(
            grads.get(var.as_tensor()).unwrap(),
            reference.get(var.as_tensor()).unwrap(),
        );
        assert!(d < 1e-4, "adapter gradient differs by {d}");
    }
}

#[test]
fn mismatched_shapes_are_an_error() {
    let x = wave(&[6, 8], 1.0, 0.9);
    let w = wave(&[5, 8], 0.5, 0.2);
    let (a, b) = (wave(&[2, 7], 0.3, 0.1), wave(&[5, 2], 0.7, 0.4));
    assert!(lora_linear(&x, &w, None, (&a, &b), SCALE).is_err());
    let (a, b) = (wave(&[2, 8], 0.3, 0.1), wave(&[5, 3], 0.7, 0.4));
    assert!(lora_linear(&x, &w, None, (&a, &b), SCALE).is_err());
}
