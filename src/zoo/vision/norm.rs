//! BatchNorm over channels-last activations, with PyTorch's semantics: in training mode it
//! normalises by the batch's statistics and moves the running ones (momentum 0.1, unbiased
//! variance), in evaluation mode it applies the running ones. A frozen block always runs in
//! evaluation mode, so its statistics never move.

use candle_core::{CpuStorage, Layout, Shape, Tensor, Var};

use super::norm_train::{affine, batch_stats, BnActTrain};
use super::Role;
use crate::zoo::fused::contiguous_f32;
use crate::zoo::linear::Param;
use crate::zoo::params::NamedVar;
use crate::zoo::ZooError;

/// PyTorch's default: `running = (1 − m)·running + m·batch`.
const MOMENTUM: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct BatchNorm {
    pub name: String,
    pub weight: Param,
    pub bias: Param,
    /// Updated in place by training-mode forwards; checkpointed as buffers.
    pub running_mean: Var,
    pub running_var: Var,
    pub eps: f64,
}

/// The activation that follows a BatchNorm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    /// `min(max(x, 0), 6)`: EfficientNet-Lite's.
    Relu6,
}

impl Activation {
    /// The composed (differentiable) form, for tensors that train.
    pub fn forward(self, x: &Tensor) -> Result<Tensor, ZooError> {
        Ok(match self {
            Activation::Identity => x.clone(),
            Activation::Relu => x.relu()?,
            Activation::Relu6 => x.clamp(0f32, 6f32)?,
        })
    }
}

impl BatchNorm {
    /// `x [N, H, W, C]` normalised per channel, then `act`: batch statistics when `role`
    /// trains the layer, running statistics otherwise.
    pub fn forward(&self, x: &Tensor, role: Role, act: Activation) -> Result<Tensor, ZooError> {
        if role == Role::Train {
            return self.forward_batch_stats(x, act);
        }
        let (scale, shift) = self.eval_scale_shift()?;
        if x.track_op() || !crate::zoo::fused::uses_fused_kernels(x) {
            return act.forward(&x.broadcast_mul(&scale)?.broadcast_add(&shift)?);
        }
        // Frozen and graph-free: scale, shift and activation in one pass over the
        // activations instead of four (measured: candle's broadcast ops and their fresh
        // buffers were a fifth of a frozen EfficientNet-Lite0 forward).
        let op = FrozenAffine {
            scale: scale.to_vec1::<f32>()?,
            shift: shift.to_vec1::<f32>()?,
            act,
        };
        Ok(x.contiguous()?.apply_op1_no_bwd(&op)?)
    }

    /// Evaluation mode as one affine map per channel: `bn(x) = x·scale + shift`, detached.
    pub fn eval_scale_shift(&self) -> Result<(Tensor, Tensor), ZooError> {
        let var = self.running_var.as_tensor().detach();
        let scale = (self.weight.tensor().detach() / (var + self.eps)?.sqrt()?)?;
        let shift =
            (self.bias.tensor().detach() - (self.running_mean.as_tensor().detach() * &scale)?)?;
        Ok((scale, shift))
    }

    fn forward_batch_stats(&self, x: &Tensor, act: Activation) -> Result<Tensor, ZooError> {
        let channels = self.running_mean.dim(0)?;
        let rows = x.elem_count() / channels;
        if rows < 2 {
            return Err(ZooError::Unsupported(
                "BatchNorm in training mode needs more than one value per channel (a batch of at least 2 images)".into(),
            ));
        }
        let x2 = x.contiguous()?.reshape((rows, channels))?;
        let unbiased = rows as f64 / (rows - 1) as f64;
        if !crate::zoo::fused::uses_fused_kernels(x) {
            let params = (self.weight.tensor(), self.bias.tensor());
            let (y, mean, var) = super::generic::batch_norm_train(&x2, params, self.eps, act)?;
            self.update_running(&mean, &var, unbiased)?;
            return Ok(y.reshape(x.shape())?);
        }
        let stats = batch_stats(&x2.detach())?;
        let mean = Tensor::from_slice(&stats.mean, channels, x.device())?;
        let var = Tensor::from_slice(&stats.var, channels, x.device())?;
        self.update_running(&mean, &var, unbiased)?;
        let op = BnActTrain {
            mean: stats.mean,
            rstd: stats
                .var
                .iter()
                .map(|v| 1.0 / (v + self.eps as f32).sqrt())
                .collect(),
            act,
        };
        let y = x2.apply_op3(self.weight.tensor(), self.bias.tensor(), op)?;
        Ok(y.reshape(x.shape())?)
    }

    /// `running = (1 − m)·running + m·batch`, the variance made unbiased by `unbiased`
    /// (`rows / (rows − 1)`) as PyTorch's running variance is.
    fn update_running(&self, mean: &Tensor, var: &Tensor, unbiased: f64) -> Result<(), ZooError> {
        let m = MOMENTUM;
        let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let new_var = ((self.running_var.as_tensor() * (1.0 - m))? + (var * (m * unbiased))?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        Ok(())
    }

    /// Weight and bias, when trainable (no weight decay on either, as for LayerNorm).
    pub fn push_vars(&self, out: &mut Vec<NamedVar>) {
        for (suffix, param) in [("weight", &self.weight), ("bias", &self.bias)] {
            if let Param::Trainable(var) = param {
                out.push(NamedVar {
                    name: format!("{}.{suffix}", self.name),
                    var: var.clone(),
                    weight_decay: false,
                    row_grads: None,
                });
            }
        }
    }

    /// The running statistics: what a checkpoint keeps besides the trainable tensors.
    pub fn push_buffers(&self, out: &mut Vec<NamedVar>) {
        for (suffix, var) in [
            ("running_mean", &self.running_mean),
            ("running_var", &self.running_var),
        ] {
            out.push(NamedVar {
                name: format!("{}.{suffix}", self.name),
                var: var.clone(),
                weight_decay: false,
                row_grads: None,
            });
        }
    }
}

/// `act(x·scale + shift)` per channel (the last dimension), with no backward: only
/// called on activations that track nothing.
struct FrozenAffine {
    scale: Vec<f32>,
    shift: Vec<f32>,
    act: Activation,
}

impl candle_core::CustomOp1 for FrozenAffine {
    fn name(&self) -> &'static str {
        "frozen-batch-norm-act"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        // One loop per activation, so each inner loop is branch-free and vectorises.
        let y = match self.act {
            Activation::Identity => affine(x, &self.scale, &self.shift, |v| v),
            Activation::Relu => affine(x, &self.scale, &self.shift, |v| v.max(0.0)),
            Activation::Relu6 => affine(x, &self.scale, &self.shift, |v| v.clamp(0.0, 6.0)),
        };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
}

#[cfg(test)]
#[path = "norm_tests.rs"]
mod tests;
