//! The decoder's element-wise ops, differentiable: fused CPU kernels with analytic
//! backward passes (candle's fused RMSNorm, rope and softmax drop gradients silently), and
//! the composed equivalents for other devices.
//!
//! Each fused kernel is one pass forward and one backward where the composed ops make 5–10
//! passes over the activations each way.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};

use rayon::prelude::*;

use crate::zoo::cpu::exp::softmax_in_place;

use crate::zoo::fused::{
    balanced_task_len, contiguous_f32, norm_backward_rows, unpack_norm_grads, uses_fused_kernels,
};

/// RMSNorm over the last dimension, in f32: `x / sqrt(mean(x²) + eps) · weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    if uses_fused_kernels(&x) {
        return x
            .contiguous()?
            .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 });
    }
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(weight)
}

struct RmsNorm {
    eps: f32,
}

#[inline]
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "decoder-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let mut y = vec![0f32; x.len()];
        let task = balanced_task_len(x.len(), w.len());
        y.par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .for_each(|(y, x)| {
                for (row, out) in x.chunks_exact(w.len()).zip(y.chunks_exact_mut(w.len())) {
                    let r = inv_rms(row, self.eps);
                    for ((o, &v), &w) in out.iter_mut().zip(row).zip(w) {
                        *o = v * r * w;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // A frozen weight (LoRA, QLoRA) needs no gradient: the kernel then skips the
        // per-task sums of `dw` and the row stays zero.
        let weight_grad = weight.track_op();
        let packed = x.apply_op3_no_bwd(
            &grad.contiguous()?,
            weight,
            &RmsNormGrad {
                eps: self.eps,
                weight_grad,
            },
        )?;
        let (dx, mut params) = unpack_norm_grads(&packed, x, weight, 1)?;
        let dw = params.pop().filter(|_| weight_grad);
        Ok((Some(dx), dw))
    }
}

struct RmsNormGrad {
    eps: f32,
    weight_grad: bool,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "decoder-rms-norm-grad"
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
        let (x, g, w) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let h = w.len();
        let rows = x.len() / h;
        let mut out = vec![0f32; (rows + 1) * h];
        let (dx_all, dw) = out.split_at_mut(rows * h);
        norm_backward_rows((x, g), dx_all, h, dw, |x, g, dx| {
            self.rows_backward(x, g, w, dx)
        });
        Ok((CpuStorage::F32(out), Shape::from((rows + 1, h))))
    }
}

impl RmsNormGrad {
    /// dx of some rows into `dx_all`; returns their dw contribution (empty when the weight
    /// takes no gradient).
    fn rows_backward(&self, x: &[f32], g: &[f32], w: &[f32], dx_all: &mut [f32]) -> Vec<f32> {
        let h = w.len();
        let mut dw = if self.weight_grad {
            vec![0f32; h]
        } else {
            Vec::new()
        };
        for ((row, g_row), dx) in x
            .chunks_exact(h)
            .zip(g.chunks_exact(h))
            .zip(dx_all.chunks_exact_mut(h))
        {
            let r = inv_rms(row, self.eps);
            // dL/dx_j = r·g_j·w_j − x_j·r³·mean(g·w·x)
            let mean_gwx: f32 = (0..h).map(|i| g_row[i] * w[i] * row[i]).sum();
            for (i, d) in dw.iter_mut().enumerate() {
                *d += g_row[i] * row[i] * r;
            }
            let coef = r * r * r * mean_gwx / h as f32;
            for i in 0..h {
                dx[i] = r * g_row[i] * w[i] - row[i] * coef;
            }
        }
        dw
    }
}

/// Rotary embeddings in transformers' `rotate_half` convention on packed rows:
/// `x [N, heads, d]`, `cos`/`sin [N, d/2]` (each row's own position).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    if uses_fused_kernels(x) {
        return x.contiguous()?.apply_op3(cos, sin, Rope { inverse: false });
    }
    let d = x.dim(D::Minus1)?;
    let (x1, x2) = (
        x.narrow(D::Minus1, 0, d / 2)?,
        x.narrow(D::Minus1, d / 2, d / 2)?,
    );
    let (c, s) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
    let first = (x1.broadcast_mul(&c)? - x2.broadcast_mul(&s)?)?;
    let second = (x2.broadcast_mul(&c)? + x1.broadcast_mul(&s)?)?;
    Tensor::cat(&[first, second], D::Minus1)
}

