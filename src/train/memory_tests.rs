#![allow(clippy::unwrap_used)]

use super::*;
use crate::zoo::config::EncoderConfig;
use crate::zoo::decoder::{CausalLm, DecoderArch, DecoderSpec};

/// SmolLM2-135M's config.json.
fn smollm2_135m() -> DecoderConfig {
    DecoderConfig {
        arch: DecoderArch::Llama,
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100000.0,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        rope_scaling: None,
    }
}

fn default_targets() -> Vec<String> {
    crate::zoo::decoder::config::DEFAULT_LORA_TARGETS
        .iter()
        .map(|t| t.to_string())
        .collect()
}

fn elements(model: &CausalLm) -> u64 {
    model
        .trainable_vars()
        .iter()
        .map(|v| v.var.elem_count() as u64)
        .sum()
}

#[test]
fn the_counts_are_the_loaded_models_own() {
    for arch in [DecoderArch::Llama, DecoderArch::Qwen2] {
        let dir = tempfile::tempdir().unwrap();
        crate::zoo::testing::write_tiny_decoder(dir.path(), arch, 1).unwrap();
        let (config, _) = DecoderConfig::from_dir(dir.path()).unwrap();
        let device = Device::Cpu;
        let full = DecoderSpec {
            lora: None,
            quantize: None,
        };
        let model = CausalLm::from_pretrained(dir.path(), &full, &device, 0).unwrap();
        assert_eq!(parameter_count(&config), elements(&model), "{arch:?}");
        let lora = DecoderSpec {
            lora: Some(crate::domain::hyperparams::LoraSettings {
                rank: 4,
                alpha: 8.0,
                dropout: 0.0,
                target_modules: vec![],
            }),
            quantize: None,
        };
        let model = CausalLm::from_pretrained(dir.path(), &lora, &device, 0).unwrap();
        assert_eq!(
            adapter_count(&config, 4, &default_targets()),
            elements(&model)
        );
    }
}

#[test]
fn smollm2_135m_counts_and_parts_by_hand() {
    let c = smollm2_135m();
    // 49152·576 embeddings (tied head) + 30 layers of 3,538,944 projection weights and
    // two norms, + the final norm: the published 134.5M.
    assert_eq!(parameter_count(&c), 134_515_008);
    // Rank 8 on the 7 projections: 8·(576+576 + 2·(576+192) + 576+576 + 3·(576+1536))·30.
    let adapters = 8 * (1152 + 2 * 768 + 1152 + 3 * 2112) * 30;
    assert_eq!(adapter_count(&c, 8, &default_targets()), adapters);
    let step = StepShape {
        tokens: 1000,
        trained_rows: 400,
    };
    let lora = Tuning::Lora {
        rank: 8,
        targets: default_targets(),
        quantize: None,
    };
    let host = estimate(&c, &lora, step, true);
    assert_eq!(host.weights, 4 * (134_515_008 + adapters));
    assert_eq!(host.optimizer, 12 * adapters);
    // Per token and layer 9·576 + 3·192 + 3·1536 floats; the head 3·400·49152.
    let per_token = 30 * (9 * 576 + 3 * 192 + 3 * 1536);
    assert_eq!(host.activations, 4 * (1000 * per_token + 3 * 400 * 49152));
    let full = estimate(&c, &Tuning::Full, step, true);
    assert_eq!(full.weights, 4 * 134_515_008);
    assert_eq!(full.optimizer, 12 * 134_515_008);
    assert_eq!(full.activations, host.activations);
    // Off the CPU the composed ops keep 28/5 of the fused count per token and layer, LoRA or
    // not (measured; see GENERIC_OVER_FUSED).
    let generic_per_token = 30 * ((9 * 576 + 3 * 192 + 3 * 1536) * 28 / 5);
    let e = estimate(&c, &lora, step, false);
    assert_eq!(
        e.activations,
        4 * (1000 * generic_per_token + 3 * 400 * 49152)
    );
    assert_eq!(
        estimate(&c, &Tuning::Full, step, false).activations,
        e.activations
    );
    // On the CPU over a quantized base, adapters are not fused with it: each target's output
    // is kept twice.
    let unfused = 30 * (576 + 192 + 192 + 576 + 2 * 1536 + 576);
    // Q4_0 stores the projection matrices in 18 bytes per 32 weights.
    let q4 = Tuning::Lora {
        rank: 8,
        targets: default_targets(),
        quantize: Some(QuantKind::Q4_0),
    };
    let matrices = 30 * 3_538_944u64;
    let others = 134_515_008 - matrices;
    let expected = 4 * others + (matrices * 18).div_ceil(32) + 4 * adapters;
    let qlora = estimate(&c, &q4, step, true);
    assert_eq!(qlora.weights, expected);
    assert_eq!(qlora.activations - host.activations, 4 * 1000 * unfused);
    // On a GPU the parts add up; on the CPU loading and checkpoints count too.
    assert_eq!((e.loading, e.checkpoint), (0, 0));
    assert_eq!(e.total(), e.weights + e.optimizer + e.activations);
    assert_eq!(host.loading, 4 * 134_515_008);
    assert_eq!(host.checkpoint, 8 * adapters);
    assert_eq!(
        host.total(),
        host.weights + host.optimizer + host.activations
    );
    // Loading's mapped checkpoint outweighs a small step's activations.
    let small = StepShape {
        tokens: 100,
        trained_rows: 10,
    };
    let host_small = estimate(&c, &lora, small, true);
    assert_eq!(host_small.total(), host_small.weights + host_small.loading);
    let host_full = estimate(&c, &Tuning::Full, small, true);
    assert_eq!(host_full.checkpoint, 8 * 134_515_008);
    assert_eq!(
        host_full.total(),
        host_full.weights + host_full.optimizer + host_full.checkpoint
    );
    let host_q4 = estimate(&c, &q4, step, true);
    assert_eq!(host_q4.loading, 4 * 134_515_008);
}

