//! Tokenized examples and the batch order.
//!
//! The dataset is tokenized once. Each epoch visits the examples in a permutation drawn
//! from a `StdRng` seeded by `(seed, epoch)` alone, so a job resumed at (epoch, batch
//! index) sees exactly the batches an uninterrupted run would have seen. Order is random
//! (transformers `Trainer`'s recipe), not length-grouped; padding is per batch.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::TrainError;
use crate::domain::dataset::LabeledText;
use crate::zoo::{collate, EncodedBatch, TextTokenizer};

#[derive(Debug, Clone, PartialEq)]
pub struct EncodedExample {
    pub ids: Vec<u32>,
    pub label: usize,
}

/// A collated batch with its labels.
pub struct LabeledBatch {
    pub inputs: EncodedBatch,
    /// `[B]` u32 label ids (what `cross_entropy` takes).
    pub labels: Tensor,
    pub label_ids: Vec<usize>,
}

impl LabeledBatch {
    pub fn len(&self) -> usize {
        self.label_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.label_ids.is_empty()
    }
}

/// Tokenizes every example and maps its label to the index in `labels`.
pub fn encode_examples(
    tokenizer: &TextTokenizer,
    examples: &[LabeledText],
    labels: &[String],
    max_len: usize,
) -> Result<Vec<EncodedExample>, TrainError> {
    examples
        .iter()
        .enumerate()
        .map(|(i, example)| {
            let label = labels
                .iter()
                .position(|l| *l == example.label)
                .ok_or_else(|| {
                    TrainError::InvalidData(format!(
                        "Example {}: label `{}` is not one of the training labels",
                        i + 1,
                        example.label
                    ))
                })?;
            let ids = tokenizer.encode(&example.text, max_len)?;
            if ids.is_empty() {
                return Err(TrainError::InvalidData(format!(
                    "Example {}: text has no tokens",
                    i + 1
                )));
            }
            Ok(EncodedExample { ids, label })
        })
        .collect()
}

/// Mixes the epoch into the seed so epochs differ but each is reproducible on its own.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The example indices of every batch of `epoch`, in training order.
pub fn epoch_batches(
    n_examples: usize,
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n_examples).collect();
    order.shuffle(&mut StdRng::seed_from_u64(epoch_seed(seed, epoch)));
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Batches in file order, for evaluation.
pub fn sequential_batches(n_examples: usize, batch_size: usize) -> Vec<Vec<usize>> {
    let order: Vec<usize> = (0..n_examples).collect();
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// The examples at `indices` (a batch), in that order.
pub fn pick<'a, T>(examples: &'a [T], indices: &[usize]) -> Result<Vec<&'a T>, TrainError> {
    indices
        .iter()
        .map(|&i| {
            examples
                .get(i)
                .ok_or_else(|| TrainError::InvalidData(format!("batch index {i} out of range")))
        })
        .collect()
}

pub fn make_batch(
    examples: &[EncodedExample],
    indices: &[usize],
    pad_id: u32,
    device: &Device,
) -> Result<LabeledBatch, TrainError> {
    let picked = pick(examples, indices)?;
    let seqs: Vec<&[u32]> = picked.iter().map(|e| e.ids.as_slice()).collect();
    let inputs = collate(&seqs, pad_id, device)?;
    let label_ids: Vec<usize> = picked.iter().map(|e| e.label).collect();
    let as_u32: Vec<u32> = label_ids.iter().map(|&l| l as u32).collect();
    let labels = Tensor::from_vec(as_u32, label_ids.len(), device)?;
    Ok(LabeledBatch {
        inputs,
        labels,
        label_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_batches(10, 3, 7, 0);
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        let mut flat: Vec<usize> = a.concat();
        flat.sort_unstable();
        assert_eq!(flat, (0..10).collect::<Vec<_>>());
        assert_eq!(
            a,
            epoch_batches(10, 3, 7, 0),
            "same (seed, epoch) → same order"
        );
        assert_ne!(a, epoch_batches(10, 3, 7, 1), "epochs differ");
        assert_ne!(a, epoch_batches(10, 3, 8, 0), "seeds differ");
    }

    #[test]
    fn sequential_batches_keep_file_order() {
        assert_eq!(
            sequential_batches(5, 2),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        assert!(sequential_batches(0, 2).is_empty());
    }

    #[test]
    fn make_batch_pads_and_labels() {
        let examples = vec![
            EncodedExample {
                ids: vec![1, 5, 2],
                label: 1,
            },
            EncodedExample {
                ids: vec![1, 2],
                label: 0,
            },
        ];
        let batch = make_batch(&examples, &[1, 0], 0, &Device::Cpu).expect("batch");
        assert_eq!(batch.label_ids, vec![0, 1]);
        assert_eq!(batch.labels.to_vec1::<u32>().expect("labels"), vec![0, 1]);
        assert_eq!(batch.inputs.n_tokens, 5);
        assert_eq!(batch.inputs.input_ids.dims(), &[2, 3]);
        assert!(make_batch(&examples, &[2], 0, &Device::Cpu).is_err());
    }
}
