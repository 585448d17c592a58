//! Completion log-probs: the definition, batching and padding.

use candle_core::Device;

use super::logprobs::{make_pair_batch, model_logps, PairLogps};
use super::prepare::{PreferencePair, PreferenceSequence, PreferenceTokenizer};
use super::tests_prepare::{preference, tiny_decoder};
use crate::zoo::collate;
use crate::zoo::decoder::{CausalLm, DecoderArch, DecoderSpec};
use crate::zoo::linear::Pass;

pub(crate) fn full_model(dir: &std::path::Path) -> CausalLm {
    let spec = DecoderSpec {
        lora: None,
        quantize: None,
    };
    CausalLm::from_pretrained(dir, &spec, &Device::Cpu, 0).expect("model")
}

pub(crate) fn tiny_pairs(tok: &PreferenceTokenizer) -> Vec<PreferencePair> {
    let rows = [
        preference("Is the sky blue?", "Yes.", "No, it is green and purple."),
        preference("Say hi", "Hello there, friend!", "Hi"),
        preference("What is two plus two?", "Four.", "Five."),
    ];
    tok.prepare(&rows, 512).expect("prepare").pairs
}

/// Σ log p(completion token) from the full logits of the sequence alone (no padding),
/// in f64.
fn by_definition(model: &CausalLm, sequence: &PreferenceSequence) -> f64 {
    let batch = collate(&[sequence.ids.as_slice()], 0, &Device::Cpu).expect("collate");
    let logits = model.forward(&batch, false).expect("forward");
    let rows = logits
        .squeeze(0)
        .expect("squeeze")
        .to_vec2::<f32>()
        .expect("vec");
    (sequence.n_prompt..sequence.ids.len())
        .map(|t| {
            let row = &rows[t - 1];
            let max = row.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
            let log_z = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            row[sequence.ids[t] as usize] as f64 - log_z
        })
        .sum()
}

fn values(logps: &PairLogps) -> (Vec<f32>, Vec<f32>) {
    (
        logps.chosen.to_vec1().expect("chosen"),
        logps.rejected.to_vec1().expect("rejected"),
    )
}

#[test]
fn logps_sum_the_completion_tokens_only_and_batching_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = tiny_decoder(dir.path(), DecoderArch::Llama);
    let tok = PreferenceTokenizer::from_dir(&base, &[]).expect("tokenizer");
    let model = full_model(&base);
    let pairs = tiny_pairs(&tok);
    let lengths: Vec<(usize, usize)> = pairs
        .iter()
        .map(|p| (p.chosen.ids.len(), p.rejected.ids.len()))
        .collect();
    assert!(
        lengths.iter().any(|(c, r)| c != r),
        "the rows need padding: {lengths:?}"
    );

    let batch = make_pair_batch(&pairs, &[0, 1, 2], tok.pad_id(), &Device::Cpu).expect("batch");
    assert_eq!(batch.inputs.input_ids.dims()[0], 6, "chosen then rejected");
    let completion_tokens: usize = pairs
        .iter()
        .map(|p| p.chosen.completion().len() + p.rejected.completion().len())
        .sum();
    assert_eq!(batch.n_completion_tokens, completion_tokens);
    let (chosen, rejected) = values(&model_logps(&model, &batch, Pass::Eval).expect("logps"));

    for (i, pair) in pairs.iter().enumerate() {
        // The definition, on each sequence alone.
        let expect_c = by_definition(&model, &pair.chosen);
        let expect_r = by_definition(&model, &pair.rejected);
        assert!(expect_c < -1.0 && expect_r < -1.0);
        assert!(
            (chosen[i] as f64 - expect_c).abs() < 1e-3,
            "chosen {i}: {} vs {expect_c}",
            chosen[i]
        );
        assert!(
            (rejected[i] as f64 - expect_r).abs() < 1e-3,
            "rejected {i}: {} vs {expect_r}",
            rejected[i]
        );
        // One pair per batch: the same sums.
        let alone = make_pair_batch(&pairs, &[i], tok.pad_id(), &Device::Cpu).expect("batch");
        let (c, r) = values(&model_logps(&model, &alone, Pass::Eval).expect("logps"));
        assert!((c[0] - chosen[i]).abs() < 1e-4, "{} vs {}", c[0], chosen[i]);
        assert!(
            (r[0] - rejected[i]).abs() < 1e-4,
            "{} vs {}",
            r[0],
            rejected[i]
        );
    }
}

#[test]
fn padding_id_does_not_change_the_sums() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = tiny_decoder(dir.path(), DecoderArch::Qwen2);
    let tok = PreferenceTokenizer::from_dir(&base, &[]).expect("tokenizer");
    let model = full_model(&base);
    let pairs = tiny_pairs(&tok);
    let sums = |pad: u32| {
        let batch = make_pair_batch(&pairs, &[2, 0, 1], pad, &Device::Cpu).expect("batch");
        values(&model_logps(&model, &batch, Pass::Eval).expect("logps"))
    };
    let (a, b) = (sums(tok.pad_id()), sums(150));
    assert_eq!(a, b, "padded positions never reach a sum");
    let c = by_definition(&model, &pairs[2].rejected);
    assert!((a.1[0] as f64 - c).abs() < 1e-3);
}

#[test]
fn a_pair_without_completion_tokens_is_an_error() {
    let empty = PreferenceSequence {
        ids: vec![5, 6, 7],
        n_prompt: 3,
    };
    let pair = PreferencePair {
        chosen: empty.clone(),
        rejected: empty,
    };
    let err = make_pair_batch(&[pair], &[0], 0, &Device::Cpu)
        .err()
        .expect("error");
    assert!(err.to_string().contains("no completion tokens"), "{err}");
}
