//! The sigmoid DPO loss of Rafailov et al. and its reward metrics.
//!
//! With `π` the policy's and `ref` the reference's summed completion log-probs,
//! `z = β·((π_c − ref_c) − (π_r − ref_r))` and the loss is `−log σ(z)`, averaged over pairs.
//! The implicit rewards are `β·(π − ref)` per side; reward accuracy is the share of pairs
//! whose chosen reward is strictly greater (TRL's `rewards/accuracies`), the margin the mean
//! of chosen minus rejected. The metrics are named as TRL and OpenAI name them:
//! `train_loss`, `train_rewards_chosen`, `train_rewards_rejected`, `train_reward_accuracy`,
//! `train_reward_margin` and their `valid_*` counterparts.

use candle_core::Tensor;

use super::logprobs::PairLogps;
use crate::train::TrainError;

/// OpenAI's and TRL's default `beta`.
pub const DEFAULT_BETA: f64 = 0.1;

/// Metric names after the `train_` / `valid_` prefix, in the order of [`RewardMeans::values`].
pub const METRIC_SUFFIXES: [&str; 5] = [
    "loss",
    "rewards_chosen",
    "rewards_rejected",
    "reward_accuracy",
    "reward_margin",
];

/// Per-pair sums, so that batches of any size average exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RewardTotals {
    pub pairs: usize,
    pub loss: f64,
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    /// Pairs whose chosen reward is strictly greater than the rejected one.
    pub correct: usize,
}

/// Means over pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardMeans {
    pub loss: f64,
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub reward_accuracy: f64,
    pub reward_margin: f64,
}

impl RewardMeans {
    /// Values in the order of [`METRIC_SUFFIXES`].
    pub fn values(&self) -> [f64; 5] {
        [
            self.loss,
            self.rewards_chosen,
            self.rewards_rejected,
            self.reward_accuracy,
            self.reward_margin,
        ]
    }

    /// `(prefix_suffix, value)` pairs, e.g. `("valid_reward_accuracy", 0.75)`.
    pub fn named(&self, prefix: &str) -> Vec<(String, f64)> {
        METRIC_SUFFIXES
            .iter()
            .zip(self.values())
            .map(|(suffix, value)| (format!("{prefix}_{suffix}"), value))
            .collect()
    }
}

impl RewardTotals {
    pub fn add(&mut self, other: &RewardTotals) {
        self.pairs += other.pairs;
        self.loss += other.loss;
        self.rewards_chosen += other.rewards_chosen;
        self.rewards_rejected += other.rewards_rejected;
        self.correct += other.correct;
    }

    /// None before any pair was added.
    pub fn means(&self) -> Option<RewardMeans> {
        if self.pairs == 0 {
            return None;
        }
        let n = self.pairs as f64;
        Some(RewardMeans {
            loss: self.loss / n,
            rewards_chosen: self.rewards_chosen / n,
            rewards_rejected: self.rewards_rejected / n,
            reward_accuracy: self.correct as f64 / n,
            reward_margin: (self.rewards_chosen - self.rewards_rejected) / n,
        })
    }
}

/// The mean loss over a batch's pairs (differentiable through the policy's log-probs) and
/// the batch's reward totals.
pub struct DpoLoss {
    pub loss: Tensor,
    pub totals: RewardTotals,
}

