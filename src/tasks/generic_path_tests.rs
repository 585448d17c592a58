//! A whole training step on the device-generic path (the composed candle ops a GPU runs)
//! equals the same step on the fused CPU kernels: the loss, every trainable tensor's
//! gradient, and the tensors after AdamW's update. CI has no GPU, so this is its proof that
//! what runs there is the model that trains here; `scripts/gpu-check.sh` runs the same
//! comparison against a real device.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};

use crate::domain::hyperparams::LoraSettings;
use crate::tasks::sequence_classification::data::{encode_examples, make_batch};
use crate::tasks::sequence_classification::evaluate::forward_batch;
use crate::tasks::sft::batch::{masked_next_token_loss, LmBatch, TokenTargets};
use crate::train::optim::{AdamW, AdamWConfig, OptimParam};
use crate::zoo::decoder::{CausalLm, DecoderArch, DecoderSpec, QuantKind};
use crate::zoo::fused::with_generic_ops;
use crate::zoo::test_tensors::wave;
use crate::zoo::testing::write_tiny_decoder;
use crate::zoo::{collate, ClassifierSpec, NamedVar, SequenceClassifier, TextTokenizer};

/// What one step gave: its loss, and per trainable tensor (by name) its gradient and its
/// value after the update.
struct StepOutcome {
    loss: f32,
    tensors: Vec<(String, Tensor, Tensor)>,
}

fn lora(rank: usize) -> Option<LoraSettings> {
    Some(LoraSettings {
        rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.0,
        target_modules: vec![],
    })
}

/// Every LoRA B non-zero (a fresh one is zero, which would leave A without a gradient), on
/// the device the model lives on.
fn perturb_adapters(vars: &[NamedVar]) {
    for (i, nv) in vars.iter().enumerate() {
        if nv.name.contains(".lora_B.") {
            let value = wave(nv.var.dims(), 0.05, i as f32);
            nv.var
                .set(&value.to_device(nv.var.device()).unwrap())
                .unwrap();
        }
    }
}

/// Backward, the optimizer's gradients and one AdamW update, as the trainer runs them.
fn step(vars: Vec<NamedVar>, loss: &Tensor) -> StepOutcome {
    let config = AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let params = vars.iter().cloned().map(OptimParam::from).collect();
    let mut opt = AdamW::new(params, config).unwrap();
    let grads = opt.gradients(&loss.backward().unwrap()).unwrap();
    opt.step(&grads, 1e-3).unwrap();
    let tensors = vars
        .iter()
        .enumerate()
        .map(|(i, nv)| {
            let grad = grads
                .get(i)
                .unwrap_or_else(|| panic!("{} has no gradient", nv.name))
                .to_dense(nv.var.device())
                .and_then(|g| g.to_device(&Device::Cpu))
                .unwrap();
            let value = nv.var.as_tensor().to_device(&Device::Cpu).unwrap();
            (nv.name.clone(), grad, value)
        })
        .collect();
    StepOutcome {
        loss: loss.to_scalar::<f32>().unwrap(),
        tensors,
    }
}

/// Two right-padded sequences of unequal length, every next token trained but the first
/// few of the longer one (a prompt).
fn lm_batch(device: &Device) -> LmBatch {
    let seqs = [
        vec![1u32, 40, 41, 42, 43, 44, 45, 46, 47, 2],
        vec![1u32, 50, 51, 52, 2],
    ];
    let width = seqs[0].len();
    let mut targets = vec![0u32; 2 * width];
    let mut trained = vec![false; 2 * width];
    for (b, seq) in seqs.iter().enumerate() {
        for t in 0..seq.len() - 1 {
            targets[b * width + t] = seq[t + 1];
            trained[b * width + t] = b == 1 || t >= 3;
        }
    }
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    LmBatch {
        inputs: collate(&refs, 0, device).unwrap(),
        targets: TokenTargets { targets, trained },
    }
}

fn decoder_step(dir: &std::path::Path, spec: &DecoderSpec, device: &Device) -> StepOutcome {
    let model = CausalLm::from_pretrained(dir, spec, device, 11).unwrap();
    let vars = model.trainable_vars();
    perturb_adapters(&vars);
    let batch = lm_batch(device);
    let hidden = model.hidden_states(&batch.inputs, true).unwrap();
    let loss = masked_next_token_loss(&hidden, |h| model.lm_head(h), &batch.targets).unwrap();
    step(vars, &loss.loss)
}

