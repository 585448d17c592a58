//! Serving in bf16 (what a GPU serving device loads): a LoRA and a full fine-tune load with
//! every matrix in bf16, take about half the f32 model's bytes, and give the f32 model's
//! logits within bf16's rounding and its greedy tokens through the KV cache, which keeps bf16 keys and values.

use candle_core::{DType, Device};

use super::tests_train::{config, fixture, job};
use super::{load_lm_checkpoint_in, run_sft};
use crate::infer::generate::sampling::argmax;
use crate::tasks::sequence_classification::tests::{completed, Recorder};
use crate::zoo::decoder::{CausalLm, KvValues, SeqChunk};
use crate::zoo::test_tensors::{max_abs, max_abs_diff};

fn greedy(model: &CausalLm, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    let mut cache = model.new_cache();
    let mut fed = 0;
    for _ in 0..steps {
        let logits = model
            .forward_cached(&mut [SeqChunk {
                tokens: &seq[fed..],
                cache: &mut cache,
                adapter: None,
            }])
            .expect("decode");
        fed = seq.len();
        seq.push(argmax(&logits[0]));
    }
    seq
}

#[test]
fn a_bf16_served_model_is_half_the_bytes_and_decodes_like_the_f32_one() {
    let fx = fixture();
    for (name, rank, lr) in [("lora", 8, 1e-2), ("full", 0, 3e-3)] {
        let run = completed(
            run_sft(
                &job(&fx, name, config(rank, lr, 4), false),
                &mut Recorder::default(),
            )
            .expect("train"),
        );
        let load = |dtype| {
            load_lm_checkpoint_in(
                &run.best_checkpoint,
                &crate::artifacts::BaseModels::default(),
                &Device::Cpu,
                dtype,
            )
            .expect("load")
        };
        let (f32_lm, bf16_lm) = (load(DType::F32).model, load(DType::BF16).model);
        let (full_bytes, half_bytes) = (f32_lm.parameter_bytes(), bf16_lm.parameter_bytes());
        assert!(
            half_bytes * 100 < full_bytes * 55 && half_bytes * 2 >= full_bytes,
            "{name}: {half_bytes} bf16 bytes vs {full_bytes} f32"
        );
        assert_eq!(bf16_lm.decoder.embed.tensor().dtype(), DType::BF16);
        assert!(bf16_lm.trainable_vars().is_empty(), "{name}: served frozen");
        let ids =
            crate::zoo::collate(&[&[1u32, 40, 41, 42, 43][..]], 0, &Device::Cpu).expect("ids");
        let a = f32_lm.forward(&ids, false).expect("f32 logits");
        let b = bf16_lm.forward(&ids, false).expect("bf16 logits");
        let relative = max_abs_diff(&a, &b) / max_abs(&a);
        assert!(
            relative > 0.0 && relative < 0.03,
            "{name}: bf16 logits off by {relative}"
        );
        // The bf16 model's host caches keep bf16 keys and values: half the f32 model's
        // bytes, and what admission reserves for them says so.
        let (f32_cache, bf16_cache) = (f32_lm.new_cache_for(16), bf16_lm.new_cache_for(16));
        assert_eq!(f32_cache.host_values(), Some(KvValues::F32));
        assert_eq!(bf16_cache.host_values(), Some(KvValues::Bf16));
        assert_eq!(bf16_cache.bytes() * 2, f32_cache.bytes());
        assert_eq!(bf16_cache.bytes(), bf16_lm.kv_cache_bytes(16));
        let prompt = [1u32, 40, 41, 42];
        assert_eq!(
            greedy(&f32_lm, &prompt, 6),
            greedy(&bf16_lm, &prompt, 6),
            "{name}"
        );
    }
}
