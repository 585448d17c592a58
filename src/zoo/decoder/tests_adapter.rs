//! Unmerged adapters in cached batches: each row of a batch mixing adapters and the base
//! gets what its model gives alone (the same tokens, logits to rounding) and what the
//! merged model gives.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::tests::{encode, full_spec, load, lora_spec, tiny, wave, PROMPTS};
use super::*;

/// A LoRA model (rank 4, alpha 16, every projection) of `dir` whose adapters differ per
/// `k` (A from the seed, B from a wave).
pub(crate) fn tuned_model(dir: &std::path::Path, k: usize) -> CausalLm {
    let model = load(dir, &lora_spec(), 10 + k as u64);
    for (i, nv) in model.trainable_vars().iter().enumerate() {
        if nv.name.contains(".lora_B.") {
            let b = wave(nv.var.dims(), 0.04 * (k as f32 + 1.0), (i + 7 * k) as f32);
            nv.var.set(&b).unwrap();
        }
    }
    model
}

/// The model's adapters, PEFT-named.
pub(crate) fn adapter_tensors(model: &CausalLm) -> HashMap<String, Tensor> {
    crate::zoo::params::snapshot(&model.trainable_vars()).unwrap()
}

fn served(base: &CausalLm, tuned: &CausalLm) -> ServedAdapter {
    let scaling = LoraScaling {
        alpha: 16.0,
        rslora: false,
    };
    ServedAdapter::from_peft(
        base.config(),
        &adapter_tensors(tuned),
        scaling,
        base.device(),
    )
    .unwrap()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy decoding of `prompts[i]` with `adapters[i]`, all in one batch: the logits of
/// every step, per sequence.
fn batched_logits(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    adapters: &[Option<&ServedAdapter>],
    steps: usize,
) -> Vec<Vec<Vec<f32>>> {
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut pending: Vec<Vec<u32>> = prompts.to_vec();
    let mut logits = vec![Vec::new(); prompts.len()];
    for _ in 0..steps {
        let mut chunks: Vec<SeqChunk<'_>> = caches
            .iter_mut()
            .zip(&pending)
            .zip(adapters)
            .map(|((cache, tokens), adapter)| SeqChunk {
                tokens,
                cache,
                adapter: *adapter,
            })
            .collect();
        let rows = model.forward_cached(&mut chunks).unwrap();
        for (i, row) in rows.into_iter().enumerate() {
            pending[i] = vec![argmax(&row)];
            logits[i].push(row);
        }
    }
    logits
}

fn tokens(logits: &[Vec<f32>]) -> Vec<u32> {
    logits.iter().map(|row| argmax(row)).collect()
}

fn worst_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_batch_mixing_adapters_and_the_base_gives_each_row_its_own_models_output() {
    for arch in [DecoderArch::Llama, DecoderArch::Qwen2] {
        let dir = tiny(arch);
        let base = load(dir.path(), &full_spec(), 0);
        let tuned: Vec<CausalLm> = (0..3).map(|k| tuned_model(dir.path(), k)).collect();
        let adapters: Vec<ServedAdapter> = tuned.iter().map(|t| served(&base, t)).collect();
        let prompt = |i: usize| encode(dir.path(), PROMPTS[i % 2]);
        // Rows: adapter 0, the base, adapters 1 and 2, adapter 0 again (not adjacent to
        // its first row), with prompts of different lengths.
        let order: [Option<usize>; 5] = [Some(0), None, Some(1), Some(2), Some(0)];
        let prompts: Vec<Vec<u32>> = (0..order.len()).map(prompt).collect();
        let of = |k: Option<usize>| k.map(|k| &adapters[k]);
        let row_adapters: Vec<Option<&ServedAdapter>> = order.iter().map(|k| of(*k)).collect();
        let steps = 4;
        let mixed = batched_logits(&base, &prompts, &row_adapters, steps);

        for (i, k) in order.iter().enumerate() {
            let alone = batched_logits(&base, &prompts[i..=i], &[of(*k)], steps);
            // Batching changes gemm's blocking, so logits agree to rounding (as rows of
            // the base alone do: tests_infer), relative to their size (Qwen2's reach 25,
            // where an f32 ulp is 2e-6), and the greedy tokens exactly.
            assert_eq!(tokens(&mixed[i]), tokens(&alone[0]), "{arch:?} row {i}");
            let diff = worst_diff(&mixed[i], &alone[0]);
            let scale = alone[0].iter().flatten().fold(1f32, |m, x| m.max(x.abs()));
            assert!(
                diff < 2e-6 * scale,
                "{arch:?} row {i}: {diff} from the adapter alone (logits up to {scale})"
            );
            // The same model with its adapter merged into the weights.
            let mut merged = match k {
                Some(k) => tuned_model(dir.path(), *k),
                None => load(dir.path(), &full_spec(), 0),
            };
            merged.merge_lora().unwrap();
            let reference = batched_logits(&merged, &prompts[i..=i], &[None], steps);
            let diff = worst_diff(&mixed[i], &reference[0]);
            assert!(
                diff < 1e-4,
                "{arch:?} row {i}: {diff} from the merged model"
            );
        }
        // The adapters change the output: rows 0 and 4 (same adapter) agree with each
        // other, and each adapter differs from the base.
        assert_eq!(prompts[0], prompts[4][..prompts[0].len()].to_vec());
        for k in [0, 2, 3] {
            let diff = worst_diff(
                &mixed[k][..1],
                &batched_logits(&base, &prompts[k..=k], &[None], 1)[0],
            );
            assert!(
                diff > 1e-2,
                "{arch:?} row {k}: the adapter changed nothing ({diff})"
            );
        }
    }
}

#[test]
fn adapters_over_a_bf16_served_base_answer_as_over_the_f32_one() {
    let dir = tiny(DecoderArch::Llama);
    let base = load(dir.path(), &full_spec(), 0);
    let bf16 = CausalLm::from_pretrained_in(
        dir.path(),
        &full_spec(),
        &Device::Cpu,
        0,
        candle_core::DType::BF16,
    )
    .unwrap()
    .frozen_for_serving(candle_core::DType::BF16)
    .unwrap();
    let tuned = tuned_model(dir.path(), 1);
    let adapter = served(&base, &tuned);
    let prompts = vec![
        encode(dir.path(), PROMPTS[0]),
        encode(dir.path(), PROMPTS[1]),
    ];
    let rows = [Some(&adapter), None];
    let over_f32 = batched_logits(&base, &prompts, &rows, 3);
    let over_bf16 = batched_logits(&bf16, &prompts, &rows, 3);
    let scale = over_f32[0]
        .iter()
        .flatten()
        .fold(1f32, |m, x| m.max(x.abs()));
    // The bf16 base's rounding only (its matrices and the rounded activations).
    let diff = worst_diff(&over_bf16[0], &over_f32[0]);
    assert!(diff < 0.05 * scale, "{diff} of {scale}");
    // The adapter acts on the bf16 base: its row differs from the bf16 base's own.
    let bare = batched_logits(&bf16, &prompts[..1], &[None], 1);
    let moved = worst_diff(&over_bf16[0][..1], &bare[0]);
    assert!(moved > 1e-2, "the adapter changed nothing ({moved})");
}

#[test]
fn an_adapter_is_checked_against_its_base() {
    let dir = tiny(DecoderArch::Llama);
    let base = load(dir.path(), &full_spec(), 0);
    let tensors = adapter_tensors(&tuned_model(dir.path(), 0));
    let scaling = LoraScaling {
        alpha: 16.0,
        rslora: false,
    };
    let build = |tensors: &HashMap<String, Tensor>| {
        ServedAdapter::from_peft(base.config(), tensors, scaling, &Device::Cpu)
            .map(|a| a.bytes())
            .map_err(|e| e.to_string())
    };
    let a_name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let b_name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    let rank = tensors[a_name].dim(0).unwrap();
    let count: usize = tensors.values().map(|t| t.elem_count()).sum();
    assert_eq!(build(&tensors).unwrap(), 4 * count);

    let mut missing_b = tensors.clone();
    missing_b.remove(b_name);
    assert!(build(&missing_b)
        .unwrap_err()
        .contains("needs both lora_A and lora_B"));

    let mut wrong_shape = tensors.clone();
    let hidden = base.config().hidden_size;
    wrong_shape.insert(
        a_name.into(),
        Tensor::zeros((rank, hidden + 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let error = build(&wrong_shape).unwrap_err();
    assert!(error.contains(&format!("needs [r, {hidden}]")), "{error}");

    let mut head = tensors.clone();
    head.insert(
        "base_model.model.lm_head.lora_A.weight".into(),
        tensors[a_name].clone(),
    );
    assert!(build(&head)
        .unwrap_err()
        .contains("unexpected tensor `base_model.model.lm_head"));

    let layers = base.config().num_hidden_layers;
    let mut deep = tensors.clone();
    deep.insert(
        format!("base_model.model.model.layers.{layers}.self_attn.q_proj.lora_A.weight"),
        tensors[a_name].clone(),
    );
    assert!(build(&deep)
        .unwrap_err()
        .contains(&format!("the base has {layers} layers")));
    assert!(build(&HashMap::new())
        .unwrap_err()
        .contains("no LoRA tensors"));
}

#[test]
fn rslora_scales_by_the_square_root_of_the_rank() {
    let dir = tiny(DecoderArch::Llama);
    let base = load(dir.path(), &full_spec(), 0);
    let tensors = adapter_tensors(&tuned_model(dir.path(), 1));
    let rank = 4.0f64;
    let x = wave(&[3, base.config().hidden_size], 1.0, 0.5);
    let delta = |scaling| {
        ServedAdapter::from_peft(base.config(), &tensors, scaling, &Device::Cpu)
            .unwrap()
            .delta(0, 0, &x)
            .unwrap()
            .unwrap()
    };
    let plain = delta(LoraScaling {
        alpha: 16.0,
        rslora: false,
    });
    let rs = delta(LoraScaling {
        alpha: 16.0,
        rslora: true,
    });
    // alpha/√r ÷ alpha/r = √r.
    let ratio = (rs / &plain)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let finite: Vec<f32> = ratio.into_iter().filter(|r| r.is_finite()).collect();
    assert!(!finite.is_empty());
    assert!(
        finite
            .iter()
            .all(|r| (*r as f64 - rank.sqrt()).abs() < 1e-3),
        "{finite:?}"
    );
}

#[test]
fn the_cpu_kernel_adds_the_same_updates_as_the_composed_ops_a_gpu_runs() {
    let dir = tiny(DecoderArch::Qwen2);
    let run = || two_adapters_and_the_base(dir.path(), &Device::Cpu);
    let fused = run();
    let composed = crate::zoo::fused::with_generic_ops(run);
    // The whole forward changes path (attention, norms, every linear), so the rows differ
    // by that path's rounding, as in `generic_path_tests`.
    assert_rows_agree("composed", &fused, &composed, 1e-4);
}

/// Three steps of a batch of four rows on `device`: adapter 0, the base, adapter 1 and
/// adapter 0 again, over the tiny model in `dir`.
fn two_adapters_and_the_base(dir: &std::path::Path, device: &Device) -> Vec<Vec<Vec<f32>>> {
    let prompts: Vec<Vec<u32>> = (0..4).map(|i| encode(dir, PROMPTS[i % 2])).collect();
    let base = CausalLm::from_pretrained(dir, &full_spec(), device, 0).unwrap();
    let adapters: Vec<ServedAdapter> = (0..2)
        .map(|k| served(&base, &tuned_model(dir, k)))
        .collect();
    let rows = [
        Some(&adapters[0]),
        None,
        Some(&adapters[1]),
        Some(&adapters[0]),
    ];
    batched_logits(&base, &prompts, &rows, 3)
}

/// Every row of `b` picks the tokens of `a`'s and its logits stay within `tolerance`.
fn assert_rows_agree(what: &str, a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>], tolerance: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(tokens(x), tokens(y), "{what} row {i}");
        let diff = worst_diff(x, y);
        eprintln!("{what} row {i}: max |Δ logit| {diff:e}");
        assert!(diff < tolerance, "{what} row {i}: {diff}");
    }
}

#[cfg(feature = "cuda")]
mod on_cuda {
    use super::*;

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn a_mixed_adapter_batch_on_cuda_equals_the_cpu() {
        let gpu = Device::new_cuda(0).unwrap();
        let dir = tiny(DecoderArch::Llama);
        let cpu = two_adapters_and_the_base(dir.path(), &Device::Cpu);
        let cuda = two_adapters_and_the_base(dir.path(), &gpu);
        assert_rows_agree("cuda mixed adapters", &cpu, &cuda, 1e-3);
    }
}