fn classifier_step(base: &std::path::Path, spec: &ClassifierSpec, device: &Device) -> StepOutcome {
    let model = SequenceClassifier::from_pretrained(base, spec, device, 5).unwrap();
    let vars = model.trainable_vars();
    perturb_adapters(&vars);
    let tokenizer = TextTokenizer::from_dir(base).unwrap();
    let labels = vec!["neg".to_string(), "pos".to_string()];
    let texts = crate::tasks::sequence_classification::tests::toy_examples();
    let examples = encode_examples(&tokenizer, &texts, &labels, 32).unwrap();
    let batch = make_batch(&examples, &[0, 1, 2, 3, 4], tokenizer.pad_id(), device).unwrap();
    let loss = forward_batch(&model, &batch, true).unwrap().loss;
    step(vars, &loss)
}

/// Largest |a − b| over the largest |a|: the error relative to the tensor's scale. The
/// floor is for gradients that are zero in exact arithmetic and rounding noise in both
/// paths, like a key bias's (softmax ignores a shift shared by a row's scores).
fn relative_diff(a: &Tensor, b: &Tensor) -> f32 {
    let scale = crate::zoo::test_tensors::max_abs(a).max(1e-4);
    crate::zoo::test_tensors::max_abs_diff(a, b) / scale
}

