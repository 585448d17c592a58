use super::*;
use candle_nn::Optimizer;

fn var(values: &[f32]) -> Var {
    Var::from_tensor(&Tensor::new(values, &Device::Cpu).expect("tensor")).expect("var")
}

fn param(name: &str, v: &Var, weight_decay: bool) -> OptimParam {
    OptimParam {
        name: name.to_string(),
        var: v.clone(),
        weight_decay,
        row_grads: None,
    }
}

/// Backward of `sum(var · coeffs)`: the gradient of `var` is exactly `coeffs`.
fn grads_for(pairs: &[(&Var, &[f32])]) -> GradStore {
    let mut loss = Tensor::new(0f32, &Device::Cpu).expect("zero");
    for (v, coeffs) in pairs {
        let c = Tensor::new(*coeffs, &Device::Cpu)
            .expect("coeffs")
            .to_dtype(v.dtype())
            .expect("dtype");
        let term = (v.as_tensor() * c).expect("mul").sum_all().expect("sum");
        loss = (loss + term.to_dtype(DType::F32).expect("f32")).expect("add");
    }
    loss.backward().expect("backward")
}

fn values(v: &Var) -> Vec<f32> {
    v.as_tensor()
        .to_dtype(DType::F32)
        .expect("f32")
        .to_vec1()
        .expect("vec")
}

fn config(weight_decay: f64) -> AdamWConfig {
    AdamWConfig {
        weight_decay,
        ..AdamWConfig::default()
    }
}

#[test]
fn one_step_matches_hand_computation() {
    let w = var(&[1.0, -2.0]);
    let b = var(&[0.5, 0.25]);
    let mut opt = AdamW::new(
        vec![param("w", &w, true), param("b", &b, false)],
        config(0.01),
    )
    .expect("opt");
    let store = grads_for(&[(&w, &[0.5, -0.1]), (&b, &[2.0, -4.0])]);
    let grads = opt.gradients(&store).expect("grads");
    opt.step(&grads, 0.1).expect("step");
    // At t = 1, m̂ = g and v̂ = g², so the update is lr · g / (|g| + eps) ≈ ±lr.
    let upd = |g: f64| 0.1 * g / (g.abs() + 1e-8);
    let expected_w = [
        1.0 * (1.0 - 0.1 * 0.01) - upd(0.5),
        -2.0 * (1.0 - 0.1 * 0.01) - upd(-0.1),
    ];
    let expected_b = [0.5 - upd(2.0), 0.25 - upd(-4.0)];
    for (a, e) in values(&w).iter().zip(expected_w) {
        assert!((f64::from(*a) - e).abs() < 1e-6, "w {a} vs {e}");
    }
    for (a, e) in values(&b).iter().zip(expected_b) {
        assert!((f64::from(*a) - e).abs() < 1e-6, "b {a} vs {e}");
    }
    assert_eq!(opt.step_count(), 1);
}

#[test]
fn matches_candle_nn_adamw_with_decay() {
    let ours = var(&[0.3, -0.7, 1.5, 0.0]);
    let theirs = var(&[0.3, -0.7, 1.5, 0.0]);
    let mut opt = AdamW::new(vec![param("p", &ours, true)], config(0.05)).expect("opt");
    let params = candle_nn::ParamsAdamW {
        lr: 0.01,
        weight_decay: 0.05,
        ..Default::default()
    };
    let mut reference = candle_nn::AdamW::new(vec![theirs.clone()], params).expect("reference");
    let grad_seq: [[f32; 4]; 3] = [
        [0.1, -0.2, 0.3, 0.0],
        [1.0, 0.5, -0.5, 2.0],
        [-0.3, 0.1, 0.2, -1.0],
    ];
    for g in &grad_seq {
        let store = grads_for(&[(&ours, g)]);
        opt.step(&opt.gradients(&store).expect("grads"), 0.01)
            .expect("step");
        reference
            .step(&grads_for(&[(&theirs, g)]))
            .expect("reference step");
    }
    for (a, b) in values(&ours).iter().zip(values(&theirs)) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

#[test]
fn tensor_path_matches_fused_path() {
    // An f64 parameter takes the tensor-op path that non-CPU devices use.
    let fused = var(&[0.3, -0.7, 1.5]);
    let t64 = Tensor::new(&[0.3f64, -0.7, 1.5], &Device::Cpu).expect("t");
    let tensor_path = Var::from_tensor(&t64).expect("var");
    let mut a = AdamW::new(vec![param("p", &fused, true)], config(0.1)).expect("a");
    let mut b = AdamW::new(vec![param("p", &tensor_path, true)], config(0.1)).expect("b");
    for g in [[0.5f32, -1.0, 0.25], [0.1, 0.2, -0.3]] {
        a.step(
            &a.gradients(&grads_for(&[(&fused, &g)])).expect("grads"),
            0.05,
        )
        .expect("a step");
        b.step(
            &b.gradients(&grads_for(&[(&tensor_path, &g)]))
                .expect("grads"),
            0.05,
        )
        .expect("b step");
    }
    for (x, y) in values(&fused).iter().zip(values(&tensor_path)) {
        assert!((x - y).abs() < 1e-6, "{x} vs {y}");
    }
}

#[test]
fn large_tensor_uses_parallel_path_identically() {
    let n = PARALLEL_MIN_ELEMS + 3;
    let init: Vec<f32> = (0..n).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
    let g: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.3 - 0.6).collect();
    let big = var(&init);
    let mut opt = AdamW::new(vec![param("big", &big, true)], config(0.01)).expect("opt");
    opt.step(
        &opt.gradients(&grads_for(&[(&big, &g)])).expect("grads"),
        0.1,
    )
    .expect("step");
    let small = var(&init[n - 3..]);
    let mut opt_small = AdamW::new(vec![param("s", &small, true)], config(0.01)).expect("opt");
    opt_small
        .step(
            &opt_small
                .gradients(&grads_for(&[(&small, &g[n - 3..])]))
                .expect("grads"),
            0.1,
        )
        .expect("step");
    assert_eq!(values(&big)[n - 3..], values(&small)[..]);
}

