//! One evaluation pass over a split: loss over the labelled tokens and the seqeval metrics,
//! in eval mode (no dropout), batch by batch in file order.

use candle_core::Device;

use super::align::{collate_tagged, AlignedExample};
use super::head::{token_cross_entropy, TokenClassifier};
use super::metrics::TagMetrics;
use crate::train::data::sequential_batches;
use crate::train::TrainError;

/// A split to evaluate, tokenized.
pub struct TaggedSet<'a> {
    pub examples: &'a [AlignedExample],
    pub batch_size: usize,
    pub pad_id: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TagEvaluation {
    /// Mean cross-entropy per labelled token.
    pub loss: f64,
    pub metrics: TagMetrics,
}

/// Scores `model` on `set`; `labels` names the label ids (id = index).
pub fn evaluate_tags(
    model: &TokenClassifier,
    set: &TaggedSet,
    labels: &[String],
    device: &Device,
) -> Result<TagEvaluation, TrainError> {
    let name = |id: u32| -> Result<&str, TrainError> {
        labels
            .get(id as usize)
            .map(String::as_str)
            .ok_or_else(|| TrainError::InvalidData(format!("label id {id} has no name")))
    };
    let mut loss_sum = 0.0;
    let mut labelled = 0;
    let mut gold: Vec<Vec<&str>> = Vec::with_capacity(set.examples.len());
    let mut predicted: Vec<Vec<&str>> = Vec::with_capacity(set.examples.len());
    for indices in sequential_batches(set.examples.len(), set.batch_size) {
        let batch = collate_tagged(set.examples, &indices, set.pad_id, device)?;
        let width = batch.inputs.input_ids.dim(1)?;
        let logits = model.forward(&batch.inputs, false)?;
        let out = token_cross_entropy(&logits, &batch.labels)?;
        loss_sum += out.loss.to_scalar::<f32>()? as f64 * out.positions.len() as f64;
        labelled += out.positions.len();
        let first_row = gold.len();
        gold.extend(indices.iter().map(|_| Vec::new()));
        predicted.extend(indices.iter().map(|_| Vec::new()));
        for ((position, &g), &p) in out.positions.iter().zip(&out.gold).zip(&out.predicted) {
            let row = first_row + position / width;
            gold[row].push(name(g)?);
            predicted[row].push(name(p)?);
        }
    }
    Ok(TagEvaluation {
        loss: if labelled == 0 {
            0.0
        } else {
            loss_sum / labelled as f64
        },
        metrics: TagMetrics::compute(&gold, &predicted),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::domain::dataset::TokenTagsExample;
    use crate::tasks::token_classification::{AlignOptions, TagAligner, TokenClassifierSpec};
    use crate::zoo::testing::write_tiny_bert;
    use crate::zoo::TextTokenizer;

    #[test]
    fn batched_evaluation_equals_one_by_one_and_scores_the_arg_max() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), 11).unwrap();
        let labels: Vec<String> = ["O", "B-LOC", "I-LOC"].map(String::from).to_vec();
        let tokenizer = TextTokenizer::from_dir(dir.path()).unwrap();
        let options = AlignOptions {
            max_seq_len: 32,
            label_all_tokens: false,
        };
        let aligner = TagAligner::new(tokenizer.inner(), &labels, options).unwrap();
        let sentences = [
            (vec!["Paris", "is", "nice"], vec!["B-LOC", "O", "O"]),
            (
                vec!["the", "new", "york", "film"],
                vec!["O", "B-LOC", "I-LOC", "O"],
            ),
            (vec!["good"], vec!["O"]),
        ];
        let examples: Vec<AlignedExample> = sentences
            .iter()
            .enumerate()
            .map(|(i, (tokens, tags))| {
                let example = TokenTagsExample {
                    tokens: tokens.iter().map(|s| s.to_string()).collect(),
                    tags: tags.iter().map(|s| s.to_string()).collect(),
                };
                aligner.align(i + 1, &example).unwrap()
            })
            .collect();
        let spec = TokenClassifierSpec {
            num_labels: 3,
            lora: None,
            classifier_dropout: None,
        };
        let model = TokenClassifier::from_pretrained(dir.path(), &spec, &Device::Cpu, 0).unwrap();
        let evaluate = |batch_size| {
            let set = TaggedSet {
                examples: &examples,
                batch_size,
                pad_id: tokenizer.pad_id(),
            };
            evaluate_tags(&model, &set, &labels, &Device::Cpu).unwrap()
        };
        let batched = evaluate(3);
        let single = evaluate(1);
        assert!((batched.loss - single.loss).abs() < 1e-5);
        assert_eq!(batched.metrics, single.metrics);

        // The metrics are those of the arg-max tags, word by word.
        let mut gold = Vec::new();
        let mut predicted = Vec::new();
        for example in &examples {
            let batch =
                collate_tagged(std::slice::from_ref(example), &[0], 0, &Device::Cpu).unwrap();
            let logits = model.forward(&batch.inputs, false).unwrap();
            let out = token_cross_entropy(&logits, &batch.labels).unwrap();
            let names = |ids: &[u32]| -> Vec<String> {
                ids.iter().map(|&i| labels[i as usize].clone()).collect()
            };
            gold.push(names(&out.gold));
            predicted.push(names(&out.predicted));
        }
        assert_eq!(gold[1], ["O", "B-LOC", "I-LOC", "O"]);
        assert_eq!(batched.metrics, TagMetrics::compute(&gold, &predicted));
    }
}
