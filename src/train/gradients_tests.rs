//! AdamW from an embedding table's gradient rows against AdamW from the dense gradient.

use std::sync::Arc;

use candle_core::{Device, Tensor, Var};

use crate::train::optim::{AdamW, AdamWConfig, Gradients, OptimParam};
use crate::zoo::cpu::embedding::{lookup, RowGradients};

const ROWS: usize = 9;
const WIDTH: usize = 5;

fn table() -> Var {
    let values: Vec<f32> = (0..ROWS * WIDTH)
        .map(|i| ((i * 31) % 23) as f32 * 0.07 - 0.8)
        .collect();
    Var::from_tensor(&Tensor::from_vec(values, (ROWS, WIDTH), &Device::Cpu).expect("t")).expect("v")
}

fn weights(n: usize, salt: usize) -> Tensor {
    let w: Vec<f32> = (0..n * WIDTH)
        .map(|i| (((i + salt) * 37) % 19) as f32 * 0.11 - 1.0)
        .collect();
    Tensor::from_vec(w, (n, WIDTH), &Device::Cpu).expect("w")
}

fn optimizer(var: &Var, sink: Option<Arc<RowGradients>>, decoupled: bool) -> AdamW {
    let param = OptimParam {
        name: "embeddings.word_embeddings.weight".into(),
        var: var.clone(),
        weight_decay: true,
        row_grads: sink,
    };
    let config = AdamWConfig {
        weight_decay: 0.05,
        decoupled,
        ..AdamWConfig::default()
    };
    AdamW::new(vec![param], config).expect("opt")
}

/// Back-propagates `sum(out · w)` and collects the optimizer's gradients from it into
/// `acc` (the first micro-batch's, then accumulated), as the trainer does.
fn add_micro_batch(opt: &AdamW, acc: &mut Option<Gradients>, out: &Tensor, w: &Tensor) {
    let loss = (out * w).expect("mul").sum_all().expect("sum");
    let store = loss.backward().expect("bwd");
    match acc.as_mut() {
        None => *acc = Some(opt.gradients(&store).expect("grads")),
        Some(acc) => opt.accumulate(acc, &store).expect("acc"),
    }
}

/// Three steps of two micro-batches each (repeated ids within and across them, rows no
/// batch touches, rows touched in one step and not the next), clipped to a norm the
/// gradients exceed; returns the tables and norms. With `resume`, the row-wise optimizer is
/// rebuilt from its saved state after the first step, as a resumed job's is.
fn train(decoupled: bool, resume: bool) -> (Vec<f32>, Vec<f32>, Vec<(f64, f64)>) {
    let (sparse, dense) = (table(), table());
    let sink = Arc::new(RowGradients::default());
    let mut sparse_opt = optimizer(&sparse, Some(Arc::clone(&sink)), decoupled);
    let mut dense_opt = optimizer(&dense, None, decoupled);
    let micro_batches: [&[u32]; 6] = [&[1, 4, 1], &[4, 7], &[0, 0, 2], &[2], &[7, 1, 7, 7], &[3]];
    let mut norms = Vec::new();
    for (step, pair) in micro_batches.chunks(2).enumerate() {
        let (mut sparse_acc, mut dense_acc) = (None, None);
        for (i, ids) in pair.iter().enumerate() {
            let ids = Tensor::new(*ids, &Device::Cpu).expect("ids");
            let w = weights(ids.dim(0).expect("n"), step * 2 + i);
            let sparse_out = lookup(sparse.as_tensor(), &ids, &sink).expect("lookup");
            add_micro_batch(&sparse_opt, &mut sparse_acc, &sparse_out, &w);
            let dense_out = dense.as_tensor().index_select(&ids, 0).expect("select");
            add_micro_batch(&dense_opt, &mut dense_acc, &dense_out, &w);
        }
        let (mut sparse_grads, mut dense_grads) = (sparse_acc.expect("s"), dense_acc.expect("d"));
        norms.push((
            sparse_grads.clip_global_norm(1.0).expect("clip"),
            dense_grads.clip_global_norm(1.0).expect("clip"),
        ));
        sparse_opt.step(&sparse_grads, 0.01).expect("step");
        dense_opt.step(&dense_grads, 0.01).expect("step");
        if resume && step == 0 {
            let state = sparse_opt.state_tensors().expect("state");
            sparse_opt = optimizer(&sparse, Some(Arc::clone(&sink)), decoupled);
            sparse_opt.load_state_tensors(&state).expect("load");
        }
    }
    let flat = |v: &Var| {
        v.as_tensor()
            .flatten_all()
            .expect("f")
            .to_vec1::<f32>()
            .expect("v")
    };
    (flat(&sparse), flat(&dense), norms)
}

#[test]
fn adamw_from_gradient_rows_equals_adamw_from_the_dense_gradient() {
    let (sparse, dense, norms) = train(true, false);
    for (sparse_norm, dense_norm) in &norms {
        assert!(*dense_norm > 1.0, "the test must clip: norm {dense_norm}");
        assert!((sparse_norm - dense_norm).abs() <= 1e-12 * dense_norm);
    }
    // Bit for bit: rows no micro-batch touched (5, 6, 8) moved too (decay, moments).
    assert_eq!(sparse, dense);
    let initial = table()
        .as_tensor()
        .flatten_all()
        .expect("f")
        .to_vec1::<f32>()
        .expect("v");
    let row = |v: &[f32], r: usize| v[r * WIDTH..(r + 1) * WIDTH].to_vec();
    assert_ne!(row(&sparse, 8), row(&initial, 8), "untouched rows decay");
}

#[test]
fn adam_with_an_l2_term_takes_the_dense_path_and_agrees() {
    let (sparse, dense, _) = train(false, false);
    assert_eq!(sparse, dense);
}

#[test]
fn a_resumed_row_wise_optimizer_knows_which_rows_have_moments() {
    // Rows 1, 4 and 7 get moments in the first step; row 4 then goes two steps without a
    // gradient, which must decay its moments (not only its weights) after the reload too.
    let (resumed, dense, _) = train(true, true);
    assert_eq!(resumed, dense);
    let (uninterrupted, _, _) = train(true, false);
    assert_eq!(resumed, uninterrupted);
}
