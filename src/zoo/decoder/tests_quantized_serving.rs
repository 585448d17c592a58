//! `--serve-dtype`: a model served with its projections as q8_0 / q4_0 / q4_1 blocks (or a
//! GGUF file's own), or with every matrix in bf16, against the same model in f32.
#![allow(clippy::unwrap_used)]

use super::tests::{encode, full_spec, load, real_smollm2, tiny, PROMPTS};
use super::*;
use crate::infer::generate::sampling::argmax;

/// The logits after `prompt` and after each of `tokens` fed in turn through the KV cache
/// (teacher forcing, so two models are compared on the same contexts).
fn forced_logits(model: &CausalLm, prompt: &[u32], tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    let mut feed = prompt;
    let mut logits = Vec::new();
    for next in std::iter::once(None).chain(tokens.iter().map(Some)) {
        if let Some(token) = next {
            feed = std::slice::from_ref(token);
        }
        let row = model
            .forward_cached(&mut [SeqChunk {
                tokens: feed,
                cache: &mut cache,
                adapter: None,
            }])
            .unwrap()
            .remove(0);
        logits.push(row);
    }
    logits
}

/// Over paired logit rows: how many pick the same argmax, of how many, and the largest
/// difference of any logit.
fn agreement(rows: &[Vec<f32>], reference: &[Vec<f32>]) -> (usize, usize, f32) {
    let agree = rows
        .iter()
        .zip(reference)
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    let worst = rows
        .iter()
        .flatten()
        .zip(reference.iter().flatten())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    (agree, rows.len(), worst)
}

/// The layers' projection parameters of `c`'s model.
fn projection_params(c: &DecoderConfig) -> usize {
    let h = c.hidden_size;
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    c.num_hidden_layers * (h * q + 2 * h * kv + q * h + 3 * h * c.intermediate_size)
}

/// The f32 model's 8 greedy tokens after the first prompt, its logits along them, and their
/// largest magnitude.
fn f32_reference(
    model: &CausalLm,
    dir: &std::path::Path,
) -> (Vec<u32>, Vec<u32>, Vec<Vec<f32>>, f32) {
    let prompt = encode(dir, PROMPTS[0]);
    let tokens = greedy(model, &prompt, 8);
    let logits = forced_logits(model, &prompt, &tokens);
    let scale = logits.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    (prompt, tokens, logits, scale)
}

#[test]
fn quantized_projections_take_their_block_bytes_and_keep_the_logits_close() {
    for arch in [DecoderArch::Llama, DecoderArch::Qwen2] {
        let dir = tiny(arch);
        let model = load(dir.path(), &full_spec(), 0);
        // The f32 model's greedy continuation, then both models' logits along it.
        let (prompt, tokens, f32_logits, scale) = f32_reference(&model, dir.path());
        let projections = projection_params(model.config());
        for (kind, block_bytes, tolerance) in [
            (QuantKind::Q8_0, 34, 0.04),
            (QuantKind::Q4_0, 18, 0.4),
            (QuantKind::Q4_1, 20, 0.4),
        ] {
            let mut served = model.quantized_for_serving(kind).unwrap();
            // q8_0 goes to `cpu::q8_product` where the CPU has AVX512-VNNI, in its bytes.
            let repacked = kind == QuantKind::Q8_0 && crate::zoo::cpu::q8_product::available();
            for layer in &mut served.decoder.layers {
                for linear in layer.linears_mut() {
                    let crate::zoo::linear::LinearBase::Quantized(q) = linear.base() else {
                        panic!("{kind:?}: a projection was not quantized");
                    };
                    assert_eq!(q.packed_q8().is_some(), repacked, "{kind:?}");
                }
            }
            // 32 weights per block; the rest (embeddings, norms, biases) as they were.
            assert_eq!(
                model.parameter_bytes() - served.parameter_bytes(),
                projections * 4 - projections / 32 * block_bytes,
                "{arch:?} {kind:?}"
            );
            let logits = forced_logits(&served, &prompt, &tokens);
            let (agree, total, worst) = agreement(&logits, &f32_logits);
            eprintln!(
                "{arch:?} {kind:?}: max |Δ logit| {worst:e} of {scale:e}, greedy agreement {agree}/{total}"
            );
            assert!(worst > 0.0, "{kind:?} changed nothing");
            assert!(
                worst < tolerance * scale,
                "{arch:?} {kind:?}: {worst} of {scale}"
            );
        }
    }
}

/// `dir`'s model as `--serve-dtype bf16` serves it on the CPU: every matrix stored in bf16
/// (loaded so, then frozen), multiplied by `zoo::cpu::bf16_product`.
fn bf16_served(dir: &std::path::Path) -> CausalLm {
    let device = candle_core::Device::Cpu;
    CausalLm::from_pretrained_in(dir, &full_spec(), &device, 0, candle_core::DType::BF16)
        .unwrap()
        .frozen_for_serving(candle_core::DType::BF16)
        .unwrap()
}

