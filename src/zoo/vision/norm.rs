//! BatchNorm over channels-last activations, with PyTorch's semantics: in training mode it
//! normalises by the batch's statistics and moves the running ones (momentum 0.1, unbiased
//! variance), in evaluation mode it applies the running ones. A frozen block always runs in
//! evaluation mode, so its statistics never move.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, Var};

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
            return act.forward(&self.forward_batch_stats(x)?);
        }
        let var = self.running_var.as_tensor().detach();
        let scale = (self.weight.tensor().detach() / (var + self.eps)?.sqrt()?)?;
        let shift =
            (self.bias.tensor().detach() - (self.running_mean.as_tensor().detach() * &scale)?)?;
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

    fn forward_batch_stats(&self, x: &Tensor) -> Result<Tensor, ZooError> {
        let channels = self.running_mean.dim(0)?;
        let rows = x.elem_count() / channels;
        if rows < 2 {
            return Err(ZooError::Unsupported(
                "BatchNorm in training mode needs more than one value per channel (a batch of at least 2 images)".into(),
            ));
        }
        let x2 = x.contiguous()?.reshape((rows, channels))?;
        let stats = ChannelStats::of(&x2.detach())?;
        let m = MOMENTUM;
        let unbiased = rows as f64 / (rows - 1) as f64;
        let mean = Tensor::from_slice(&stats.mean, channels, x.device())?;
        let var = Tensor::from_slice(&stats.var, channels, x.device())?;
        let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let new_var = ((self.running_var.as_tensor() * (1.0 - m))? + (var * (m * unbiased))?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        let op = BatchNormTrain {
            mean: stats.mean,
            rstd: stats
                .var
                .iter()
                .map(|v| 1.0 / (v + self.eps as f32).sqrt())
                .collect(),
        };
        let y = x2.apply_op3(self.weight.tensor(), self.bias.tensor(), op)?;
        Ok(y.reshape(x.shape())?)
    }

    /// Weight and bias, when trainable (no weight decay on either, as for LayerNorm).
    pub fn push_vars(&self, out: &mut Vec<NamedVar>) {
        for (suffix, param) in [("weight", &self.weight), ("bias", &self.bias)] {
            if let Param::Trainable(var) = param {
                out.push(NamedVar {
                    name: format!("{}.{suffix}", self.name),
                    var: var.clone(),
                    weight_decay: false,
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
            Activation::Identity => self.map(x, |v| v),
            Activation::Relu => self.map(x, |v| v.max(0.0)),
            Activation::Relu6 => self.map(x, |v| v.clamp(0.0, 6.0)),
        };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
}

impl FrozenAffine {
    fn map(&self, x: &[f32], act: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
        use rayon::prelude::*;
        let c = self.scale.len().max(1);
        // Whole rows per task, a few thousand values each.
        let chunk = (16384 / c).max(1) * c;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(out, input)| {
                for (o_row, x_row) in out.chunks_exact_mut(c).zip(input.chunks_exact(c)) {
                    for (((o, &v), &a), &b) in o_row
                        .iter_mut()
                        .zip(x_row)
                        .zip(&self.scale)
                        .zip(&self.shift)
                    {
                        *o = act(v * a + b);
                    }
                }
            });
        y
    }
}

/// Per-channel mean and biased variance of `[rows, C]`, in f64 sums so large batches of
/// large images keep their precision.
struct ChannelStats {
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl ChannelStats {
    fn of(x2: &Tensor) -> Result<Self, ZooError> {
        let (rows, channels) = x2.dims2()?;
        let data = x2.flatten_all()?.to_vec1::<f32>()?;
        let mut sum = vec![0f64; channels];
        for row in data.chunks_exact(channels) {
            sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / rows as f64).collect();
        let mut sq = vec![0f64; channels];
        for row in data.chunks_exact(channels) {
            for ((s, &v), &m) in sq.iter_mut().zip(row).zip(&mean) {
                let d = v as f64 - m;
                *s += d * d;
            }
        }
        Ok(Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            var: sq.iter().map(|s| (s / rows as f64) as f32).collect(),
        })
    }
}

/// `y = (x − μ)·rstd·γ + β` with the batch statistics computed beforehand; backward in one
/// pass for `dx`, `dγ`, `dβ` (the normalisation's own gradient included).
struct BatchNormTrain {
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train-nhwc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let scale: Vec<f32> = self.rstd.iter().zip(w).map(|(r, w)| r * w).collect();
        let shift: Vec<f32> = (0..w.len())
            .map(|c| b[c] - self.mean[c] * scale[c])
            .collect();
        let mut y = vec![0f32; x.len()];
        for (row, out) in x.chunks_exact(w.len()).zip(y.chunks_exact_mut(w.len())) {
            for (((o, &v), &s), &t) in out.iter_mut().zip(row).zip(&scale).zip(&shift) {
                *o = v * s + t;
            }
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, channels) = x.dims2()?;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let gs = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let ws = weight.to_vec1::<f32>()?;
        // dβ = Σ g, dγ = Σ g·x̂ per channel; dx = γ·rstd·(g − mean(g) − x̂·mean(g·x̂)).
        let (mut dbeta, mut dgamma) = (vec![0f32; channels], vec![0f32; channels]);
        for (row, g) in xs.chunks_exact(channels).zip(gs.chunks_exact(channels)) {
            for c in 0..channels {
                let xhat = (row[c] - self.mean[c]) * self.rstd[c];
                dbeta[c] += g[c];
                dgamma[c] += g[c] * xhat;
            }
        }
        let n = rows as f32;
        let mut dx = vec![0f32; xs.len()];
        for ((row, g), d) in xs
            .chunks_exact(channels)
            .zip(gs.chunks_exact(channels))
            .zip(dx.chunks_exact_mut(channels))
        {
            for c in 0..channels {
                let xhat = (row[c] - self.mean[c]) * self.rstd[c];
                d[c] = ws[c] * self.rstd[c] * (g[c] - dbeta[c] / n - xhat * dgamma[c] / n);
            }
        }
        let device = x.device();
        let dx = x
            .track_op()
            .then(|| Tensor::from_vec(dx, (rows, channels), device));
        let dgamma = Tensor::from_vec(dgamma, channels, device)?;
        let dbeta = Tensor::from_vec(dbeta, channels, device)?;
        Ok((dx.transpose()?, Some(dgamma), Some(dbeta)))
    }
}

#[cfg(test)]
#[path = "norm_tests.rs"]
mod tests;