#[test]
fn saved_state_resumes_identically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("optimizer.safetensors");
    let grad_seq: [[f32; 2]; 3] = [[0.5, -1.0], [0.2, 0.4], [-0.7, 0.1]];
    let straight = var(&[1.0, 2.0]);
    let mut opt = AdamW::new(vec![param("p", &straight, true)], config(0.01)).expect("opt");
    for g in &grad_seq[..2] {
        opt.step(
            &opt.gradients(&grads_for(&[(&straight, g)])).expect("grads"),
            0.1,
        )
        .expect("step");
    }
    opt.save(&path).expect("save");
    let resumed = var(&values(&straight));
    let mut reloaded = AdamW::new(vec![param("p", &resumed, true)], config(0.01)).expect("opt");
    reloaded.load(&path).expect("load");
    assert_eq!(reloaded.step_count(), 2);
    opt.step(
        &opt.gradients(&grads_for(&[(&straight, &grad_seq[2])]))
            .expect("grads"),
        0.1,
    )
    .expect("step");
    reloaded
        .step(
            &reloaded
                .gradients(&grads_for(&[(&resumed, &grad_seq[2])]))
                .expect("grads"),
            0.1,
        )
        .expect("step");
    assert_eq!(values(&straight), values(&resumed));
}

#[test]
fn load_rejects_missing_parameter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("optimizer.safetensors");
    let p = var(&[1.0]);
    AdamW::new(vec![param("p", &p, true)], config(0.0))
        .expect("opt")
        .save(&path)
        .expect("save");
    let mut other = AdamW::new(vec![param("q", &p, true)], config(0.0)).expect("opt");
    let err = other.load(&path).expect_err("missing q");
    assert!(err.to_string().contains("q.exp_avg"), "{err}");
}

#[test]
fn clipping_scales_to_max_norm() {
    let a = var(&[0.0, 0.0]);
    let b = var(&[0.0]);
    let opt = AdamW::new(
        vec![param("a", &a, true), param("b", &b, true)],
        config(0.0),
    )
    .expect("opt");
    let mut grads = opt
        .gradients(&grads_for(&[(&a, &[3.0, 0.0]), (&b, &[4.0])]))
        .expect("grads");
    let norm = grads.clip_global_norm(1.0).expect("clip");
    assert!((norm - 5.0).abs() < 1e-6);
    assert!((grads.global_norm().expect("norm") - 1.0).abs() < 1e-5);
    assert!((grads.scale() - 0.2).abs() < 1e-6);
    // Below the threshold (and with clipping off) nothing changes.
    let mut grads = opt
        .gradients(&grads_for(&[(&a, &[3.0, 0.0]), (&b, &[4.0])]))
        .expect("grads");
    assert!((grads.clip_global_norm(10.0).expect("clip") - 5.0).abs() < 1e-6);
    assert!((grads.clip_global_norm(0.0).expect("off") - 5.0).abs() < 1e-6);
}

