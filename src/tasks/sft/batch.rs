//! Batches of SFT examples and the masked next-token loss.
//!
//! The logits at position `t` predict token `t + 1`, so position `t` is a loss row when
//! token `t + 1` is trained. Only those rows of the final hidden states go through the
//! LM head: for a 49k vocabulary the full `[B, T, V]` logits would dominate memory and
//! time, and prompt rows would be computed only to be thrown away.

use candle_core::{DType, Device, Tensor, D};

use super::prepare::SftExample;
use crate::train::data::pick;
use crate::train::evaluate::scalar;
use crate::train::TrainError;
use crate::zoo::{collate, EncodedBatch, ZooError};

/// Next-token targets of a right-padded `[B, T]` batch, flattened to `B * T` positions:
/// `targets[p]` is the token that follows position `p` (any id where untrained) and
/// `trained[p]` whether the loss covers it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenTargets {
    pub targets: Vec<u32>,
    pub trained: Vec<bool>,
}

impl TokenTargets {
    pub fn n_trained(&self) -> usize {
        self.trained.iter().filter(|&&t| t).count()
    }
}

pub struct LmBatch {
    pub inputs: EncodedBatch,
    pub targets: TokenTargets,
}

/// Collates `indices` of `examples` (right padding to the longest) with their targets.
pub fn make_lm_batch(
    examples: &[SftExample],
    indices: &[usize],
    pad_id: u32,
    device: &Device,
) -> Result<LmBatch, TrainError> {
    let picked = pick(examples, indices)?;
    let seqs: Vec<&[u32]> = picked.iter().map(|e| e.ids.as_slice()).collect();
    let inputs = collate(&seqs, pad_id, device)?;
    let width = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut targets = vec![pad_id; picked.len() * width];
    let mut trained = vec![false; picked.len() * width];
    for (b, example) in picked.iter().enumerate() {
        for t in 0..example.ids.len().saturating_sub(1) {
            targets[b * width + t] = example.ids[t + 1];
            trained[b * width + t] = example.trained[t + 1];
        }
    }
    Ok(LmBatch {
        inputs,
        targets: TokenTargets { targets, trained },
    })
}

/// Mean cross-entropy over the trained positions (differentiable) and how many of them
/// the arg-max got right.
pub struct LmLoss {
    pub loss: Tensor,
    pub n_targets: usize,
    pub correct: usize,
}

impl LmLoss {
    /// Summed (not mean) loss, for averaging over several batches.
    pub fn loss_sum(&self) -> Result<f64, TrainError> {
        Ok(scalar(&self.loss)? * self.n_targets as f64)
    }
}

/// `hidden`: `[B, T, H]` final hidden states; `lm_head` maps `[N, H]` rows to `[N, V]`.
pub fn masked_next_token_loss(
    hidden: &Tensor,
    lm_head: impl Fn(&Tensor) -> Result<Tensor, ZooError>,
    targets: &TokenTargets,
) -> Result<LmLoss, TrainError> {
    let (b, t, h) = hidden.dims3()?;
    if targets.trained.len() != b * t {
        return Err(TrainError::InvalidData(format!(
            "targets cover {} positions, the batch has {}",
            targets.trained.len(),
            b * t
        )));
    }
    let (rows, wanted): (Vec<u32>, Vec<u32>) = targets
        .trained
        .iter()
        .zip(&targets.targets)
        .enumerate()
        .filter(|(_, (&trained, _))| trained)
        .map(|(p, (_, &target))| (p as u32, target))
        .unzip();
    let n = rows.len();
    if n == 0 {
        return Err(TrainError::InvalidData(
            "a batch has no trained tokens".into(),
        ));
    }
    let device = hidden.device();
    let rows = Tensor::from_vec(rows, n, device)?;
    let selected = hidden.reshape((b * t, h))?.index_select(&rows, 0)?;
    let logits = lm_head(&selected)?.to_dtype(DType::F32)?;
    let wanted_t = Tensor::from_vec(wanted.clone(), n, device)?;
    let loss = candle_nn::loss::cross_entropy(&logits, &wanted_t)?;
    let predicted = logits.detach().argmax(D::Minus1)?.to_vec1::<u32>()?;
    let correct = predicted
        .iter()
        .zip(&wanted)
        .filter(|(p, w)| p == w)
        .count();
    Ok(LmLoss {
        loss,
        n_targets: n,
        correct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_shifted_and_padding_is_untrained() {
        let examples = vec![
            SftExample {
                ids: vec![5, 6, 7, 8],
                trained: vec![false, false, true, true],
            },
            SftExample {
                ids: vec![9, 10],
                trained: vec![false, true],
            },
        ];
        let batch = make_lm_batch(&examples, &[0, 1], 0, &Device::Cpu).expect("batch");
        assert_eq!(batch.inputs.input_ids.dims(), &[2, 4]);
        // Row 0: position 1 predicts 7, position 2 predicts 8. Row 1: position 0 → 10.
        assert_eq!(
            batch.targets.trained,
            vec![false, true, true, false, true, false, false, false]
        );
        assert_eq!(
            batch.targets.targets,
            vec![6, 7, 8, 0, 10, 0, 0, 0],
            "untrained targets are whatever follows, padding gets the pad id"
        );
        assert_eq!(batch.targets.n_trained(), 3);
        assert_eq!(examples.iter().map(SftExample::n_targets).sum::<usize>(), 3);
    }

    #[test]
    fn loss_is_the_mean_over_trained_rows_only() {
        // Hidden states are one-hot rows, the head is the identity: logits = hidden.
        let hidden = Tensor::new(
            &[[[4f32, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]]],
            &Device::Cpu,
        )
        .expect("hidden");
        let head = |x: &Tensor| Ok::<_, ZooError>(x.clone());
        let targets = TokenTargets {
            targets: vec![0, 2, 2],
            trained: vec![true, true, false],
        };
        let out = masked_next_token_loss(&hidden, head, &targets).expect("loss");
        let z = (4f64.exp() + 2.0).ln();
        // Row 0 predicts 0 right: -log softmax = z - 4; row 1 wants 2: z - 0.
        let expected = ((z - 4.0) + z) / 2.0;
        assert!((scalar(&out.loss).expect("scalar") - expected).abs() < 1e-5);
        assert_eq!((out.n_targets, out.correct), (2, 1));
        assert!((out.loss_sum().expect("sum") - 2.0 * expected).abs() < 1e-4);
    }
}
