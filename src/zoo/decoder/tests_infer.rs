//! Cached inference against the full forward, and the fused kernels' gradients against
//! the same functions composed from candle ops.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor, Var, D};

use super::kernels::{masked_softmax, rms_norm, rope, CausalPrefix};
use super::tests::{
    batch_of, encode, full_spec, load, lora_spec, max_abs_diff, perturb_lora, real_smollm2, tiny,
    wave, PROMPTS,
};
use super::*;

fn row_diff(a: &[f32], b: &Tensor) -> f32 {
    let b = b.to_vec1::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn prefill_then_cached_decode_equals_the_full_forward() {
    let mut worst = 0f32;
    for (arch, spec) in [
        (DecoderArch::Llama, full_spec()),
        (DecoderArch::Qwen2, lora_spec()),
    ] {
        let dir = tiny(arch);
        let model = load(dir.path(), &spec, 0);
        perturb_lora(&model);
        let ids = encode(dir.path(), PROMPTS[0]);
        let full = model
            .forward(&batch_of(std::slice::from_ref(&ids)), false)
            .unwrap();
        let full = full.squeeze(0).unwrap();
        let prefill = 9;
        let mut cache = model.new_cache();
        let out = model
            .forward_cached(&mut [SeqChunk {
                tokens: &ids[..prefill],
                cache: &mut cache,
                adapter: None,
            }])
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), model.config().vocab_size);
        worst = worst.max(row_diff(&out[0], &full.get(prefill - 1).unwrap()));
        for t in prefill..ids.len() {
            let out = model
                .forward_cached(&mut [SeqChunk {
                    tokens: &ids[t..=t],
                    cache: &mut cache,
                    adapter: None,
                }])
                .unwrap();
            worst = worst.max(row_diff(&out[0], &full.get(t).unwrap()));
        }
        assert_eq!(cache.len(), ids.len());
        assert!(cache.bytes() > 0);
    }
    eprintln!("cached decode vs full forward: max |Δ| {worst:e}");
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn chunks_advanced_together_equal_each_alone() {
    let dir = tiny(DecoderArch::Qwen2);
    let model = load(dir.path(), &full_spec(), 0);
    let a = encode(dir.path(), PROMPTS[0]);
    let b = encode(dir.path(), PROMPTS[1]);
    let (mut ca, mut cb) = (model.new_cache(), model.new_cache());
    let (mut sa, mut sb) = (model.new_cache(), model.new_cache());
    let mut worst = 0f32;
    // Prefill both, then steps of different sizes (1 token for a, 3 for b).
    let steps: [(std::ops::Range<usize>, std::ops::Range<usize>); 3] =
        [(0..10, 0..4), (10..11, 4..7), (11..12, 7..8)];
    for (ra, rb) in steps {
        let together = model
            .forward_cached(&mut [
                SeqChunk {
                    tokens: &a[ra.clone()],
                    cache: &mut ca,
                    adapter: None,
                },
                SeqChunk {
                    tokens: &b[rb.clone()],
                    cache: &mut cb,
                    adapter: None,
                },
            ])
            .unwrap();
        let alone_a = model
            .forward_cached(&mut [SeqChunk {
                tokens: &a[ra],
                cache: &mut sa,
                adapter: None,
            }])
            .unwrap();
        let alone_b = model
            .forward_cached(&mut [SeqChunk {
                tokens: &b[rb],
                cache: &mut sb,
                adapter: None,
            }])
            .unwrap();
        for (x, y) in [(&together[0], &alone_a[0]), (&together[1], &alone_b[0])] {
            let d = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max);
            worst = worst.max(d);
        }
    }
    assert_eq!((ca.len(), cb.len()), (12, 8));
    eprintln!("two chunks together vs alone: max |Δ| {worst:e}");
    assert!(worst < 1e-5, "{worst}");
    let mut empty = model.new_cache();
    assert!(model
        .forward_cached(&mut [SeqChunk {
            tokens: &[],
            cache: &mut empty,
            adapter: None,
        }])
        .is_err());
}

fn grad_of(y: &Tensor, x: &Var) -> Tensor {
    let w = wave(y.dims(), 1.0, 2.0);
    let grads = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
    grads.get(x.as_tensor()).unwrap().clone()
}