#[test]
fn a_job_over_the_budget_is_told_what_would_fit() {
    let c = smollm2_135m();
    let long = |n: usize| StepShape {
        tokens: 512 * n,
        trained_rows: 256 * n,
    };
    let query = FitQuery {
        config: &c,
        tuning: Tuning::Full,
        batch_size: 8,
        step_of: &long,
        device: "cpu",
        frozen_reference: false,
        mode: RunMode {
            host: true,
            ..RunMode::default()
        },
    };
    // The estimate and 15 % more fit; a byte less does not.
    let with_margin = |need: u64| need + need * 3 / 20;
    let need = estimate(&c, &Tuning::Full, long(8), true).total();
    assert_eq!(check_fits(&query, with_margin(need)).unwrap().total(), need);
    assert!(check_fits(&query, with_margin(need) - 1).is_err());
    // Room for LoRA at the full batch: full fine-tuning fits at batch 6 (not 7).
    let lora16 = Tuning::Lora {
        rank: 16,
        targets: default_targets(),
        quantize: None,
    };
    let budget = with_margin(estimate(&c, &lora16, long(8), true).total());
    let at = |batch| with_margin(estimate(&c, &Tuning::Full, long(batch), true).total());
    assert!(at(6) <= budget && at(7) > budget);
    let message = check_fits(&query, budget).unwrap_err();
    assert!(message.starts_with("This job needs about "), "{message}");
    assert!(message.contains("on `cpu`"), "{message}");
    assert!(
        message.contains("`batch_size` 6 (with `gradient_accumulation_steps` 2"),
        "{message}"
    );
    assert!(
        message.contains("or with LoRA (`lora_rank` 16)"),
        "{message}"
    );
    assert!(
        message.contains(&format!("the device has {} available.", gib(budget))),
        "{message}"
    );
    // Short sequences, where the weights dominate: only a quantized base saves enough,
    // and no smaller batch would (loading alone is over the budget).
    let short = |n: usize| StepShape {
        tokens: 32 * n,
        trained_rows: 8 * n,
    };
    let qlora = Tuning::Lora {
        rank: 16,
        targets: default_targets(),
        quantize: Some(QuantKind::Q4_0),
    };
    let tight = with_margin(estimate(&c, &qlora, short(8), true).total());
    let lora_query = FitQuery {
        tuning: Tuning::Lora {
            rank: 8,
            targets: default_targets(),
            quantize: None,
        },
        step_of: &short,
        ..query
    };
    let message = check_fits(&lora_query, tight).unwrap_err();
    assert!(
        message.ends_with("It would fit with QLoRA (`lora_rank` 16, `quantize` \"q4_0\")."),
        "{message}"
    );
    // Nothing fits: the message still says what to change.
    let message = check_fits(&lora_query, 1 << 20).unwrap_err();
    assert!(message.ends_with("Shorter examples (`max_seq_len`) or a smaller model would."));
}

