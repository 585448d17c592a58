//! BatchNorm in training mode fused with the activation after it: statistics, forward and
//! backward each one parallel pass over the activations (two for the backward's sums).
//!
//! Composed from candle's ops, BatchNorm + ReLU6 made about ten full-size temporaries per
//! layer between forward and backward; at 224 px an EfficientNet activation is 150 MB, past
//! glibc's largest mmap threshold, so each was fresh zeroed pages: measured 67 % of a
//! whole-backbone fine-tuning step in the kernel's page clearing, and 16.8 GB peak RSS.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::norm::Activation;
use crate::zoo::cpu::reduce::ordered_sum;
use crate::zoo::fused::contiguous_f32;
use crate::zoo::ZooError;

/// Rows per parallel task: whole rows, about 16k values.
fn chunk_rows(channels: usize) -> usize {
    (16384 / channels.max(1)).max(1)
}

/// Per-channel mean and biased variance of `[rows, C]` (sums in f64).
pub(super) struct BatchStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

pub(super) fn batch_stats(x2: &Tensor) -> Result<BatchStats, ZooError> {
    let packed = x2.apply_op1_no_bwd(&StatsOp)?.to_vec2::<f32>()?;
    let mut rows = packed.into_iter();
    match (rows.next(), rows.next()) {
        (Some(mean), Some(var)) => Ok(BatchStats { mean, var }),
        _ => Err(ZooError::Unsupported(
            "batch statistics: two rows expected".into(),
        )),
    }
}

/// Sums per channel over row chunks, in parallel, the chunks added in order.
fn channel_sums(x: &[f32], c: usize, value: impl Fn(usize, f32) -> f64 + Sync) -> Vec<f64> {
    let chunk = chunk_rows(c) * c;
    ordered_sum(x.len().div_ceil(chunk), c, |part| {
        let mut sums = vec![0f64; c];
        for row in x[part * chunk..((part + 1) * chunk).min(x.len())].chunks_exact(c) {
            for (ch, (s, &v)) in sums.iter_mut().zip(row).enumerate() {
                *s += value(ch, v);
            }
        }
        sums
    })
}

/// `[rows, C]` → `[2, C]`: mean, then biased variance (two passes, for precision).
struct StatsOp;

impl CustomOp1 for StatsOp {
    fn name(&self) -> &'static str {
        "batch-norm-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let &[rows, c] = l.shape().dims() else {
            candle_core::bail!("batch-norm-stats takes [rows, channels]");
        };
        let n = rows.max(1) as f64;
        let mean: Vec<f64> = channel_sums(x, c, |_, v| v as f64)
            .into_iter()
            .map(|s| s / n)
            .collect();
        let var = channel_sums(x, c, |ch, v| {
            let d = v as f64 - mean[ch];
            d * d
        });
        let out: Vec<f32> = mean
            .iter()
            .map(|&m| m as f32)
            .chain(var.iter().map(|&s| (s / n) as f32))
            .collect();
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// `act((x − μ)·rstd·γ + β)` with the batch's `μ`, `rstd`; trainable `γ`, `β`.
pub(super) struct BnActTrain {
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
    pub act: Activation,
}

impl CustomOp3 for BnActTrain {
    fn name(&self) -> &'static str {
        "batch-norm-act-train"
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
        let c = w.len();
        let scale: Vec<f32> = self.rstd.iter().zip(w).map(|(r, w)| r * w).collect();
        let shift: Vec<f32> = (0..c).map(|i| b[i] - self.mean[i] * scale[i]).collect();
        let y = match self.act {
            Activation::Identity => affine(x, &scale, &shift, |v| v),
            Activation::Relu => affine(x, &scale, &shift, |v| v.max(0.0)),
            Activation::Relu6 => affine(x, &scale, &shift, |v| v.clamp(0.0, 6.0)),
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let rows = x.dim(0)?;
        let weight_bias = Tensor::stack(&[weight, bias], 0)?;
        let kernel = BnActGrad {
            mean: self.mean.clone(),
            rstd: self.rstd.clone(),
            act: self.act,
        };
        let packed = x.apply_op3_no_bwd(&grad.contiguous()?, &weight_bias, &kernel)?;
        let dx = x
            .track_op()
            .then(|| packed.narrow(0, 0, rows))
            .transpose()?;
        let dgamma = packed.get(rows)?;
        let dbeta = packed.get(rows + 1)?;
        Ok((dx, Some(dgamma), Some(dbeta)))
    }
}