/// A step on clipped gradients equals a step on gradients scaled beforehand, with
/// decoupled (AdamW) and coupled (Adam's L2) weight decay.
#[test]
fn a_step_applies_the_clipping_factor() {
    for decoupled in [true, false] {
        let run = |values: (&[f32], &[f32]), max_norm: f64| {
            let (a, b) = (var(&[0.5, -1.0]), var(&[2.0]));
            let cfg = AdamWConfig {
                decoupled,
                ..config(0.1)
            };
            let mut opt =
                AdamW::new(vec![param("a", &a, true), param("b", &b, true)], cfg).expect("opt");
            let mut grads = opt
                .gradients(&grads_for(&[(&a, values.0), (&b, values.1)]))
                .expect("grads");
            grads.clip_global_norm(max_norm).expect("clip");
            opt.step(&grads, 0.01).expect("step");
            // Adam's first step does not see a gradient's scale; the second one does.
            let grads = opt
                .gradients(&grads_for(&[(&a, &[0.1, 0.2]), (&b, &[0.3])]))
                .expect("grads");
            opt.step(&grads, 0.01).expect("second step");
            let mut out: Vec<f32> = a.as_tensor().to_vec1().expect("a");
            out.extend(b.as_tensor().to_vec1::<f32>().expect("b"));
            out
        };
        let clipped = run((&[3.0, 0.0], &[4.0]), 1.0);
        let prescaled = run((&[0.6, 0.0], &[0.8]), 0.0);
        for (c, p) in clipped.iter().zip(&prescaled) {
            assert!(
                (c - p).abs() < 1e-6,
                "decoupled {decoupled}: {clipped:?} vs {prescaled:?}"
            );
        }
        let unclipped = run((&[3.0, 0.0], &[4.0]), 0.0);
        assert_ne!(clipped, unclipped);
    }
}

#[test]
fn accumulation_sums_micro_batches() {
    let a = var(&[1.0, 1.0]);
    let opt = AdamW::new(vec![param("a", &a, true)], config(0.0)).expect("opt");
    let mut acc = opt
        .gradients(&grads_for(&[(&a, &[0.5, 1.0])]))
        .expect("grads");
    opt.accumulate(&mut acc, &grads_for(&[(&a, &[0.25, -3.0])]))
        .expect("accumulate");
    let summed: Vec<f32> = acc
        .get(0)
        .expect("grad")
        .to_dense(&Device::Cpu)
        .expect("dense")
        .to_vec1()
        .expect("vec");
    assert_eq!(summed, vec![0.75, -2.0]);
}

#[test]
fn adam_adds_the_decay_to_the_gradient_where_adamw_decouples_it() {
    // p = 1, g = 0.5, wd = 0.1, lr = 0.01, first step (m̂ = g', v̂ = g'²).
    let coupled = var(&[1.0]);
    let decoupled = var(&[1.0]);
    let adam = AdamWConfig {
        decoupled: false,
        ..config(0.1)
    };
    let mut opt_adam = AdamW::new(vec![param("p", &coupled, true)], adam).expect("adam");
    let mut opt_adamw = AdamW::new(vec![param("p", &decoupled, true)], config(0.1)).expect("adamw");
    let store = grads_for(&[(&coupled, &[0.5]), (&decoupled, &[0.5])]);
    opt_adam
        .step(&opt_adam.gradients(&store).expect("grads"), 0.01)
        .expect("step");
    opt_adamw
        .step(&opt_adamw.gradients(&store).expect("grads"), 0.01)
        .expect("step");
    // Adam: g' = 0.5 + 0.1·1 = 0.6, update lr·g'/|g'| = 0.01 → 0.99.
    assert!(
        (values(&coupled)[0] - 0.99).abs() < 1e-6,
        "{:?}",
        values(&coupled)
    );
    // AdamW: 1·(1 − 0.01·0.1) − 0.01 = 0.989.
    assert!(
        (values(&decoupled)[0] - 0.989).abs() < 1e-6,
        "{:?}",
        values(&decoupled)
    );
}

#[test]
fn a_parameter_that_starts_training_late_gets_its_own_first_step() {
    // `late` has no gradient at step 1 (a frozen backbone unit), then one at step 2: its
    // bias correction is a first step's (update = lr exactly), as torch's per-parameter
    // `state["step"]` gives, not the third of a step that the global count would.
    let early = var(&[0.0]);
    let late = var(&[0.0]);
    let mut opt = AdamW::new(
        vec![param("early", &early, false), param("late", &late, false)],
        config(0.0),
    )
    .expect("opt");
    opt.step(
        &opt.gradients(&grads_for(&[(&early, &[1.0])]))
            .expect("grads"),
        0.01,
    )
    .expect("step 1");
    assert_eq!(values(&late), [0.0]);
    opt.step(
        &opt.gradients(&grads_for(&[(&early, &[1.0]), (&late, &[1.0])]))
            .expect("grads"),
        0.01,
    )
    .expect("step 2");
    assert!(
        (values(&late)[0] + 0.01).abs() < 1e-7,
        "{:?}",
        values(&late)
    );
    // Saved and restored with the state: a resumed run keeps counting from there.
    let state = opt.state_tensors().expect("state");
    assert_eq!(state["late.step"].to_vec1::<i64>().expect("step"), [1]);
    assert_eq!(state["early.step"].to_vec1::<i64>().expect("step"), [2]);
    let mut restored = AdamW::new(
        vec![param("early", &early, false), param("late", &late, false)],
        config(0.0),
    )
    .expect("opt");
    restored.load_state_tensors(&state).expect("load");
    assert_eq!(
        restored.state_tensors().expect("state")["late.step"]
            .to_vec1::<i64>()
            .expect("step"),
        [1]
    );
}
