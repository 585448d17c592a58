#![allow(clippy::unwrap_used)]

use super::*;
use crate::zoo::test_tensors::{max_abs_diff, wave};
use candle_core::{Device, Var, D};

const HEADS: usize = 3;
const HIDDEN: usize = 12;

fn spans(lengths: &[usize]) -> Arc<[Span]> {
    let mut start = 0;
    lengths
        .iter()
        .map(|&len| {
            let span = Span { start, len };
            start += len;
            span
        })
        .collect()
}

/// The same attention from candle ops, one sequence at a time, with the op's dropout
/// multipliers given as a `[heads, len, len]` tensor per sequence.
fn composed(op: &VarlenAttention, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let d = op.head_dim;
    let per_sequence: Vec<Tensor> = op
        .spans
        .iter()
        .map(|&span| {
            let heads = |x: &Tensor| {
                x.narrow(0, span.start, span.len)
                    .unwrap()
                    .reshape((span.len, HEADS, d))
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let (qh, kh, vh) = (heads(q), heads(k), heads(v));
            let scores = (qh.matmul(&kh.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
            let mut probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
            if op.dropout > 0.0 {
                let mask: Vec<f32> = (0..HEADS)
                    .flat_map(|h| {
                        (0..span.len).flat_map(move |i| {
                            (0..span.len).map(move |j| op.keep_scale(span.start + i, h, j))
                        })
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (HEADS, span.len, span.len), &Device::Cpu);
                probs = (probs * mask.unwrap()).unwrap();
            }
            probs
                .matmul(&vh)
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .reshape((span.len, HIDDEN))
                .unwrap()
        })
        .collect();
    Tensor::cat(&per_sequence, 0).unwrap()
}

fn check_against_composed(lengths: &[usize], dropout: f32) {
    let n: usize = lengths.iter().sum();
    let q = Var::from_tensor(&wave(&[n, HIDDEN], 1.2, 0.1)).unwrap();
    let k = Var::from_tensor(&wave(&[n, HIDDEN], 0.9, 1.7)).unwrap();
    let v = Var::from_tensor(&wave(&[n, HIDDEN], 1.0, 2.9)).unwrap();
    let weights = wave(&[n, HIDDEN], 1.0, 0.4);
    let op = VarlenAttention {
        spans: spans(lengths),
        heads: HEADS,
        head_dim: HIDDEN / HEADS,
        dropout,
        seed: 7,
    };
    let fused = q
        .as_tensor()
        .apply_op3(k.as_tensor(), v.as_tensor(), op.clone())
        .unwrap();
    let reference = composed(&op, q.as_tensor(), k.as_tensor(), v.as_tensor());
    let d = max_abs_diff(&fused, &reference);
    assert!(d < 1e-5, "forward differs by {d}");
    let grads = |y: &Tensor| {
        (y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    };
    let (gf, gr) = (grads(&fused), grads(&reference));
    for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
        let d = max_abs_diff(
            gf.get(var.as_tensor()).unwrap(),
            gr.get(var.as_tensor()).unwrap(),
        );
        assert!(d < 1e-4, "{name} gradient differs by {d}");
    }
}

#[test]
fn matches_per_sequence_attention_forward_and_gradients() {
    check_against_composed(&[3, 5, 1, 7], 0.0);
}

#[test]
fn with_dropout_forward_and_backward_use_one_mask() {
    check_against_composed(&[4, 6, 2], 0.3);
}

#[test]
fn attention_stays_inside_each_sequence() {
    // Changing the second sequence's keys and values leaves the first one's output alone.
    let q = wave(&[7, HIDDEN], 1.0, 0.2);
    let k = wave(&[7, HIDDEN], 1.0, 0.5);
    let v = wave(&[7, HIDDEN], 1.0, 0.9);
    let layout = spans(&[3, 4]);
    let out = varlen_attention(&q, &k, &v, &layout, HEADS, 0.0).unwrap();
    let k2 = Tensor::cat(
        &[
            k.narrow(0, 0, 3).unwrap(),
            (k.narrow(0, 3, 4).unwrap() * 5.0).unwrap(),
        ],
        0,
    )
    .unwrap();
    let v2 = Tensor::cat(
        &[
            v.narrow(0, 0, 3).unwrap(),
            (v.narrow(0, 3, 4).unwrap() - 2.0).unwrap(),
        ],
        0,
    )
    .unwrap();
    let out2 = varlen_attention(&q, &k2, &v2, &layout, HEADS, 0.0).unwrap();
    let first = |t: &Tensor| t.narrow(0, 0, 3).unwrap();
    assert_eq!(max_abs_diff(&first(&out), &first(&out2)), 0.0);
    assert!(
        max_abs_diff(
            &out.narrow(0, 3, 4).unwrap(),
            &out2.narrow(0, 3, 4).unwrap()
        ) > 0.1
    );
}

#[test]
fn spans_that_do_not_tile_the_rows_are_refused() {
    let x = wave(&[5, HIDDEN], 1.0, 0.0);
    let gap: Arc<[Span]> = vec![Span { start: 0, len: 2 }, Span { start: 3, len: 2 }].into();
    assert!(varlen_attention(&x, &x, &x, &gap, HEADS, 0.0).is_err());
    assert!(varlen_attention(&x, &x, &x, &spans(&[2, 2]), HEADS, 0.0).is_err());
    assert!(varlen_attention(&x, &x, &x, &spans(&[5]), 5, 0.0).is_err());
}
