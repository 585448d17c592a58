//! LoRA fine-tunes served through the handle as adapters over one shared base engine:
//! the base is loaded once, adapters are cached in their own LRU budget, and every answer
//! equals the merged model's.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use tokio_util::sync::CancellationToken;

use super::catalog::AdapterBase;
use super::test_support::MapCatalog;
use super::{GenerationParams, InferOptions, InferenceHandle, ServableModel, ServedKind};
use crate::artifacts::checkpoint::{CheckpointMeta, CheckpointTask, LmSpec};
use crate::domain::hyperparams::LoraSettings;
use crate::train::checkpoint::{write_checkpoint, CheckpointContents, TrainState};
use crate::zoo::decoder::tests_adapter::{adapter_tensors, tuned_model};
use crate::zoo::decoder::DecoderArch;

/// A LoRA (rank 4, alpha 16) `causal_lm` checkpoint of `base` holding `tensors`.
pub(crate) fn write_lora_checkpoint(
    work_dir: &Path,
    base: &Path,
    tensors: &HashMap<String, Tensor>,
) -> PathBuf {
    let lm = LmSpec {
        lora: Some(LoraSettings {
            rank: 4,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: Vec::new(),
        }),
        quantize: None,
        export_dtype: None,
    };
    write_lm_checkpoint(work_dir, base, tensors, lm)
}

/// A `causal_lm` checkpoint of `base` trained as `lm` says, holding `tensors`, as a job
/// writes it.
pub(crate) fn write_lm_checkpoint(
    work_dir: &Path,
    base: &Path,
    tensors: &HashMap<String, Tensor>,
    lm: LmSpec,
) -> PathBuf {
    let meta = CheckpointMeta {
        task: CheckpointTask::CausalLm { lm },
        base_model: crate::artifacts::BaseLocation::Directory {
            path: base.to_path_buf(),
        },
        max_seq_len: 64,
        seed: 0,
    };
    let state = TrainState {
        step: 1,
        ..TrainState::default()
    };
    let contents = CheckpointContents {
        trainable: tensors,
        optimizer: &HashMap::new(),
        state: &state,
        meta: &meta,
    };
    write_checkpoint(work_dir, &contents).unwrap()
}

fn model(name: &str, dir: &Path, adapter_of: Option<&Path>) -> ServableModel {
    ServableModel {
        name: name.into(),
        dir: dir.to_path_buf(),
        kind: ServedKind::CausalLm,
        adapter_of: adapter_of.map(|base| AdapterBase {
            name: "base".into(),
            dir: base.to_path_buf(),
            slot: 0,
        }),
        serve_dtype: None,
        gguf: None,
    }
}

async fn answer(handle: &InferenceHandle, model: &str) -> String {
    let params = GenerationParams {
        temperature: 0.0,
        max_tokens: Some(8),
        ..GenerationParams::default()
    };
    let stream = handle.complete(model, "a dog and the cat".into(), params);
    let generation = stream.await.unwrap().collect().await.unwrap();
    generation.choices[0].text.clone()
}

#[tokio::test]
async fn lora_fine_tunes_share_one_base_engine_and_their_adapters_are_cached_lru() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    crate::zoo::testing::write_tiny_decoder(&base, DecoderArch::Llama, 5).unwrap();
    let mut models = vec![model("base", &base, None)];
    let mut adapter_bytes = 0;
    for k in 0..3 {
        let tensors = adapter_tensors(&tuned_model(&base, k));
        adapter_bytes = 4 * tensors.values().map(|t| t.elem_count()).sum::<usize>();
        let checkpoint =
            write_lora_checkpoint(&root.path().join(format!("job-{k}")), &base, &tensors);
        models.push(model(&format!("ft:{k}"), &checkpoint, Some(&base)));
        // The same checkpoint served merged, as its own model.
        models.push(model(&format!("merged:{k}"), &checkpoint, None));
    }
    let options = InferOptions {
        adapter_cache_bytes: 2 * adapter_bytes,
        ..InferOptions::cpu(1 << 30)
    };
    let handle = InferenceHandle::with_options(
        MapCatalog::with_models(models),
        options,
        CancellationToken::new(),
    );

    // One after the other, so ft:0 is the least recently used (loads that finish in either
    // order would stamp their own use times).
    let first = answer(&handle, "ft:0").await;
    let second = answer(&handle, "ft:1").await;
    assert!(handle.is_loaded("base") && handle.is_loaded("ft:0") && handle.is_loaded("ft:1"));
    let base_bytes = handle.cached_bytes();
    assert_eq!(handle.cached_adapter_bytes(), 2 * adapter_bytes);
    // No merged copy was loaded: the models' budget holds the base alone.
    assert!(!handle.registry.is_loaded("ft:0"));
    let third = answer(&handle, "ft:2").await;
    assert!(
        !handle.is_loaded("ft:0"),
        "the least recently used adapter was evicted"
    );
    assert!(handle.is_loaded("base") && handle.is_loaded("ft:2"));
    assert_eq!(handle.cached_adapter_bytes(), 2 * adapter_bytes);
    assert_eq!(handle.cached_bytes(), base_bytes);
    // Evicted, then loaded again on the next request, with the same answer.
    assert_eq!(answer(&handle, "ft:0").await, first);

    let answers = [first, second, third];
    for (k, unmerged) in answers.iter().enumerate() {
        assert_eq!(
            *unmerged,
            answer(&handle, &format!("merged:{k}")).await,
            "ft:{k}"
        );
    }
    assert_ne!(answers[0], answer(&handle, "base").await);
    assert_ne!(answers[0], answers[1]);

    // Deleting a model forgets its adapter.
    handle.evict("ft:0");
    assert!(!handle.is_loaded("ft:0"));
    assert!(handle.is_loaded("base"));
}

#[tokio::test]
async fn an_adapter_whose_base_cannot_load_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    crate::zoo::testing::write_tiny_decoder(&base, DecoderArch::Llama, 5).unwrap();
    let tensors = adapter_tensors(&tuned_model(&base, 0));
    let checkpoint = write_lora_checkpoint(&root.path().join("job"), &base, &tensors);
    // The catalog names a base that is not in it.
    let models = vec![model("ft:0", &checkpoint, Some(&base))];
    let handle = InferenceHandle::new(
        MapCatalog::with_models(models),
        1 << 30,
        CancellationToken::new(),
    );
    let params = GenerationParams::default();
    let error = handle
        .complete("ft:0", "a dog".into(), params)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("loading base model `base` of `ft:0`"),
        "{error}"
    );
}
