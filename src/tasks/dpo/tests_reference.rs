//! The reference model: adapters off under LoRA, a frozen copy under full fine-tuning.

use candle_core::Device;

use super::logprobs::{make_pair_batch, model_logps, PairLogps};
use super::prepare::{PreferencePair, PreferenceTokenizer};
use super::reference::{DpoModels, Reference};
use super::tests_logprobs::{full_model, tiny_pairs};
use super::tests_prepare::tiny_decoder;
use crate::domain::hyperparams::LoraSettings;
use crate::zoo::decoder::{CausalLm, DecoderArch, DecoderSpec};
use crate::zoo::linear::Pass;

fn lora_model(dir: &std::path::Path, lm_head: bool) -> CausalLm {
    let mut targets: Vec<String> = ["q_proj", "v_proj", "down_proj"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if lm_head {
        targets.push("lm_head".into());
    }
    let spec = DecoderSpec {
        lora: Some(LoraSettings {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: targets,
        }),
        quantize: None,
    };
    CausalLm::from_pretrained(dir, &spec, &Device::Cpu, 7).expect("lora model")
}

/// Plain gradient descent on the DPO loss of every pair, `steps` times.
fn train(models: &DpoModels, pairs: &[PreferencePair], pad: u32, steps: usize, lr: f64) {
    let all: Vec<usize> = (0..pairs.len()).collect();
    for _ in 0..steps {
        let out = models.batch_loss(pairs, &all, pad, true).expect("loss");
        let grads = out.loss.loss.backward().expect("backward");
        for nv in models.policy.trainable_vars() {
            if let Some(g) = grads.get(nv.var.as_tensor()) {
                let updated = (nv.var.as_tensor() - (g * lr).expect("scale")).expect("sub");
                nv.var.set(&updated).expect("set");
            }
        }
    }
}

fn max_diff(a: &PairLogps, b: &PairLogps) -> f32 {
    let v = |l: &PairLogps| {
        let mut v: Vec<f32> = l.chosen.to_vec1().expect("chosen");
        v.extend(l.rejected.to_vec1::<f32>().expect("rejected"));
        v
    };
    v(a).iter()
        .zip(v(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Fresh policy = reference: loss ln 2 exactly, rewards 0. After training the policy
/// moves, the reference stays the start model, and the loss falls with accuracy 1.
fn check_reference_is_the_start_model(models: &DpoModels, setup: &Setup) {
    let (pairs, pad) = (&setup.pairs, setup.pad);
    let all: Vec<usize> = (0..pairs.len()).collect();
    let fresh = models.batch_loss(pairs, &all, pad, true).expect("loss");
    assert_eq!(
        fresh.loss.loss.to_scalar::<f32>().expect("scalar"),
        std::f32::consts::LN_2
    );
    let means = fresh.loss.totals.means().expect("means");
    assert_eq!((means.rewards_chosen, means.rewards_rejected), (0.0, 0.0));

    train(models, pairs, pad, 8, 0.05);

    let base = full_model(&setup.base);
    let batch = make_pair_batch(pairs, &all, pad, &Device::Cpu).expect("batch");
    let reference = models.reference_logps(&batch).expect("reference");
    let base_logps = model_logps(&base, &batch, Pass::Eval).expect("base");
    let policy = model_logps(&models.policy, &batch, Pass::Eval).expect("policy");
    assert!(
        max_diff(&reference, &base_logps) < 1e-4,
        "reference differs from the start model by {}",
        max_diff(&reference, &base_logps)
    );
    assert!(
        max_diff(&policy, &base_logps) > 1e-2,
        "training moved the policy"
    );
    let after = models.batch_loss(pairs, &all, pad, false).expect("loss");
    let means = after.loss.totals.means().expect("means");
    assert!(means.loss < 0.6, "loss fell from ln 2: {}", means.loss);
    assert_eq!(means.reward_accuracy, 1.0);
    assert!(means.reward_margin > 0.0);
}

struct Setup {
    _dir: tempfile::TempDir,
    base: std::path::PathBuf,
    pairs: Vec<PreferencePair>,
    pad: u32,
}

fn setup(arch: DecoderArch) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = tiny_decoder(dir.path(), arch);
    let tok = PreferenceTokenizer::from_dir(&base, &[]).expect("tokenizer");
    Setup {
        pairs: tiny_pairs(&tok),
        pad: tok.pad_id(),
        base,
        _dir: dir,
    }
}

#[test]
fn lora_reference_is_the_policy_with_adapters_off() {
    let setup = setup(DecoderArch::Qwen2);
    let models = DpoModels::new(lora_model(&setup.base, true), 0.5).expect("models");
    assert!(matches!(models.reference, Reference::AdaptersOff));
    check_reference_is_the_start_model(&models, &setup);
}

#[test]
fn full_fine_tuning_reference_is_a_frozen_copy() {
    let setup = setup(DecoderArch::Llama);
    let models = DpoModels::new(full_model(&setup.base), 0.5).expect("models");
    assert!(matches!(models.reference, Reference::FrozenCopy(_)));
    check_reference_is_the_start_model(&models, &setup);
}

#[test]
fn the_reference_pass_records_no_gradient() {
    let setup = setup(DecoderArch::Llama);
    let models = DpoModels::new(lora_model(&setup.base, true), 0.5).expect("models");
    train(&models, &setup.pairs, setup.pad, 2, 0.05);
    let batch = make_pair_batch(&setup.pairs, &[0, 1, 2], setup.pad, &Device::Cpu).expect("batch");
    // Not detached afterwards: the pass itself builds no graph.
    let reference = model_logps(&models.policy, &batch, Pass::BaseOnly).expect("reference");
    assert!(!reference.chosen.track_op() && !reference.rejected.track_op());
    let policy = model_logps(&models.policy, &batch, Pass::Train).expect("policy");
    assert!(policy.chosen.track_op());
    let sum = ((reference.chosen.sum_all().expect("sum") + policy.chosen.sum_all().expect("sum"))
        .expect("add")
        + reference.rejected.sum_all().expect("sum"))
    .expect("add");
    let grads = sum.backward().expect("backward");
    let policy_only = policy
        .chosen
        .sum_all()
        .expect("sum")
        .backward()
        .expect("backward");
    let vars = models.policy.trainable_vars();
    assert!(vars.iter().any(|nv| nv.name.contains("lm_head.lora_B")));
    for nv in &vars {
        let with_reference = grads.get(nv.var.as_tensor()).expect("policy gradient");
        let alone = policy_only
            .get(nv.var.as_tensor())
            .expect("policy gradient");
        let diff = (with_reference - alone)
            .expect("diff")
            .abs()
            .expect("abs")
            .max_all()
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar");
        assert_eq!(diff, 0.0, "{} got a gradient from the reference", nv.name);
    }
}

#[test]
fn lora_keeps_one_copy_of_the_weights_and_full_fine_tuning_two() {
    let setup = setup(DecoderArch::Qwen2);
    let plain = full_model(&setup.base).parameter_bytes();
    let lora = DpoModels::new(lora_model(&setup.base, false), 0.1).expect("lora");
    let adapter_bytes: usize = lora
        .policy
        .trainable_vars()
        .iter()
        .map(|nv| nv.var.elem_count() * 4)
        .sum();
    assert!(adapter_bytes > 0);
    assert_eq!(lora.reference.extra_parameter_bytes(), 0);
    assert_eq!(lora.policy.parameter_bytes(), plain + adapter_bytes);

    let full = DpoModels::new(full_model(&setup.base), 0.1).expect("full");
    assert_eq!(full.reference.extra_parameter_bytes(), plain);
    // The copy shares no storage with the policy: tied embeddings counted once in both.
    let trainable: usize = full
        .policy
        .trainable_vars()
        .iter()
        .map(|nv| nv.var.elem_count() * 4)
        .sum();
    assert_eq!(trainable, plain);
}
