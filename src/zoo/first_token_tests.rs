//! `Encoder::forward_first_tokens` (the last layer on the [CLS] rows only) against the full
//! forward's position 0: values and every parameter's gradient.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};

use super::testing::{write_tiny_bert, write_tiny_distilbert};
use super::tests::{batch, full_spec, lora_spec};
use super::{ClassifierSpec, EncodedBatch, SequenceClassifier};
use crate::zoo::test_tensors::{max_abs, max_abs_diff};

/// Texts of different lengths, so the batch is padded and the spans differ.
const TEXTS: [&str; 3] = [
    "this movie was really great fun",
    "bad film",
    "i loved this film and the story",
];

fn full_path_first_tokens(model: &SequenceClassifier, b: &EncodedBatch) -> Tensor {
    let hidden = model
        .encoder()
        .forward(&b.input_ids, &b.attention_mask, false)
        .unwrap();
    hidden.narrow(1, 0, 1).unwrap().squeeze(1).unwrap()
}

/// A fixed, non-uniform weighting of the outputs, so every row and column matters.
fn weighted_sum(first: &Tensor) -> Tensor {
    let (rows, cols) = first.dims2().unwrap();
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919) % 13) as f32 * 0.1 - 0.6)
        .collect();
    let w = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
    (first * w).unwrap().sum_all().unwrap()
}

fn check_values_and_gradients(dir: &std::path::Path, spec: &ClassifierSpec) {
    let model = SequenceClassifier::from_pretrained(dir, spec, &Device::Cpu, 0).unwrap();
    let b = batch(dir, &TEXTS);
    let reference = full_path_first_tokens(&model, &b);
    let ours = model
        .encoder()
        .forward_first_tokens(&b.input_ids, &b.attention_mask, false)
        .unwrap();
    assert_eq!(ours.dims(), &[3, reference.dim(1).unwrap()]);
    let diff = max_abs_diff(&ours, &reference);
    assert!(diff < 1e-5, "values: max |Δ| = {diff}");

    let vars = model.trainable_vars();
    // Each backward leaves the embedding table's rows in its sink: take every gradient
    // right after its pass.
    let take_all = |loss: Tensor| -> Vec<Option<Tensor>> {
        let store = loss.backward().unwrap();
        vars.iter()
            .map(|nv| nv.take_gradient(&store).unwrap())
            .collect()
    };
    let grads_ref = take_all(weighted_sum(&reference));
    let grads_ours = take_all(weighted_sum(&ours));
    let mut compared = 0;
    for ((nv, r), o) in vars.iter().zip(&grads_ref).zip(&grads_ours) {
        // The head is not on either path; every encoder parameter is.
        let (Some(r), Some(o)) = (r, o) else {
            assert!(
                nv.name.contains("classifier") || nv.name.contains("pooler"),
                "{} has a gradient on one path only",
                nv.name
            );
            continue;
        };
        let scale = max_abs(r);
        let diff = max_abs_diff(o, r);
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "{}: max |Δ| = {diff} (max |g| {scale})",
            nv.name
        );
        compared += 1;
    }
    assert!(
        compared > 0 && compared + 4 >= vars.len(),
        "{compared} of {}",
        vars.len()
    );
}

#[test]
fn bert_first_tokens_equal_the_full_forward_in_values_and_gradients() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 11).unwrap();
    check_values_and_gradients(dir.path(), &full_spec(2));
    check_values_and_gradients(dir.path(), &lora_spec(2));
}

#[test]
fn distilbert_first_tokens_equal_the_full_forward_in_values_and_gradients() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_distilbert(dir.path(), 12).unwrap();
    check_values_and_gradients(dir.path(), &full_spec(2));
}

#[test]
fn a_batch_whose_position_zero_is_padding_takes_the_full_path_and_reads_zeros() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 13).unwrap();
    let model =
        SequenceClassifier::from_pretrained(dir.path(), &full_spec(2), &Device::Cpu, 0).unwrap();
    let mut b = batch(dir.path(), &TEXTS);
    // Left-pad the second row by one: its position 0 becomes padding.
    let mut mask = b.attention_mask.to_vec2::<u32>().unwrap();
    mask[1][0] = 0;
    let (rows, cols) = (mask.len(), mask[0].len());
    let flat: Vec<u32> = mask.into_iter().flatten().collect();
    b.attention_mask = Tensor::from_vec(flat, (rows, cols), &Device::Cpu).unwrap();
    let reference = full_path_first_tokens(&model, &b);
    let ours = model
        .encoder()
        .forward_first_tokens(&b.input_ids, &b.attention_mask, false)
        .unwrap();
    assert_eq!(max_abs_diff(&ours, &reference), 0.0);
    let zero_row = ours.get(1).unwrap().abs().unwrap().sum_all().unwrap();
    assert_eq!(zero_row.to_scalar::<f32>().unwrap(), 0.0);
}
