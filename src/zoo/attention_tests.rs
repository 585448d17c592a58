use candle_core::{Device, Tensor, Var, D};

use super::{attention, composed_attention, dropout_scale, FusedAttention, CHUNK_FLOATS};

const B: usize = 3;
const H: usize = 2;
const T: usize = 5;
const HEAD_DIM: usize = 4;

fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    // A fixed pseudo-random fill, so each test sees the same numbers.
    let values: Vec<f32> = (0..n as u64)
        .map(|i| ((super::mix(seed ^ i) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor")
}

/// Additive padding mask: batch element `b` has its last `b` positions padded.
fn padding_mask() -> Tensor {
    let mut values = vec![0f32; B * T];
    for b in 0..B {
        for t in T - b..T {
            values[b * T + t] = f32::MIN;
        }
    }
    Tensor::from_vec(values, (B, 1, 1, T), &Device::Cpu).expect("mask")
}

fn inputs() -> (Var, Var, Var, Tensor) {
    let shape = (B, H, T, HEAD_DIM);
    let var = |seed| Var::from_tensor(&random(shape, seed)).expect("var");
    // A fixed cotangent, so the loss Σ out·w has a non-trivial gradient everywhere.
    (var(1), var(2), var(3), random(shape, 4))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .expect("sub")
        .abs()
        .expect("abs")
        .flatten_all()
        .expect("flat")
        .max(0)
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar")
}

/// Output and the gradients of q, k, v of `Σ f(q, k, v)·w`.
fn output_and_grads(
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) -> (Tensor, Tensor, Tensor, Tensor) {
    let (q, k, v, w) = inputs();
    let out = f(q.as_tensor(), k.as_tensor(), v.as_tensor());
    let loss = (&out * &w).expect("mul").sum_all().expect("sum");
    let grads = loss.backward().expect("backward");
    let grad = |var: &Var| grads.get(var.as_tensor()).expect("gradient").clone();
    (out, grad(&q), grad(&k), grad(&v))
}

fn assert_all_close(a: &(Tensor, Tensor, Tensor, Tensor), b: &(Tensor, Tensor, Tensor, Tensor)) {
    for (name, x, y) in [
        ("output", &a.0, &b.0),
        ("dq", &a.1, &b.1),
        ("dk", &a.2, &b.2),
        ("dv", &a.3, &b.3),
    ] {
        let diff = max_diff(x, y);
        assert!(diff < 1e-5, "{name} differs by {diff}");
    }
}

#[test]
fn fused_attention_matches_the_composed_ops_and_their_gradients() {
    let mask = padding_mask();
    let fused = output_and_grads(|q, k, v| attention(q, k, v, &mask, 0.0).expect("fused"));
    let composed =
        output_and_grads(|q, k, v| composed_attention(q, k, v, &mask, 0.0).expect("composed"));
    assert_all_close(&fused, &composed);
    // The padded keys get no weight: changing v at a padded position changes nothing.
    let (_, _, _, dv) = &fused;
    let padded = dv
        .narrow(0, 2, 1)
        .expect("b=2")
        .narrow(2, T - 2, 2)
        .expect("last two");
    assert_eq!(
        padded
            .abs()
            .expect("abs")
            .sum_all()
            .expect("sum")
            .to_scalar::<f32>()
            .expect("s"),
        0.0
    );
}

/// Dropout applied by hand with the mask [`dropout_scale`] gives for `seed`.
fn composed_with_mask(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: &Tensor) -> Tensor {
    let scores = q
        .matmul(&k.t().expect("t"))
        .expect("qk")
        .broadcast_add(mask)
        .expect("mask");
    let probs = candle_nn::ops::softmax(&scores, D::Minus1).expect("softmax");
    (probs * scale).expect("dropout").matmul(v).expect("pv")
}

#[test]
fn dropout_in_the_backward_uses_the_forwards_mask_however_the_batch_is_chunked() {
    let (seed, p) = (42, 0.3);
    let mask = padding_mask();
    let scale = dropout_scale(seed, p, (0, B), (H, T), &Device::Cpu).expect("scale");
    let reference = output_and_grads(|q, k, v| composed_with_mask(q, k, v, &mask, &scale));
    for chunk_floats in [1, H * T * T * 2, CHUNK_FLOATS] {
        let op = || FusedAttention {
            mask: mask.clone(),
            dropout: p,
            seed,
            chunk_floats,
        };
        let fused = output_and_grads(|q, k, v| q.apply_op3(k, v, op()).expect("fused"));
        assert_all_close(&fused, &reference);
    }
}

#[test]
fn dropout_scale_drops_about_p_of_the_entries_and_rescales_the_rest() {
    let (heads, t, p) = (4, 128, 0.1f32);
    let scale = dropout_scale(7, p, (0, 2), (heads, t), &Device::Cpu).expect("scale");
    let values = scale
        .flatten_all()
        .expect("flat")
        .to_vec1::<f32>()
        .expect("vec");
    let dropped = values.iter().filter(|&&x| x == 0.0).count() as f32 / values.len() as f32;
    assert!((dropped - p).abs() < 0.005, "dropped {dropped}");
    assert!(values
        .iter()
        .all(|&x| x == 0.0 || (x - 1.0 / 0.9).abs() < 1e-6));
    // A later chunk is the same slice of one mask, and another seed is another mask.
    let second = dropout_scale(7, p, (1, 1), (heads, t), &Device::Cpu).expect("second");
    assert_eq!(
        max_diff(&second, &scale.narrow(0, 1, 1).expect("narrow")),
        0.0
    );
    let other = dropout_scale(8, p, (0, 2), (heads, t), &Device::Cpu).expect("other");
    assert!(max_diff(&other, &scale) > 1.0);
}
