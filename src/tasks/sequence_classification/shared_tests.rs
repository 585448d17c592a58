//! LoRA classifiers served over a shared tiny BERT: each adapter's predictions equal its
//! checkpoint served alone (merged), rounds mixing adapters included.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use super::*;
use crate::tasks::sequence_classification::serve::{CheckpointClassifier, ClassifierBackend};
use crate::tasks::sequence_classification::tests::{
    completed, config, fixture, toy_examples, Fixture, Recorder,
};
use crate::tasks::sequence_classification::{run_classification, ClassificationJob};

const TEXTS: [&str; 4] = [
    "good movie",
    "i hated it",
    "really fun and happy",
    "dull music",
];

/// The best checkpoint of a classification job of base `base` on the toy set, trained in
/// `work_dir` (`lora_rank` 0: full fine-tuning).
pub(crate) fn train_classifier(
    base: &Path,
    work_dir: &Path,
    lora_rank: usize,
    learning_rate: f64,
) -> PathBuf {
    let job = ClassificationJob {
        base_model_dir: base.to_path_buf(),
        base_model: crate::artifacts::BaseLocation::Directory {
            path: base.to_path_buf(),
        },
        train: toy_examples(),
        valid: None,
        labels: vec!["neg".to_string(), "pos".to_string()],
        config: config(lora_rank, learning_rate, 2),
        work_dir: work_dir.to_path_buf(),
        device: Device::Cpu,
    };
    completed(run_classification(&job, &mut Recorder::default()).expect("train")).best_checkpoint
}

fn trained(fx: &Fixture, work: &str, lora_rank: usize, learning_rate: f64) -> PathBuf {
    let work_dir = fx.base.parent().expect("fixture root").join(work);
    train_classifier(&fx.base, &work_dir, lora_rank, learning_rate)
}

/// What the checkpoint in `dir` predicts for `texts`, served alone with LoRA merged.
pub(crate) fn served_alone(dir: &Path, texts: &[&str]) -> Vec<ClassPrediction> {
    let mut alone = CheckpointClassifier::load(
        &crate::artifacts::BaseModels::default()
            .open(dir)
            .expect("open checkpoint"),
        &Device::Cpu,
    )
    .expect("load");
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| alone.encode(t).unwrap()).collect();
    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let logits = alone.logits(&seqs).unwrap();
    logits
        .iter()
        .map(|l| prediction(alone.labels(), l).unwrap())
        .collect()
}

fn serve(
    backend: &mut SharedEncoderClassifier,
    inputs: &[AdapterText],
    max_batch: usize,
) -> Vec<ClassPrediction> {
    let prepared: Vec<Vec<u32>> = inputs.iter().map(|i| backend.prepare(i).unwrap()).collect();
    let round: Vec<(&AdapterText, &Vec<u32>)> = inputs.iter().zip(&prepared).collect();
    backend
        .serve_round(&round, max_batch)
        .into_iter()
        .map(|p| p.expect("served"))
        .collect()
}

pub(crate) fn assert_same(got: &ClassPrediction, want: &ClassPrediction) {
    assert_eq!(got.label, want.label);
    for ((gl, gp), (wl, wp)) in got.scores.iter().zip(&want.scores) {
        assert_eq!(gl, wl);
        assert!((gp - wp).abs() < 1e-5, "{gl}: {gp} vs {wp}");
    }
}

#[test]
fn a_round_mixing_adapters_gives_each_text_what_its_checkpoint_gives_alone() {
    let fx = fixture();
    let first = trained(&fx, "first", 4, 5e-3);
    let second = trained(&fx, "second", 4, 2e-2);
    let adapters =
        [&first, &second].map(|dir| Arc::new(ClassifierAdapter::load(dir, &Device::Cpu).unwrap()));
    let mut backend = SharedEncoderClassifier::load(&fx.base, &Device::Cpu).unwrap();
    // Interleaved: adapter i % 2 for text i, and a batch limit that splits the groups.
    let inputs: Vec<AdapterText> = TEXTS
        .iter()
        .chain(TEXTS.iter())
        .enumerate()
        .map(|(i, text)| AdapterText {
            text: text.to_string(),
            adapter: adapters[i % 2].clone(),
        })
        .collect();
    let got = serve(&mut backend, &inputs, 3);
    let texts: Vec<&str> = TEXTS.iter().chain(TEXTS.iter()).copied().collect();
    let alone = [served_alone(&first, &texts), served_alone(&second, &texts)];
    for (i, prediction) in got.iter().enumerate() {
        assert_same(prediction, &alone[i % 2][i]);
    }
    // The two fine-tunes differ, so a row served with the other's adapter would show.
    let differs = alone[0]
        .iter()
        .zip(&alone[1])
        .any(|(a, b)| (a.scores[0].1 - b.scores[0].1).abs() > 1e-3);
    assert!(differs);
    assert_eq!(backend.built_models(), 2);
}

#[test]
fn an_evicted_adapters_model_is_dropped_and_the_base_is_counted_once() {
    let fx = fixture();
    let first = trained(&fx, "first", 4, 5e-3);
    let mut backend = SharedEncoderClassifier::load(&fx.base, &Device::Cpu).unwrap();
    let base_bytes = crate::zoo::shared_encoder::SharedEncoderBase::load(&fx.base, &Device::Cpu)
        .unwrap()
        .parameter_bytes();
    assert_eq!(backend.parameter_bytes(), base_bytes);

    let adapter = Arc::new(ClassifierAdapter::load(&first, &Device::Cpu).unwrap());
    let input = |adapter: &Arc<ClassifierAdapter>| AdapterText {
        text: "good movie".into(),
        adapter: adapter.clone(),
    };
    let before = serve(&mut backend, &[input(&adapter)], 8);
    assert_eq!(backend.built_models(), 1);
    // Raw tensors plus the built model's copy: a LoRA r=4 on query/value of two layers
    // and the new classifier, a small fraction of the base.
    let adapter_tensors: usize = checkpoint::read_tensors(&first, TRAINABLE_FILE, &Device::Cpu)
        .unwrap()
        .values()
        .map(|t| t.elem_count() * 4)
        .sum();
    assert_eq!(adapter.bytes(), 2 * adapter_tensors);
    assert!(
        adapter.bytes() * 10 < base_bytes,
        "{} vs {base_bytes}",
        adapter.bytes()
    );

    // Evicted (the last reference dropped), then loaded again: a new model, same answer.
    drop(adapter);
    let again = Arc::new(ClassifierAdapter::load(&first, &Device::Cpu).unwrap());
    let after = serve(&mut backend, &[input(&again)], 8);
    assert_eq!(backend.built_models(), 1);
    assert_same(&after[0], &before[0]);
}

#[test]
fn only_lora_checkpoints_are_adapters_of_their_base() {
    let fx = fixture();
    let lora = trained(&fx, "lora", 4, 5e-3);
    let full = trained(&fx, "full", 0, 1e-3);
    assert_eq!(
        adapter_base(&lora).unwrap(),
        Some(crate::artifacts::BaseLocation::Directory {
            path: fx.base.clone()
        })
    );
    assert_eq!(adapter_base(&full).unwrap(), None);
    assert_eq!(adapter_base(&fx.base).unwrap(), None);
    let refused = ClassifierAdapter::load(&full, &Device::Cpu)
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("full fine-tune"), "{refused}");
}
