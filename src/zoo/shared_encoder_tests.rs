#![allow(clippy::unwrap_used)]
use candle_core::{Device, Tensor};

use super::*;
use crate::zoo::test_tensors::max_abs_diff;
use crate::zoo::testing::write_tiny_bert;
use crate::zoo::tests::{batch, full_spec, lora_spec, perturb_lora_b, TEXTS};
use crate::zoo::SequenceClassifier;

fn logits(model: &SequenceClassifier, dir: &Path) -> Tensor {
    model.forward(&batch(dir, &TEXTS), false).unwrap()
}

/// A "trained" LoRA classifier of the tiny BERT in `dir`, and its trainable tensors.
fn trained(dir: &Path, seed: u64) -> (SequenceClassifier, HashMap<String, Tensor>) {
    let model =
        SequenceClassifier::from_pretrained(dir, &lora_spec(3), &Device::Cpu, seed).unwrap();
    perturb_lora_b(&model);
    let tensors = model.trainable_tensors().unwrap();
    (model, tensors)
}

#[test]
fn a_model_over_the_shared_base_equals_the_checkpoint_loaded_alone() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 4).unwrap();
    let (alone, tensors) = trained(dir.path(), 7);
    let base = SharedEncoderBase::load(dir.path(), &Device::Cpu).unwrap();
    // Another seed: every trained tensor must come from the checkpoint, not the draws.
    let mut shared =
        SequenceClassifier::over_shared_base(&base, &lora_spec(3), &Device::Cpu, 99).unwrap();
    assert!(max_abs_diff(&logits(&shared, dir.path()), &logits(&alone, dir.path())) > 1e-4);
    shared.load_trainable(&tensors).unwrap();
    shared.freeze_unmerged_for_inference().unwrap();
    let unmerged = max_abs_diff(&logits(&shared, dir.path()), &logits(&alone, dir.path()));
    assert!(unmerged < 1e-5, "max |Δ| = {unmerged}");

    let mut merged = alone;
    merged.freeze_for_inference().unwrap();
    let vs_merged = max_abs_diff(&logits(&shared, dir.path()), &logits(&merged, dir.path()));
    assert!(vs_merged < 1e-5, "max |Δ| = {vs_merged}");
}

#[test]
fn models_over_one_base_hold_its_tensors_and_never_write_them() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 5).unwrap();
    let base = SharedEncoderBase::load(dir.path(), &Device::Cpu).unwrap();
    let (_, tensors) = trained(dir.path(), 3);
    let mut first =
        SequenceClassifier::over_shared_base(&base, &lora_spec(3), &Device::Cpu, 1).unwrap();
    first.load_trainable(&tensors).unwrap();
    first.freeze_unmerged_for_inference().unwrap();
    logits(&first, dir.path());

    // The frozen weights are the base's own tensors; adapted ones only gain a delta.
    let weights = first.merged_tensors().unwrap();
    for name in [
        "bert.embeddings.word_embeddings.weight",
        "bert.encoder.layer.0.attention.self.key.weight",
        "bert.encoder.layer.1.output.dense.weight",
    ] {
        assert!(base.holds(&weights[name]), "{name} is a copy");
    }
    assert!(!base.holds(&weights["bert.encoder.layer.0.attention.self.query.weight"]));

    // A second model with fresh adapters (B = 0) is the untouched base's: the first
    // model's adapters were kept apart, not merged into the shared weights.
    let fresh =
        SequenceClassifier::over_shared_base(&base, &lora_spec(3), &Device::Cpu, 8).unwrap();
    let from_disk =
        SequenceClassifier::from_pretrained(dir.path(), &lora_spec(3), &Device::Cpu, 8).unwrap();
    let diff = max_abs_diff(&logits(&fresh, dir.path()), &logits(&from_disk, dir.path()));
    assert!(diff < 1e-6, "max |Δ| = {diff}");
}

#[test]
fn the_base_keeps_the_encoder_tensors_and_counts_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 6).unwrap();
    let base = SharedEncoderBase::load(dir.path(), &Device::Cpu).unwrap();
    let model =
        SequenceClassifier::from_pretrained(dir.path(), &full_spec(2), &Device::Cpu, 0).unwrap();
    let head = 4 * model
        .trainable_vars()
        .iter()
        .filter(|v| v.name.starts_with("classifier."))
        .map(|v| v.var.elem_count())
        .sum::<usize>();
    // The full model is the encoder (with its pooler) plus the new classifier.
    assert_eq!(base.parameter_bytes() + head, model.parameter_bytes());
    assert!(is_encoder_tensor(
        "bert.encoder.layer.0.output.dense.weight"
    ));
    assert!(is_encoder_tensor(
        "distilbert.transformer.layer.5.ffn.lin1.bias"
    ));
    assert!(is_encoder_tensor("embeddings.LayerNorm.weight"));
    assert!(!is_encoder_tensor("cls.predictions.decoder.weight"));
    assert!(!is_encoder_tensor("vocab_projector.weight"));
    assert!(!is_encoder_tensor("bert.embeddings.position_ids"));
}

#[test]
fn full_fine_tunes_cannot_share_a_base() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 7).unwrap();
    let base = SharedEncoderBase::load(dir.path(), &Device::Cpu).unwrap();
    let refused = SequenceClassifier::over_shared_base(&base, &full_spec(2), &Device::Cpu, 0);
    assert!(refused.is_err());
}
