//! Classification examples tokenized once (a task's data preparation) and collated into
//! labelled batches, padded per batch.

use candle_core::{Device, Tensor};

use crate::domain::dataset::LabeledText;
use crate::train::data::pick;
use crate::train::TrainError;
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