#[test]
fn meminfo_fields_parse_and_the_cpu_reports_room() {
    let sample =
        "MemTotal:       24000000 kB\nMemFree:         100 kB\nMemAvailable:   12345678 kB\n";
    assert_eq!(meminfo_kib(sample, "MemAvailable:"), Some(12_345_678));
    assert_eq!(meminfo_kib(sample, "SwapTotal:"), None);
    let total = meminfo_kib(
        &std::fs::read_to_string("/proc/meminfo").unwrap(),
        "MemTotal:",
    )
    .unwrap()
        * 1024;
    let available = available_bytes(&Device::Cpu).unwrap();
    assert!(
        available > 0 && available <= total,
        "{available} of {total}"
    );
}

#[test]
fn dpo_full_fine_tuning_counts_its_frozen_reference() {
    let c = smollm2_135m();
    let step_of = |n: usize| StepShape {
        tokens: 100 * n,
        trained_rows: 100 * n,
    };
    let query = |tuning, frozen_reference| FitQuery {
        config: &c,
        tuning,
        batch_size: 2,
        step_of: &step_of,
        device: "cpu",
        frozen_reference,
        mode: RunMode {
            host: true,
            ..RunMode::default()
        },
    };
    let plain = check_fits(&query(Tuning::Full, false), u64::MAX).unwrap();
    let dpo = check_fits(&query(Tuning::Full, true), u64::MAX).unwrap();
    assert_eq!(dpo.weights - plain.weights, 4 * 134_515_008);
    let lora = Tuning::Lora {
        rank: 8,
        targets: default_targets(),
        quantize: None,
    };
    let plain = check_fits(&query(lora.clone(), false), u64::MAX).unwrap();
    assert_eq!(check_fits(&query(lora, true), u64::MAX).unwrap(), plain);
}

/// all-MiniLM-L6-v2's config.json.
fn minilm_l6() -> EncoderConfig {
    let text = r#"{"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384,
        "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 12,
        "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12}"#;
    EncoderConfig::from_json(text).unwrap().0
}

#[test]
fn encoder_counts_match_minilm_and_the_loaded_tiny_models() {
    // 22,565,376 in the body; with the pooler's 147,840 the published 22.7M.
    assert_eq!(encoder_parameter_count(&minilm_l6()), 22_565_376);
    for arch in ["bert", "distilbert"] {
        let dir = tempfile::tempdir().unwrap();
        if arch == "bert" {
            crate::zoo::testing::write_tiny_bert(dir.path(), 1).unwrap();
        } else {
            crate::zoo::testing::write_tiny_distilbert(dir.path(), 1).unwrap();
        }
        let (config, _) = EncoderConfig::from_dir(dir.path()).unwrap();
        let spec = crate::zoo::ClassifierSpec {
            num_labels: 3,
            lora: None,
            classifier_dropout: None,
        };
        let model =
            crate::zoo::SequenceClassifier::from_pretrained(dir.path(), &spec, &Device::Cpu, 0)
                .unwrap();
        let body: u64 = model
            .trainable_vars()
            .iter()
            .filter(|v| !["classifier", "pooler"].iter().any(|h| v.name.contains(h)))
            .map(|v| v.var.elem_count() as u64)
            .sum();
        assert_eq!(encoder_parameter_count(&config), body, "{arch}");
    }
}