/// Largest difference of two updated tensors over the entries whose gradient is not
/// rounding noise: a gradient entry that is zero in exact arithmetic (see `relative_diff`)
/// moves its entry by a noise-signed ±lr on either path.
fn update_diff(grad: &Tensor, a: &Tensor, b: &Tensor) -> f32 {
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (grad, a, b) = (flat(grad), flat(a), flat(b));
    grad.iter()
        .zip(a.iter().zip(&b))
        .filter(|(g, _)| g.abs() > 1e-5)
        .map(|(_, (a, b))| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Both outcomes name the same tensors in the same order; the loss agrees to `loss_tol`
/// relative, each gradient to `grad_tol` relative to its largest entry, each updated tensor
/// to 2 % of the learning rate (the first AdamW update is g/(|g| + eps)·lr: ±lr wherever
/// |g| ≫ eps, so a gradient entry of the wrong sign would show as a 2e-3 jump, while one
/// near eps may move by a fraction of lr on rounding alone).
fn assert_same_step(what: &str, fused: &StepOutcome, generic: &StepOutcome, grad_tol: f32) {
    let loss_diff = (fused.loss - generic.loss).abs() / fused.loss.abs();
    assert!(
        loss_diff < 1e-5,
        "{what}: loss {} vs {}",
        fused.loss,
        generic.loss
    );
    assert_eq!(fused.tensors.len(), generic.tensors.len(), "{what}");
    let mut worst = (0f32, String::new());
    for ((name, g_fused, p_fused), (other, g_generic, p_generic)) in
        fused.tensors.iter().zip(&generic.tensors)
    {
        assert_eq!(name, other, "{what}");
        let d = relative_diff(g_fused, g_generic);
        assert!(d < grad_tol, "{what}: gradient of {name} differs by {d:e}");
        if d > worst.0 {
            worst = (d, name.clone());
        }
        let p = update_diff(g_fused, p_fused, p_generic);
        assert!(p < 2e-5, "{what}: {name} after the update differs by {p:e}");
    }
    eprintln!(
        "{what}: loss {} vs {}, {} tensors, worst gradient {:e} ({})",
        fused.loss,
        generic.loss,
        fused.tensors.len(),
        worst.0,
        worst.1
    );
}

/// One LoRA, full and QLoRA step of tiny Llama and Qwen2 on the fused CPU kernels against
/// the same step run by `other` (the generic path, or a GPU), to `tol`.
fn compare_decoder_steps(
    label: &str,
    other: impl Fn(&std::path::Path, &DecoderSpec) -> StepOutcome,
    tol: f32,
    with_qlora: bool,
) {
    for arch in [DecoderArch::Llama, DecoderArch::Qwen2] {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_decoder(dir.path(), arch, 7).unwrap();
        let mut specs = vec![("lora", lora(4), None), ("full", None, None)];
        if with_qlora {
            specs.push(("qlora q8_0", lora(4), Some(QuantKind::Q8_0)));
        }
        for (what, lora, quantize) in specs {
            let spec = DecoderSpec { lora, quantize };
            let fused = decoder_step(dir.path(), &spec, &Device::Cpu);
            let theirs = other(dir.path(), &spec);
            assert_same_step(&format!("{label} {arch:?} {what}"), &fused, &theirs, tol);
        }
    }
}

/// A LoRA and a full step of the tiny BERT classifier, the same way.
fn compare_classifier_steps(
    label: &str,
    other: impl Fn(&std::path::Path, &ClassifierSpec) -> StepOutcome,
    tol: f32,
) {
    let fx = crate::tasks::sequence_classification::tests::fixture();
    for (what, lora) in [("lora", lora(4)), ("full", None)] {
        let spec = ClassifierSpec {
            num_labels: 2,
            lora,
            classifier_dropout: Some(0.0),
        };
        let fused = classifier_step(&fx.base, &spec, &Device::Cpu);
        let theirs = other(&fx.base, &spec);
        assert_same_step(&format!("{label} bert {what}"), &fused, &theirs, tol);
    }
}

#[test]
fn a_decoder_step_on_the_generic_path_equals_the_fused_one() {
    let generic = |dir: &std::path::Path, spec: &DecoderSpec| {
        with_generic_ops(|| decoder_step(dir, spec, &Device::Cpu))
    };
    compare_decoder_steps("generic", generic, 1e-4, true);
}

#[test]
fn a_bert_classifier_step_on_the_generic_path_equals_the_fused_one() {
    let generic = |base: &std::path::Path, spec: &ClassifierSpec| {
        with_generic_ops(|| classifier_step(base, spec, &Device::Cpu))
    };
    compare_classifier_steps("generic", generic, 1e-4);
}

#[test]
fn the_generic_switch_is_scoped_to_its_closure_and_thread() {
    let x = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    use crate::zoo::fused::uses_fused_kernels;
    assert!(uses_fused_kernels(&x));
    let inner = with_generic_ops(|| {
        let nested = with_generic_ops(|| uses_fused_kernels(&x));
        let other_thread = std::thread::scope(|s| s.spawn(|| uses_fused_kernels(&x)).join());
        (nested, uses_fused_kernels(&x), other_thread.unwrap())
    });
    assert_eq!(inner, (false, false, true));
    assert!(uses_fused_kernels(&x));
    // A panic inside still restores it.
    let caught = std::panic::catch_unwind(|| with_generic_ops(|| panic!("inside")));
    assert!(caught.is_err());
    assert!(uses_fused_kernels(&x));
}

/// Greedy decoding of two prompts advanced together through their KV caches: a prefill,
/// then one token a step, each step's logits returned. Sampling runs on these host logits
/// on every device (`infer::generate::sampling`), so equal logits mean equal samples.
fn greedy_decode(
    dir: &std::path::Path,
    steps: usize,
    device: &Device,
) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    use crate::infer::generate::sampling::argmax;
    use crate::zoo::decoder::SeqChunk;
    let spec = DecoderSpec {
        lora: None,
        quantize: None,
    };
    let model = CausalLm::from_pretrained(dir, &spec, device, 11).unwrap();
    let mut seqs = vec![vec![1u32, 40, 41, 42, 43, 44], vec![1u32, 50, 51]];
    let mut caches = [model.new_cache(), model.new_cache()];
    let mut all_logits = Vec::new();
    let mut fed = [0usize; 2];
    for _ in 0..steps {
        let [a, b] = &mut caches;
        let logits = model
            .forward_cached(&mut [
                SeqChunk {
                    tokens: &seqs[0][fed[0]..],
                    cache: a,
                    adapter: None,
                },
                SeqChunk {
                    tokens: &seqs[1][fed[1]..],
                    cache: b,
                    adapter: None,
                },
            ])
            .unwrap();
        for (i, row) in logits.into_iter().enumerate() {
            fed[i] = seqs[i].len();
            seqs[i].push(argmax(&row));
            all_logits.push(row);
        }
    }
    (seqs, all_logits)
}

/// Greedy decoding of both tiny decoders on the fused CPU kernels against `other`: the same
/// tokens, logits within `tol`.
fn compare_decoding(
    label: &str,
    other: impl Fn(&std::path::Path) -> (Vec<Vec<u32>>, Vec<Vec<f32>>),
    tol: f32,
) {
    for arch in [DecoderArch::Llama, DecoderArch::Qwen2] {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_decoder(dir.path(), arch, 7).unwrap();
        let (fused_ids, fused_logits) = greedy_decode(dir.path(), 8, &Device::Cpu);
        let (their_ids, their_logits) = other(dir.path());
        assert_eq!(fused_ids, their_ids, "{label} {arch:?}");
        assert_eq!(fused_ids[1].len(), 3 + 8);
        let worst = fused_logits
            .iter()
            .zip(&their_logits)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0f32, f32::max);
        eprintln!("{label} {arch:?} decode: max |Δ logit| {worst:e} over 8 steps");
        assert!(worst < tol, "{label} {arch:?}: logits differ by {worst}");
    }
}

