//! The policy being tuned and the frozen reference it is compared with.
//!
//! The reference is the starting model. With LoRA it is the policy itself with every
//! adapter off ([`Pass::BaseOnly`]): the base weights are frozen, so that pass is the
//! starting model however far the adapters have moved, and no second copy of the weights
//! is held. With full fine-tuning every weight moves, so the reference is a frozen copy
//! taken before the first step.

use candle_core::Device;

use super::logprobs::{make_pair_batch, model_logps, PairLogps};
use super::loss::{dpo_loss, DpoLoss, RewardTotals};
use super::prepare::PreferencePair;
use crate::train::TrainError;
use crate::zoo::decoder::CausalLm;
use crate::zoo::linear::Pass;

/// Where the reference log-probs come from.
pub enum Reference {
    /// The policy with its adapters off (LoRA / QLoRA).
    AdaptersOff,
    /// A frozen copy of the starting weights (full fine-tuning).
    FrozenCopy(Box<CausalLm>),
}

impl Reference {
    /// The reference for `policy` as it is now (call before training moves it).
    pub fn of(policy: &CausalLm) -> Result<Self, TrainError> {
        if policy.base_is_frozen() {
            Ok(Reference::AdaptersOff)
        } else {
            Ok(Reference::FrozenCopy(Box::new(policy.frozen_copy()?)))
        }
    }

    /// Bytes of weights the reference adds to the policy's.
    pub fn extra_parameter_bytes(&self) -> usize {
        match self {
            Reference::AdaptersOff => 0,
            Reference::FrozenCopy(model) => model.parameter_bytes(),
        }
    }
}

/// Policy, reference and `beta`: everything a DPO step needs.
pub struct DpoModels {
    pub policy: CausalLm,
    pub reference: Reference,
    pub beta: f64,
}

/// One batch's loss and what it read.
pub struct DpoBatchOutput {
    pub loss: DpoLoss,
    /// Non-padding tokens of the concatenated batch.
    pub tokens: usize,
}

impl DpoModels {
    /// Takes the reference from `policy` before it has trained.
    pub fn new(policy: CausalLm, beta: f64) -> Result<Self, TrainError> {
        let reference = Reference::of(&policy)?;
        Ok(Self {
            policy,
            reference,
            beta,
        })
    }

    /// The reference's log-probs of a batch: never part of a gradient.
    pub fn reference_logps(
        &self,
        batch: &super::logprobs::PairBatch,
    ) -> Result<PairLogps, TrainError> {
        let logps = match &self.reference {
            Reference::AdaptersOff => model_logps(&self.policy, batch, Pass::BaseOnly)?,
            Reference::FrozenCopy(model) => model_logps(model, batch, Pass::BaseOnly)?,
        };
        Ok(logps.detach())
    }

    /// Loss of the pairs at `indices`; `train` turns on LoRA dropout in the policy pass.
    pub fn batch_loss(
        &self,
        pairs: &[PreferencePair],
        indices: &[usize],
        pad_id: u32,
        train: bool,
    ) -> Result<DpoBatchOutput, TrainError> {
        let batch = make_pair_batch(pairs, indices, pad_id, self.device())?;
        let reference = self.reference_logps(&batch)?;
        let policy = model_logps(&self.policy, &batch, Pass::training(train))?;
        Ok(DpoBatchOutput {
            loss: dpo_loss(&policy, &reference, self.beta)?,
            tokens: batch.inputs.n_tokens,
        })
    }

    /// Reward totals over `batches` of `pairs`, in eval mode.
    pub fn evaluate(
        &self,
        pairs: &[PreferencePair],
        batches: &[Vec<usize>],
        pad_id: u32,
    ) -> Result<RewardTotals, TrainError> {
        let mut totals = RewardTotals::default();
        for indices in batches {
            totals.add(&self.batch_loss(pairs, indices, pad_id, false)?.loss.totals);
        }
        Ok(totals)
    }

    pub fn device(&self) -> &Device {
        self.policy.device()
    }
}
