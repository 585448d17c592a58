//! Summed completion log-probs of a concatenated batch.
//!
//! As TRL's `concatenated_forward`, the chosen and the rejected sequences of a batch go
//! through the model in one forward: rows `0..B` are the chosen sequences of the picked
//! pairs, rows `B..2B` their rejected ones, right-padded to the longest. The log-prob of a
//! sequence is `Σ log p(token_t | tokens_<t)` over its completion tokens only; the logits at
//! position `t - 1` predict token `t`, so only those rows of the final hidden states go
//! through the LM head (the full `[2B, T, V]` logits would dominate memory and time).

use candle_core::{Device, Tensor, D};

use super::prepare::{PreferencePair, PreferenceSequence};
use crate::train::data::pick;
use crate::train::TrainError;
use crate::zoo::decoder::CausalLm;
use crate::zoo::linear::Pass;
use crate::zoo::{collate, EncodedBatch, ZooError};

/// A concatenated batch and where its completion tokens sit.
pub struct PairBatch {
    pub inputs: EncodedBatch,
    /// Pairs in the batch (`B`); the batch has `2B` rows.
    pub n_pairs: usize,
    /// Flat `row·T + t - 1` positions whose logits predict a completion token `t`.
    positions: Tensor,
    /// The completion token each position predicts.
    targets: Tensor,
    /// The batch row (`0..2B`) each position belongs to.
    sequence_of: Tensor,
    /// Completion tokens scored (both sides).
    pub n_completion_tokens: usize,
}

/// Collates the pairs at `indices`: chosen sequences first, then rejected ones.
pub fn make_pair_batch(
    pairs: &[PreferencePair],
    indices: &[usize],
    pad_id: u32,
    device: &Device,
) -> Result<PairBatch, TrainError> {
    let picked = pick(pairs, indices)?;
    let sequences: Vec<&PreferenceSequence> = picked
        .iter()
        .map(|p| &p.chosen)
        .chain(picked.iter().map(|p| &p.rejected))
        .collect();
    let ids: Vec<&[u32]> = sequences.iter().map(|s| s.ids.as_slice()).collect();
    let inputs = collate(&ids, pad_id, device)?;
    let width = ids.iter().map(|s| s.len()).max().unwrap_or(0);
    let (mut positions, mut targets, mut sequence_of) = (Vec::new(), Vec::new(), Vec::new());
    for (row, sequence) in sequences.iter().enumerate() {
        for t in sequence.n_prompt.max(1)..sequence.ids.len() {
            positions.push((row * width + t - 1) as u32);
            targets.push(sequence.ids[t]);
            sequence_of.push(row as u32);
        }
    }
    let n = positions.len();
    if n == 0 {
        return Err(TrainError::InvalidData(
            "a preference batch has no completion tokens".into(),
        ));
    }
    Ok(PairBatch {
        inputs,
        n_pairs: picked.len(),
        positions: Tensor::from_vec(positions, n, device)?,
        targets: Tensor::from_vec(targets, (n, 1), device)?,
        sequence_of: Tensor::from_vec(sequence_of, n, device)?,
        n_completion_tokens: n,
    })
}

/// Summed completion log-probs, `[B]` each (differentiable for the policy).
#[derive(Debug, Clone)]
pub struct PairLogps {
    pub chosen: Tensor,
    pub rejected: Tensor,
}

impl PairLogps {
    pub fn detach(&self) -> Self {
        Self {
            chosen: self.chosen.detach(),
            rejected: self.rejected.detach(),
        }
    }
}

/// Per-sequence sums from final hidden states `[2B, T, H]`; `lm_head` maps `[N, H]` rows
/// to `[N, V]` logits.
pub fn completion_logps(
    hidden: &Tensor,
    lm_head: impl Fn(&Tensor) -> Result<Tensor, ZooError>,
    batch: &PairBatch,
) -> Result<PairLogps, TrainError> {
    let (rows, t, h) = hidden.dims3()?;
    if rows != 2 * batch.n_pairs {
        return Err(TrainError::InvalidData(format!(
            "hidden states have {rows} rows, the batch {}",
            2 * batch.n_pairs
        )));
    }
    let selected = hidden
        .reshape((rows * t, h))?
        .index_select(&batch.positions, 0)?;
    let logits = lm_head(&selected)?.to_dtype(candle_core::DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let token_logps = log_probs.gather(&batch.targets, 1)?.squeeze(1)?;
    let sums = Tensor::zeros(rows, token_logps.dtype(), token_logps.device())?.index_add(
        &batch.sequence_of,
        &token_logps,
        0,
    )?;
    Ok(PairLogps {
        chosen: sums.narrow(0, 0, batch.n_pairs)?,
        rejected: sums.narrow(0, batch.n_pairs, batch.n_pairs)?,
    })
}

/// The model's completion log-probs of `batch` in `pass`.
pub fn model_logps(
    model: &CausalLm,
    batch: &PairBatch,
    pass: Pass,
) -> Result<PairLogps, TrainError> {
    let hidden = model.hidden_states_in(&batch.inputs, pass)?;
    completion_logps(&hidden, |x| model.lm_head_in(x, pass), batch)
}
