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

/// The same attention from candle ops, one sequence at a time (key/value heads repeated
/// for grouped queries, an additive causal mask), with the op's dropout multipliers given
/// as a `[heads, len, len]` tensor per sequence.
fn composed(op: &VarlenAttention, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let spec = op.spec;
    let d = spec.head_dim;
    let group = spec.heads / spec.kv_heads;
    let repeat: Vec<u32> = (0..spec.heads).map(|h| (h / group) as u32).collect();
    let repeat = Tensor::from_vec(repeat, spec.heads, &Device::Cpu).unwrap();
    let per_sequence: Vec<Tensor> = op
        .spans
        .iter()
        .map(|&span| {
            let heads = |x: &Tensor, n: usize| {
                x.narrow(0, span.start, span.len)
                    .unwrap()
                    .reshape((span.len, n, d))
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let qh = heads(q, spec.heads);
            let kh = heads(k, spec.kv_heads).index_select(&repeat, 0).unwrap();
            let vh = heads(v, spec.kv_heads).index_select(&repeat, 0).unwrap();
            let mut scores =
                (qh.matmul(&kh.t().unwrap()).unwrap() * f64::from(spec.scale)).unwrap();
            if spec.causal {
                let mask: Vec<f32> = (0..span.len)
                    .flat_map(|i| (0..span.len).map(move |j| if j > i { -1e9 } else { 0.0 }))
                    .collect();
                let mask = Tensor::from_vec(mask, (span.len, span.len), &Device::Cpu).unwrap();
                scores = scores.broadcast_add(&mask).unwrap();
            }
            let mut probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
            if spec.dropout > 0.0 {
                let mask: Vec<f32> = (0..spec.heads)
                    .flat_map(|h| {
                        (0..span.len).flat_map(move |i| {
                            (0..span.len).map(move |j| op.keep_scale(span.start + i, h, j))
                        })
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (spec.heads, span.len, span.len), &Device::Cpu);
                probs = (probs * mask.unwrap()).unwrap();
            }
            probs
                .matmul(&vh)
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .reshape((span.len, spec.heads * d))
                .unwrap()
        })
        .collect();
    Tensor::cat(&per_sequence, 0).unwrap()
}

fn check_against_composed(lengths: &[usize], spec: AttentionSpec) {
    let n: usize = lengths.iter().sum();
    let kv_width = spec.kv_heads * spec.head_dim;
    let q = Var::from_tensor(&wave(&[n, spec.heads * spec.head_dim], 1.2, 0.1)).unwrap();
    let k = Var::from_tensor(&wave(&[n, kv_width], 0.9, 1.7)).unwrap();
    let v = Var::from_tensor(&wave(&[n, kv_width], 1.0, 2.9)).unwrap();
    let weights = wave(&[n, spec.heads * spec.head_dim], 1.0, 0.4);
    let op = VarlenAttention {
        spans: spans(lengths),
        spec,
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

fn encoder(dropout: f32) -> AttentionSpec {
    AttentionSpec::encoder(HIDDEN, HEADS, dropout)
}

#[test]
fn matches_per_sequence_attention_forward_and_gradients() {
    check_against_composed(&[3, 5, 1, 7], encoder(0.0));
}

#[test]
fn causal_grouped_query_attention_matches_repeated_heads_with_a_causal_mask() {
    // 4 query heads over 2 key/value heads of 3, queries pre-scaled (scale 1), as the
    // decoder calls it; with and without dropout.
    for dropout in [0.0, 0.2] {
        let spec = AttentionSpec {
            heads: 4,
            kv_heads: 2,
            head_dim: 3,
            scale: 1.0,
            causal: true,
            dropout,
        };
        check_against_composed(&[5, 1, 4], spec);
    }
}

#[test]
fn with_dropout_forward_and_backward_use_one_mask() {
    check_against_composed(&[4, 6, 2], encoder(0.3));
}

#[test]
fn attention_stays_inside_each_sequence() {
    // Changing the second sequence's keys and values leaves the first one's output alone.
    let q = wave(&[7, HIDDEN], 1.0, 0.2);
    let k = wave(&[7, HIDDEN], 1.0, 0.5);
    let v = wave(&[7, HIDDEN], 1.0, 0.9);
    let layout = spans(&[3, 4]);
    let out = varlen_attention(&q, &k, &v, &layout, encoder(0.0)).unwrap();
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
    let out2 = varlen_attention(&q, &k2, &v2, &layout, encoder(0.0)).unwrap();
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
    assert!(varlen_attention(&x, &x, &x, &gap, encoder(0.0)).is_err());
    assert!(varlen_attention(&x, &x, &x, &spans(&[2, 2]), encoder(0.0)).is_err());
    let five_heads = AttentionSpec::encoder(HIDDEN, 5, 0.0);
    assert!(varlen_attention(&x, &x, &x, &spans(&[5]), five_heads).is_err());
    let narrow_kv = AttentionSpec {
        kv_heads: 1,
        ..encoder(0.0)
    };
    assert!(varlen_attention(&x, &x, &x, &spans(&[5]), narrow_kv).is_err());
}