#[test]
fn encoder_estimates_by_hand() {
    let c = minilm_l6();
    let step = StepShape {
        tokens: 960,
        trained_rows: 0,
    };
    let head = 384 * 384 + 384 + 385 * 2;
    let params = 22_565_376 + head;
    let full = estimate_encoder(&c, &Tuning::Full, 2, step, 60, mode(false, false));
    assert_eq!(full.weights, 4 * params);
    assert_eq!(full.optimizer, 12 * params);
    assert_eq!(full.loading, 4 * params);
    assert_eq!(full.checkpoint, 8 * params);
    // Per token and layer 14·384 + 2·1536 floats and 12 heads × the longest 60 keys.
    assert_eq!(
        full.activations,
        4 * 960 * 6 * (14 * 384 + 2 * 1536 + 12 * 60)
    );
    let lora = Tuning::Lora {
        rank: 8,
        targets: vec!["query".into(), "value".into()],
        quantize: None,
    };
    let adapters = 6 * 8 * 2 * (2 * 384);
    let e = estimate_encoder(&c, &lora, 2, step, 60, RunMode::default());
    // On a GPU the composed ops keep 37/10 of the fused count.
    assert_eq!(
        e.activations,
        4 * 960 * 6 * ((14 * 384 + 2 * 1536 + 12 * 60) * 37 / 10)
    );
    assert_eq!(e.weights, 4 * (params + adapters));
    assert_eq!(e.optimizer, 12 * (adapters + head));
    assert_eq!((e.loading, e.checkpoint), (0, 0));
    // A name that is not an attention projection counts every dense layer it may match.
    let dense = Tuning::Lora {
        rank: 8,
        targets: vec!["dense".into()],
        quantize: None,
    };
    let e = estimate_encoder(&c, &dense, 2, step, 60, RunMode::default());
    assert_eq!(e.optimizer, 12 * (6 * 8 * (4 * 384 + 2 * 1536) + head));
}

#[test]
fn checkpointing_keeps_one_output_per_layer_and_one_layer_in_full() {
    let c = smollm2_135m();
    let step = StepShape {
        tokens: 1000,
        trained_rows: 32,
    };
    let lora = Tuning::Lora {
        rank: 8,
        targets: default_targets(),
        quantize: None,
    };
    let plain = estimate_with(&c, &lora, step, mode(false, false));
    let ckpt = estimate_with(&c, &lora, step, mode(true, false));
    assert_eq!(plain, estimate(&c, &lora, step, true));
    // Per token: 9·576 + 3·192 + 3·1536 floats a layer keeps; checkpointed, 30 layer outputs,
    // the copy of the recomputed layer's input, that layer's tensors and their gradients,
    // and (LoRA: frozen embeddings) the first layer's tensors. The head's logits (3 × 32
    // rows × 49152) are kept either way.
    let layer = 9 * 576 + 3 * 192 + 3 * 1536;
    let head = 3 * 32 * 49152;
    assert_eq!(plain.activations, 4 * (1000 * 30 * layer + head));
    assert_eq!(
        ckpt.activations,
        4 * (1000 * (30 * 576 + 576 + 3 * layer) + head)
    );
    assert_eq!(
        (ckpt.weights, ckpt.optimizer),
        (plain.weights, plain.optimizer)
    );

    // A job that fits only with checkpointing is told so, and fits once it asks for it.
    let step_of = |n: usize| StepShape {
        tokens: 250 * n,
        trained_rows: 8 * n,
    };
    let query = FitQuery {
        config: &c,
        tuning: lora.clone(),
        batch_size: 16,
        step_of: &step_of,
        device: "cpu",
        frozen_reference: false,
        mode: RunMode {
            host: true,
            ..RunMode::default()
        },
    };
    let need =
        |checkpointing| estimate_with(&c, &lora, step_of(16), mode(checkpointing, false)).total();
    let budget = need(true) + need(true) * 3 / 20;
    assert!(budget < need(false));
    let message = check_fits(&query, budget).unwrap_err();
    assert!(
        message.contains("`gradient_checkpointing` true"),
        "{message}"
    );
    let checkpointed = FitQuery {
        mode: mode(true, false),
        ..query
    };
    assert_eq!(
        check_fits(&checkpointed, budget).unwrap().total(),
        need(true)
    );
}