#[test]
fn fused_kernels_match_composed_ops_forward_and_backward() {
    // RMSNorm (input and weight gradients), over more rows than one parallel task holds.
    let x = Var::from_tensor(&wave(&[1200, 32], 2.0, 0.1)).unwrap();
    let w = Var::from_tensor(&(wave(&[32], 0.3, 1.0) + 1.0).unwrap()).unwrap();
    let fused = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
    let composed_norm = |w: &Tensor| {
        let ms = x
            .as_tensor()
            .sqr()
            .unwrap()
            .mean_keepdim(D::Minus1)
            .unwrap();
        x.as_tensor()
            .broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(w)
            .unwrap()
    };
    let composed = composed_norm(w.as_tensor());
    assert!(max_abs_diff(&fused, &composed) < 1e-5);
    for v in [&x, &w] {
        let d = max_abs_diff(&grad_of(&fused, v), &grad_of(&composed, v));
        assert!(d < 1e-3, "rms norm gradient differs by {d}");
    }
    // A frozen weight gets no gradient and leaves the input's as it was.
    let frozen = w.as_tensor().detach();
    let fused = rms_norm(x.as_tensor(), &frozen, 1e-5).unwrap();
    let grads = (&fused * wave(fused.dims(), 1.0, 2.0))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&frozen).is_none());
    let d = max_abs_diff(
        grads.get(x.as_tensor()).unwrap(),
        &grad_of(&composed_norm(&frozen), &x),
    );
    assert!(
        d < 1e-5,
        "rms norm input gradient with a frozen weight differs by {d}"
    );
    // Rotary embeddings (rotate_half form), over more rows than one parallel task holds.
    let q = Var::from_tensor(&wave(&[700, 3, 8], 1.0, 0.7)).unwrap();
    let (cos, sin) = (wave(&[700, 4], 1.0, 0.2), wave(&[700, 4], 1.0, 1.9));
    let fused = rope(q.as_tensor(), &cos, &sin).unwrap();
    let (x1, x2) = (
        q.as_tensor().narrow(2, 0, 4).unwrap(),
        q.as_tensor().narrow(2, 4, 4).unwrap(),
    );
    let rotated = Tensor::cat(&[x2.neg().unwrap(), x1], 2).unwrap();
    let full = |t: &Tensor| Tensor::cat(&[t, t], 1).unwrap().unsqueeze(1).unwrap();
    let composed = (q.as_tensor().broadcast_mul(&full(&cos)).unwrap()
        + rotated.broadcast_mul(&full(&sin)).unwrap())
    .unwrap();
    assert!(max_abs_diff(&fused, &composed) < 1e-6);
    assert!(max_abs_diff(&grad_of(&fused, &q), &grad_of(&composed, &q)) < 1e-5);
    // Masked softmax: right padding (lengths 4 and 2) and causal.
    let s = Var::from_tensor(&wave(&[2, 3, 4, 4], 3.0, 0.4)).unwrap();
    let mask = CausalPrefix {
        key_len: vec![4, 2],
        offset: 0,
    };
    let fused = masked_softmax(s.as_tensor(), &mask).unwrap();
    let mut additive = vec![0f32; 2 * 4 * 4];
    for b in 0..2 {
        for t in 0..4 {
            for k in 0..4 {
                if k > t || k >= mask.key_len[b] {
                    additive[(b * 4 + t) * 4 + k] = f32::MIN;
                }
            }
        }
    }
    let additive = Tensor::from_vec(additive, (2, 1, 4, 4), &Device::Cpu).unwrap();
    let composed =
        candle_nn::ops::softmax(&s.as_tensor().broadcast_add(&additive).unwrap(), D::Minus1)
            .unwrap();
    assert!(max_abs_diff(&fused, &composed) < 1e-6);
    assert!(max_abs_diff(&grad_of(&fused, &s), &grad_of(&composed, &s)) < 1e-5);
}