/// `inverse` rotates by −θ: the backward of a rotation is its transpose.
struct Rope {
    inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "decoder-rope"
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
        let (x, cos, sin) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let (n, heads, d) = l1.shape().dims3()?;
        let half = d / 2;
        if cos.len() != n * half || sin.len() != n * half {
            candle_core::bail!("rope: cos/sin must be [{n}, {half}]");
        }
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        let width = heads * d;
        let task = balanced_task_len(x.len(), width);
        y.par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .enumerate()
            .for_each(|(index, (y, x))| {
                let first_row = index * (task / width.max(1));
                for (row, (xr, yr)) in x
                    .chunks_exact(width)
                    .zip(y.chunks_exact_mut(width))
                    .enumerate()
                {
                    let at = (first_row + row) * half;
                    let (c, s) = (&cos[at..][..half], &sin[at..][..half]);
                    for (xh, yh) in xr.chunks_exact(d).zip(yr.chunks_exact_mut(d)) {
                        let (x1, x2) = xh.split_at(half);
                        let (y1, y2) = yh.split_at_mut(half);
                        for i in 0..half {
                            let si = sign * s[i];
                            y1[i] = x1[i] * c[i] - x2[i] * si;
                            y2[i] = x2[i] * c[i] + x1[i] * si;
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inverse = Rope {
            inverse: !self.inverse,
        };
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &inverse)?;
        Ok((Some(dx), None, None))
    }
}

/// Which keys a query row may attend to. Keys are `0..key_len[b]` (right padding) and
/// query `t` sits at position `offset + t`, so the visible keys always form a prefix:
/// `min(offset + t + 1, key_len[b])` of them.
#[derive(Debug, Clone)]
pub struct CausalPrefix {
    pub key_len: Vec<usize>,
    pub offset: usize,
}

impl CausalPrefix {
    fn visible(&self, b: usize, t: usize) -> usize {
        (self.offset + t + 1).min(self.key_len[b])
    }
}

/// Softmax over the last dim of `scores [B, X, Tq, Tk]` with the causal + padding mask of
/// `mask`: masked keys get probability exactly 0 (as `f32::MIN` additive masks give).
pub fn masked_softmax(scores: &Tensor, mask: &CausalPrefix) -> candle_core::Result<Tensor> {
    let (b, _, tq, tk) = scores.dims4()?;
    if mask.key_len.len() != b || mask.key_len.iter().any(|&l| l > tk) {
        candle_core::bail!(
            "masked_softmax: key lengths {:?} do not fit [{b}, {tk}]",
            mask.key_len
        );
    }
    if uses_fused_kernels(scores) {
        return scores
            .contiguous()?
            .apply_op1(MaskedSoftmax { mask: mask.clone() });
    }
    let mut additive = vec![0f32; b * tq * tk];
    for bi in 0..b {
        for t in 0..tq {
            let visible = mask.visible(bi, t);
            let row = &mut additive[(bi * tq + t) * tk..][..tk];
            row[visible..].fill(f32::NEG_INFINITY);
        }
    }
    let additive = Tensor::from_vec(additive, (b, 1, tq, tk), scores.device())?;
    candle_nn::ops::softmax(&scores.broadcast_add(&additive)?, D::Minus1)
}

struct MaskedSoftmax {
    mask: CausalPrefix,
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "decoder-masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let scores = contiguous_f32(s, l)?;
        let (_, x, tq, tk) = l.shape().dims4()?;
        let mut y = vec![0f32; scores.len()];
        for (r, (row, out)) in scores
            .chunks_exact(tk)
            .zip(y.chunks_exact_mut(tk))
            .enumerate()
        {
            let visible = self.mask.visible(r / (x * tq), r % tq);
            let out = &mut out[..visible];
            out.copy_from_slice(&row[..visible]);
            softmax_in_place(out);
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

/// `dx = y · (g − Σ g·y)` per row (zero where y is, i.e. at masked keys).
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "decoder-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, g) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let tk = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut dx = vec![0f32; y.len()];
        for ((yr, gr), dr) in y
            .chunks_exact(tk)
            .zip(g.chunks_exact(tk))
            .zip(dx.chunks_exact_mut(tk))
        {
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((d, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                *d = yv * (gv - dot);
            }
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