#[test]
fn kv_cache_decoding_on_the_generic_path_equals_the_fused_one() {
    let generic = |dir: &std::path::Path| with_generic_ops(|| greedy_decode(dir, 8, &Device::Cpu));
    compare_decoding("generic", generic, 1e-4);
}

/// The same comparisons against a real GPU: `scripts/gpu-check.sh` runs them on a machine
/// with one (`cargo test --features cuda -- --ignored on_cuda`).
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::*;

    fn gpu() -> Device {
        Device::new_cuda(0).unwrap()
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn a_decoder_step_on_cuda_equals_the_fused_cpu_step() {
        let cuda = |dir: &std::path::Path, spec: &DecoderSpec| decoder_step(dir, spec, &gpu());
        // QLoRA apart (below): a GPU multiplies by the dequantized weight, the CPU quantizes
        // the activations too.
        compare_decoder_steps("cuda", cuda, 1e-3, false);
    }

    /// Rewrites the layers' projections of the model in `dir` as `kind` would store them
    /// (quantized, then dequantized): a LoRA model over these weights is what QLoRA computes
    /// when it multiplies by the dequantized base.
    fn round_projections_through(dir: &std::path::Path, kind: QuantKind) {
        use candle_core::quantized::{GgmlDType, QTensor};
        let file = dir.join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        let dtype = match kind {
            QuantKind::Q8_0 => GgmlDType::Q8_0,
            QuantKind::Q4_0 => GgmlDType::Q4_0,
            QuantKind::Q4_1 => GgmlDType::Q4_1,
        };
        for (name, tensor) in tensors.iter_mut() {
            if name.contains(".layers.") && name.ends_with("_proj.weight") {
                let q = QTensor::quantize(tensor, dtype).unwrap();
                *tensor = q.dequantize(&Device::Cpu).unwrap();
            }
        }
        candle_core::safetensors::save(&tensors, &file).unwrap();
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn a_qlora_step_on_cuda_equals_lora_over_the_dequantized_base() {
        for arch in [DecoderArch::Llama, DecoderArch::Qwen2] {
            let dir = tempfile::tempdir().unwrap();
            write_tiny_decoder(dir.path(), arch, 7).unwrap();
            round_projections_through(dir.path(), QuantKind::Q8_0);
            let lora_spec = DecoderSpec {
                lora: lora(4),
                quantize: None,
            };
            let qlora_spec = DecoderSpec {
                lora: lora(4),
                quantize: Some(QuantKind::Q8_0),
            };
            let cpu = decoder_step(dir.path(), &lora_spec, &Device::Cpu);
            let cuda = decoder_step(dir.path(), &qlora_spec, &gpu());
            assert_same_step(&format!("cuda {arch:?} qlora q8_0"), &cpu, &cuda, 1e-3);
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn a_bert_classifier_step_on_cuda_equals_the_fused_cpu_step() {
        let cuda =
            |base: &std::path::Path, spec: &ClassifierSpec| classifier_step(base, spec, &gpu());
        compare_classifier_steps("cuda", cuda, 1e-3);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn kv_cache_decoding_on_cuda_equals_the_cpu() {
        compare_decoding("cuda", |dir| greedy_decode(dir, 8, &gpu()), 1e-3);
    }
}