#[test]
fn a_checkpointed_encoder_keeps_one_output_per_layer_and_one_layer_in_full() {
    let c = minilm_l6();
    let step = StepShape {
        tokens: 960,
        trained_rows: 0,
    };
    let plain = estimate_encoder(&c, &Tuning::Full, 2, step, 60, mode(false, false));
    let ckpt = estimate_encoder(&c, &Tuning::Full, 2, step, 60, mode(true, false));
    let layer = 14 * 384 + 2 * 1536 + 12 * 60;
    assert_eq!(plain.activations, 4 * 960 * 6 * layer);
    assert_eq!(ckpt.activations, 4 * 960 * (6 * 384 + 384 + 2 * layer));
}

/// A CPU run, checkpointed or not, in bf16 or not.
fn mode(checkpointing: bool, bf16: bool) -> RunMode {
    RunMode {
        host: true,
        checkpointing,
        bf16,
    }
}

#[test]
fn bf16_halves_the_frozen_matrices_and_full_fine_tuning_keeps_bf16_casts() {
    let c = smollm2_135m();
    let step = StepShape {
        tokens: 500,
        trained_rows: 16,
    };
    let lora = Tuning::Lora {
        rank: 8,
        targets: default_targets(),
        quantize: None,
    };
    let (f32_lora, bf16_lora) = (
        estimate_with(&c, &lora, step, mode(false, false)),
        estimate_with(&c, &lora, step, mode(false, true)),
    );
    // 134,515,008 parameters, of which 576 + 30·2·576 are norm weights (f32 either way).
    let vectors = 576 + 30 * 2 * 576;
    let matrices = 134_515_008 - vectors;
    assert_eq!(f32_lora.weights - bf16_lora.weights, 2 * matrices);
    let per_layer = 9 * 576 + 3 * 192 + 3 * 1536;
    assert_eq!(
        bf16_lora.activations - f32_lora.activations,
        4 * 500 * 30 * (per_layer * 28 / 5 - per_layer)
    );
    let (f32_full, bf16_full) = (
        estimate_with(&c, &Tuning::Full, step, mode(false, false)),
        estimate_with(&c, &Tuning::Full, step, mode(false, true)),
    );
    assert_eq!(f32_full.weights, bf16_full.weights, "f32 masters");
    // bf16 also runs the composed ops, whose activations are the same for LoRA and full.
    assert_eq!(bf16_full.activations - bf16_lora.activations, 2 * matrices);
}

#[test]
fn a_bf16_encoder_stores_its_lora_body_in_bf16_and_keeps_full_casts() {
    let c = minilm_l6();
    let step = StepShape {
        tokens: 960,
        trained_rows: 0,
    };
    let lora = Tuning::Lora {
        rank: 8,
        targets: vec!["query".into(), "value".into()],
        quantize: None,
    };
    let est = |tuning: &Tuning, bf16| estimate_encoder(&c, tuning, 2, step, 60, mode(false, bf16));
    // MiniLM-L6's body: 22,565,376 parameters, of which 6·(4·384 + 1536 + 384 + 4·384) +
    // 2·384 are biases and LayerNorm vectors (f32 either way).
    let vectors = 6 * (4 * 384 + 1536 + 384 + 4 * 384) + 2 * 384;
    let matrices = 22_565_376 - vectors;
    assert_eq!(
        est(&lora, false).weights - est(&lora, true).weights,
        2 * matrices
    );
    let (full, full_bf16) = (est(&Tuning::Full, false), est(&Tuning::Full, true));
    assert_eq!(full.weights, full_bf16.weights, "f32 masters");
    let layer_matrices = 6 * (4 * 384 * 384 + 2 * 384 * 1536);
    // bf16 also runs the composed ops: 37/10 of the fused count per token and layer.
    let fused = 14 * 384 + 2 * 1536 + 12 * 60;
    assert_eq!(
        full_bf16.activations - full.activations,
        2 * layer_matrices + 4 * 960 * 6 * (fused * 37 / 10 - fused)
    );
}