#[test]
fn bf16_serving_halves_every_matrix_and_keeps_the_logits_close() {
    for arch in [DecoderArch::Llama, DecoderArch::Qwen2] {
        let dir = tiny(arch);
        let model = load(dir.path(), &full_spec(), 0);
        let served = bf16_served(dir.path());
        let c = model.config();
        let tables = if c.tie_word_embeddings { 1 } else { 2 };
        // Two of each matrix's four bytes saved; norms and biases stay f32.
        assert_eq!(
            model.parameter_bytes() - served.parameter_bytes(),
            2 * (projection_params(c) + tables * c.vocab_size * c.hidden_size),
            "{arch:?}"
        );
        let (prompt, tokens, f32_logits, scale) = f32_reference(&model, dir.path());
        let (agree, total, worst) =
            agreement(&forced_logits(&served, &prompt, &tokens), &f32_logits);
        eprintln!(
            "{arch:?} bf16: max |Δ logit| {worst:e} of {scale:e}, greedy agreement {agree}/{total}"
        );
        assert!(worst > 0.0, "bf16 changed nothing");
        assert!(worst < 0.05 * scale, "{arch:?}: {worst} of {scale}");
        // Only the copy frozen for serving takes `cpu::bf16_product` (f32 sums and output);
        // the same weights in a training run keep candle's bf16 matmul (bf16 output).
        let device = candle_core::Device::Cpu;
        let bf16 = candle_core::DType::BF16;
        let training =
            CausalLm::from_pretrained_in(dir.path(), &full_spec(), &device, 0, bf16).unwrap();
        assert_ne!(
            forced_logits(&training, &prompt, &tokens[..1]),
            forced_logits(&served, &prompt, &tokens[..1]),
            "{arch:?}: the served copy multiplied as the training one"
        );
    }
}

/// The f32 model's `n` greedy tokens after `prompt`, through the KV cache.
fn greedy(model: &CausalLm, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut feed = prompt.to_vec();
    let mut tokens = Vec::new();
    for _ in 0..n {
        let row = model
            .forward_cached(&mut [SeqChunk {
                tokens: &feed,
                cache: &mut cache,
                adapter: None,
            }])
            .unwrap()
            .remove(0);
        let next = argmax(&row);
        tokens.push(next);
        feed = vec![next];
    }
    tokens
}

/// The real SmolLM2-135M-Instruct (the GGUF asset, dequantized to f32) served as bf16, q8_0,
/// q4_0 and q4_1 (requantized from f32) and in the file's own blocks (`gguf`) against f32
/// on chat prompts, compared along f32's greedy answers (teacher forcing): how often the
/// next-token argmax agrees and the largest logit difference. Skipped without
/// `TEMPER_ASSETS` (scripts/test.sh sets it).
#[test]
fn real_smollm2_served_quantized_keeps_its_greedy_answers() {
    let Some((_dir, base)) = real_smollm2() else {
        return;
    };
    let model = load(&base, &full_spec(), 0);
    let chat = |text: &str| format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n");
    let prompts: Vec<Vec<u32>> = [
        "What is the capital of France?",
        "Write one sentence about the sea.",
        "Is this headline sarcastic? 'Area man wins argument with toaster'",
        "List three colours.",
    ]
    .iter()
    .map(|p| encode(&base, &chat(p)))
    .collect();
    let answers: Vec<Vec<u32>> = prompts.iter().map(|p| greedy(&model, p, 24)).collect();
    // Decode speed is printed, never asserted: one sequence, each logit row a step.
    let timed = |m: &CausalLm| {
        let start = std::time::Instant::now();
        let rows: Vec<Vec<f32>> = prompts
            .iter()
            .zip(&answers)
            .flat_map(|(p, a)| forced_logits(m, p, a))
            .collect();
        let speed = rows.len() as f64 / start.elapsed().as_secs_f64();
        (rows, speed)
    };
    let (reference, f32_speed) = timed(&model);
    eprintln!("SmolLM2 f32: {f32_speed:.1} tokens/s (prefill included)");
    let gguf = std::path::PathBuf::from(std::env::var_os("TEMPER_ASSETS").unwrap())
        .join("models/HuggingFaceTB/SmolLM2-135M-Instruct.gguf");
    let blocks =
        crate::zoo::gguf::blocks::projection_blocks(&gguf, &candle_core::Device::Cpu).unwrap();
    let served_models = [
        ("bf16", Ok(bf16_served(&base)), 0.95),
        ("q8_0", model.quantized_for_serving(QuantKind::Q8_0), 0.95),
        ("q4_0", model.quantized_for_serving(QuantKind::Q4_0), 0.6),
        ("q4_1", model.quantized_for_serving(QuantKind::Q4_1), 0.6),
        // The f32 model is these very blocks dequantized: only the activations' rounding
        // inside the quantized matmul is left between the two.
        ("gguf", model.with_projection_blocks(blocks), 0.9),
    ];
    for (name, served, least_agreement) in served_models {
        let served = served.unwrap();
        let (rows, speed) = timed(&served);
        let (agree, total, worst) = agreement(&rows, &reference);
        let rate = agree as f64 / total as f64;
        eprintln!(
            "SmolLM2 {name}: greedy agreement {agree}/{total} ({rate:.3}), max |Δ logit| {worst:.3}, {} of {} bytes, {speed:.1} tokens/s",
            served.parameter_bytes(),
            model.parameter_bytes()
        );
        assert!(rate >= least_agreement, "{name}: {rate}");
    }
}