/// `reference` is detached here whatever it is: no gradient flows into the reference.
pub fn dpo_loss(
    policy: &PairLogps,
    reference: &PairLogps,
    beta: f64,
) -> Result<DpoLoss, TrainError> {
    let reference = reference.detach();
    let chosen_ratio = (&policy.chosen - &reference.chosen)?;
    let rejected_ratio = (&policy.rejected - &reference.rejected)?;
    let z = ((&chosen_ratio - &rejected_ratio)? * beta)?;
    // −log σ(z) = softplus(−z) = max(−z, 0) + log(1 + e^{−|z|}): no overflow for any z.
    let per_pair = (z.neg()?.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let loss = per_pair.mean_all()?;
    let chosen = (chosen_ratio.detach() * beta)?.to_vec1::<f32>()?;
    let rejected = (rejected_ratio.detach() * beta)?.to_vec1::<f32>()?;
    let losses = per_pair.detach().to_vec1::<f32>()?;
    let totals = RewardTotals {
        pairs: losses.len(),
        loss: losses.iter().map(|&l| f64::from(l)).sum(),
        rewards_chosen: chosen.iter().map(|&r| f64::from(r)).sum(),
        rewards_rejected: rejected.iter().map(|&r| f64::from(r)).sum(),
        correct: chosen.iter().zip(&rejected).filter(|(c, r)| c > r).count(),
    };
    Ok(DpoLoss { loss, totals })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn logps(chosen: &[f32], rejected: &[f32]) -> PairLogps {
        PairLogps {
            chosen: Tensor::new(chosen, &Device::Cpu).unwrap(),
            rejected: Tensor::new(rejected, &Device::Cpu).unwrap(),
        }
    }

    #[test]
    fn loss_rewards_and_gradient_match_hand_computed_values() {
        // Pair 1: chosen ratio +1, rejected ratio −1 → z = 0.5·2 = 1.
        // Pair 2: chosen ratio 0, rejected ratio +1 → z = 0.5·(−1) = −0.5.
        let policy_chosen = Var::new(&[-3f32, -2.0], &Device::Cpu).unwrap();
        let policy = PairLogps {
            chosen: policy_chosen.as_tensor().clone(),
            rejected: Tensor::new(&[-5f32, -1.0], &Device::Cpu).unwrap(),
        };
        let reference = logps(&[-4.0, -2.0], &[-4.0, -2.0]);
        let out = dpo_loss(&policy, &reference, 0.5).unwrap();
        let (l1, l2) = ((1.0 + (-1f64).exp()).ln(), (1.0 + 0.5f64.exp()).ln());
        assert!((l1 - 0.313_261_687_5).abs() < 1e-9 && (l2 - 0.974_076_984_8).abs() < 1e-9);
        let loss = out.loss.to_scalar::<f32>().unwrap() as f64;
        assert!((loss - (l1 + l2) / 2.0).abs() < 1e-6, "loss {loss}");
        let means = out.totals.means().unwrap();
        assert_eq!(out.totals.pairs, 2);
        assert_eq!(out.totals.correct, 1);
        assert!((means.loss - (l1 + l2) / 2.0).abs() < 1e-6);
        assert!((means.rewards_chosen - 0.25).abs() < 1e-6, "(0.5 + 0) / 2");
        assert!(
            (means.rewards_rejected - 0.0).abs() < 1e-6,
            "(−0.5 + 0.5) / 2"
        );
        assert_eq!(means.reward_accuracy, 0.5);
        assert!((means.reward_margin - 0.25).abs() < 1e-6);
        // d loss / d π_c = −β·σ(−z) / B.
        let grads = out.loss.backward().unwrap();
        let g = grads
            .get(policy_chosen.as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        assert!((g[0] as f64 - (-0.5 * sigmoid(-1.0) / 2.0)).abs() < 1e-6);
        assert!((g[1] as f64 - (-0.5 * sigmoid(0.5) / 2.0)).abs() < 1e-6);
    }

    #[test]
    fn equal_policy_and_reference_give_ln_2_and_zero_rewards() {
        let same = logps(&[-7.25, -1.5, -30.0], &[-2.0, -9.0, -0.125]);
        let out = dpo_loss(&same, &same, DEFAULT_BETA).unwrap();
        assert_eq!(out.loss.to_scalar::<f32>().unwrap(), std::f32::consts::LN_2);
        let means = out.totals.means().unwrap();
        assert_eq!(
            (
                means.rewards_chosen,
                means.rewards_rejected,
                means.reward_margin
            ),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(means.reward_accuracy, 0.0, "equal rewards are not a win");
    }

    #[test]
    fn large_margins_do_not_overflow() {
        let policy = logps(&[0.0, -1000.0], &[-1000.0, 0.0]);
        let reference = logps(&[0.0, 0.0], &[0.0, 0.0]);
        let out = dpo_loss(&policy, &reference, 1.0).unwrap();
        // z = +1000 → loss ≈ 0; z = −1000 → loss = 1000.
        let loss = out.loss.to_scalar::<f32>().unwrap();
        assert!((loss - 500.0).abs() < 1e-3, "loss {loss}");
    }

    #[test]
    fn totals_accumulate_and_name_their_metrics() {
        let mut totals = RewardTotals::default();
        assert!(totals.means().is_none());
        totals.add(&RewardTotals {
            pairs: 1,
            loss: 0.5,
            rewards_chosen: 0.3,
            rewards_rejected: 0.1,
            correct: 1,
        });
        totals.add(&RewardTotals {
            pairs: 3,
            loss: 1.5,
            rewards_chosen: -0.3,
            rewards_rejected: 0.3,
            correct: 1,
        });
        let named = totals.means().unwrap().named("valid");
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "valid_loss",
                "valid_rewards_chosen",
                "valid_rewards_rejected",
                "valid_reward_accuracy",
                "valid_reward_margin"
            ]
        );
        let values: Vec<f64> = named.iter().map(|(_, v)| *v).collect();
        let expected = [0.5, 0.0, 0.1, 0.5, -0.1];
        for (v, e) in values.iter().zip(expected) {
            assert!((v - e).abs() < 1e-12, "{values:?}");
        }
    }
}