/// Step and decode timings on the real SmolLM2-135M (materialized from the GGUF asset);
/// prints numbers, asserts only that the loss is finite. Run by hand:
/// `TEMPER_ASSETS=/work/assets cargo test --lib decoder::tests_infer::real -- --ignored --nocapture`.
#[test]
#[ignore = "timing on the real model, by hand"]
fn real_smollm2_lora_step_and_decode_timings() {
    let Some((_dir, base)) = real_smollm2() else {
        return;
    };
    let mut spec = lora_spec();
    if let Some(l) = spec.lora.as_mut() {
        (l.rank, l.alpha) = (8, 16.0);
    }
    let model = load(&base, &spec, 0);
    let seqs: Vec<Vec<u32>> = (0..4)
        .map(|i| {
            (0..128 - 16 * i)
                .map(|t| (t * 37 + i * 11) as u32 % 40000 + 100)
                .collect()
        })
        .collect();
    let b = batch_of(&seqs);
    let n_tokens: usize = seqs.iter().map(Vec::len).sum();
    for step in 0..3 {
        let start = std::time::Instant::now();
        let hidden = model.hidden_states(&b, true).unwrap();
        let (bs, t, h) = hidden.dims3().unwrap();
        let logits = model
            .lm_head(&hidden.reshape((bs * t, h)).unwrap())
            .unwrap();
        let loss = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .mean_all()
            .unwrap()
            .neg()
            .unwrap();
        let fwd = start.elapsed();
        let _grads = loss.backward().unwrap();
        let total = start.elapsed();
        let value = loss.to_scalar::<f32>().unwrap();
        assert!(value.is_finite());
        eprintln!(
            "step {step}: fwd {:.2}s, fwd+bwd {:.2}s, {:.0} tokens/s (no optimizer)",
            fwd.as_secs_f64(),
            total.as_secs_f64(),
            n_tokens as f64 / total.as_secs_f64()
        );
    }
    let mut merged = load(&base, &full_spec(), 0);
    merged.merge_lora().unwrap();
    let prompt = &seqs[0][..64];
    let mut caches: Vec<KvCache> = (0..4).map(|_| merged.new_cache()).collect();
    let mut chunks: Vec<SeqChunk> = caches
        .iter_mut()
        .map(|cache| SeqChunk {
            tokens: prompt,
            cache,
            adapter: None,
        })
        .collect();
    merged.forward_cached(&mut chunks).unwrap();
    let start = std::time::Instant::now();
    let steps = 32;
    for _ in 0..steps {
        let mut chunks: Vec<SeqChunk> = caches
            .iter_mut()
            .map(|cache| SeqChunk {
                tokens: &[42],
                cache,
                adapter: None,
            })
            .collect();
        merged.forward_cached(&mut chunks).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "decode: 4 sequences × {steps} steps, {:.1} tokens/s ({:.1} ms/step)",
        4.0 * steps as f64 / secs,
        1000.0 * secs / steps as f64
    );
}

/// Prefills of two lengths, decoding steps, and a several-token chunk over a filled cache
/// (chunked prefill): every step's logits for both sequences, and their caches.
fn schedule_logits(model: &CausalLm, a: &[u32], b: &[u32]) -> (Vec<Vec<f32>>, [KvCache; 2]) {
    let mut caches = [model.new_cache_for(16), model.new_cache_for(16)];
    let steps = [(0..7, 0..3), (7..8, 3..4), (8..9, 4..8), (9..10, 8..9)];
    let mut logits = Vec::new();
    for (ra, rb) in steps {
        let [ca, cb] = &mut caches;
        let mut chunks = [
            SeqChunk {
                tokens: &a[ra],
                cache: ca,
                adapter: None,
            },
            SeqChunk {
                tokens: &b[rb],
                cache: cb,
                adapter: None,
            },
        ];
        logits.extend(model.forward_cached(&mut chunks).unwrap());
    }
    (logits, caches)
}

#[test]
fn host_caches_on_the_cpu_kernels_equal_device_caches_on_candle_ops() {
    let dir = tiny(DecoderArch::Qwen2);
    let a = encode(dir.path(), PROMPTS[0]);
    let b = encode(dir.path(), PROMPTS[1]);
    assert!(a.len() >= 10 && b.len() >= 9);
    let model = load(dir.path(), &full_spec(), 0);
    let (host, host_caches) = schedule_logits(&model, &a, &b);
    let (device, device_caches) = crate::zoo::fused::with_generic_ops(|| {
        let model = load(dir.path(), &full_spec(), 0);
        schedule_logits(&model, &a, &b)
    });
    assert!(host_caches.iter().all(KvCache::is_host));
    assert!(!device_caches.iter().any(KvCache::is_host));
    // The host cache is allocated whole, exactly what admission reserves for 16 tokens.
    assert_eq!(host_caches[0].bytes(), model.kv_cache_bytes(16));
    assert_eq!(
        [host_caches[0].len(), host_caches[1].len()],
        [10, 9],
        "tokens cached"
    );
    let scale = device.iter().flatten().fold(1f32, |m, x| m.max(x.abs()));
    let worst = host
        .iter()
        .flatten()
        .zip(device.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    eprintln!("host vs device caches: max |Δlogit| {worst:e} (logits up to {scale})");
    assert_eq!(host.len(), device.len());
    assert!(worst < 2e-6 * scale, "{worst}");
}