/// `act(x·scale + shift)` per channel, in parallel.
pub(super) fn affine(
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    act: impl Fn(f32) -> f32 + Sync,
) -> Vec<f32> {
    let c = scale.len().max(1);
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(chunk_rows(c) * c)
        .zip(x.par_chunks(chunk_rows(c) * c))
        .for_each(|(out, input)| {
            for (o_row, x_row) in out.chunks_exact_mut(c).zip(input.chunks_exact(c)) {
                for (((o, &v), &a), &b) in o_row.iter_mut().zip(x_row).zip(scale).zip(shift) {
                    *o = act(v * a + b);
                }
            }
        });
    y
}

/// The backward of [`BnActTrain`]: `(x, grad, [γ; β])` → `[rows + 2, C]`: `dx`, then `dγ`,
/// `dβ`. With `g'` the gradient through the activation (recomputed from `x`):
/// `dβ = Σ g'`, `dγ = Σ g'·x̂`, `dx = γ·rstd·(g' − dβ/M − x̂·dγ/M)`.
struct BnActGrad {
    mean: Vec<f32>,
    rstd: Vec<f32>,
    act: Activation,
}

impl BnActGrad {
    fn run(
        &self,
        x: &[f32],
        g: &[f32],
        w: &[f32],
        b: &[f32],
        deriv: impl Fn(f32) -> f32 + Sync,
    ) -> Vec<f32> {
        let c = w.len();
        let rows = x.len() / c.max(1);
        let chunk = chunk_rows(c) * c;
        // g' and x̂ of one value, recomputed in both passes instead of stored.
        let through = |ch: usize, v: f32, gv: f32| {
            let xhat = (v - self.mean[ch]) * self.rstd[ch];
            (gv * deriv(xhat * w[ch] + b[ch]), xhat)
        };
        let sums = ordered_sum(x.len().div_ceil(chunk), 2 * c, |part| {
            let span = part * chunk..((part + 1) * chunk).min(x.len());
            let mut acc = vec![0f32; 2 * c];
            for (row, g_row) in x[span.clone()].chunks_exact(c).zip(g[span].chunks_exact(c)) {
                for ch in 0..c {
                    let (gp, xhat) = through(ch, row[ch], g_row[ch]);
                    acc[ch] += gp * xhat;
                    acc[c + ch] += gp;
                }
            }
            acc
        });
        let (dgamma, dbeta) = sums.split_at(c);
        let n = rows.max(1) as f32;
        let mut out = vec![0f32; (rows + 2) * c];
        let (dx, tail) = out.split_at_mut(rows * c);
        dx.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .for_each(|(d, (xs, gs))| {
                for ((d_row, row), g_row) in d
                    .chunks_exact_mut(c)
                    .zip(xs.chunks_exact(c))
                    .zip(gs.chunks_exact(c))
                {
                    for ch in 0..c {
                        let (gp, xhat) = through(ch, row[ch], g_row[ch]);
                        d_row[ch] =
                            w[ch] * self.rstd[ch] * (gp - dbeta[ch] / n - xhat * dgamma[ch] / n);
                    }
                }
            });
        tail[..c].copy_from_slice(dgamma);
        tail[c..].copy_from_slice(dbeta);
        out
    }
}

impl CustomOp3 for BnActGrad {
    fn name(&self) -> &'static str {
        "batch-norm-act-train-grad"
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
        let (x, g, wb) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let c = wb.len() / 2;
        let (w, b) = wb.split_at(c);
        let out = match self.act {
            Activation::Identity => self.run(x, g, w, b, |_| 1.0),
            Activation::Relu => self.run(x, g, w, b, |p| if p > 0.0 { 1.0 } else { 0.0 }),
            Activation::Relu6 => {
                self.run(x, g, w, b, |p| if p > 0.0 && p < 6.0 { 1.0 } else { 0.0 })
            }
        };
        let rows = x.len() / c.max(1);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, c))))
    }
}
