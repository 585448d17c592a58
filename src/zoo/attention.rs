//! The encoder's attention core, `dropout(softmax(q·kᵀ + mask))·v`, as one op that
//! recomputes the probabilities in its backward pass instead of keeping them.
//!
//! Composed from candle ops, autograd keeps every `[B, H, T, T]` intermediate of every
//! layer alive until the backward pass: the scores, the masked scores, three tensors of the
//! composed softmax, the dropout mask and its product. At the 384-token windows of extractive
//! QA that is ~7 × 7 MB per example per layer, which made QA training need 3× the memory of
//! transformers' `Trainer`. This op keeps only q, k, v and the output (`[B, H, T, d]`); the
//! backward recomputes one batch element's probabilities at a time (one extra q·kᵀ, a few
//! percent of the step), and the dropout mask comes from a counter-based hash of a per-call
//! seed, so the backward regenerates exactly the mask the forward used without storing it.
//!
//! CPU f32 only, like the other fused kernels; other devices keep the composed ops.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Shape, Tensor, D};

use super::fused::{contiguous_f32, uses_fused_kernels};
use super::ZooError;

/// `dropout(softmax(q·kᵀ + mask), p)·v` over `[B, H, T, d]` inputs (q already scaled by
/// 1/√d), `mask` additive `[B, 1, 1, T]`. `dropout` is the attention dropout probability in
/// train mode and 0 otherwise.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    dropout: f64,
) -> Result<Tensor, ZooError> {
    if !uses_fused_kernels(q) {
        return composed_attention(q, k, v, mask, dropout);
    }
    let op = FusedAttention {
        mask: mask.detach().contiguous()?,
        dropout: dropout as f32,
        seed: rand::random(),
        chunk_floats: CHUNK_FLOATS,
    };
    Ok(q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

/// The same computation from candle ops, for devices without the fused kernel.
fn composed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    dropout: f64,
) -> Result<Tensor, ZooError> {
    let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    let probs = super::bert::dropout(&probs, dropout, dropout > 0.0)?;
    Ok(probs.matmul(v)?)
}

/// Bounds the `[chunk, H, T, T]` temporaries of one chunk of batch elements to ~16 MB.
const CHUNK_FLOATS: usize = 4 << 20;

struct FusedAttention {
    mask: Tensor,
    dropout: f32,
    seed: u64,
    /// Probabilities computed at once (whole batch elements, at least one).
    chunk_floats: usize,
}

/// SplitMix64's finaliser: a well-mixed 64-bit value for each counter.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The dropout multiplier (0 or 1/(1−p)) of every probability in batch elements
/// `start..start + len`, as `[len, H, T, T]`: a pure function of the seed and each entry's
/// flat index, so forward and backward agree however they are chunked.
pub(crate) fn dropout_scale(
    seed: u64,
    p: f32,
    (start, len): (usize, usize),
    (heads, t): (usize, usize),
    device: &Device,
) -> candle_core::Result<Tensor> {
    let per_element = heads * t * t;
    let keep = 1.0 / (1.0 - p);
    let first = (start * per_element) as u64;
    let values: Vec<f32> = (0..(len * per_element) as u64)
        .map(|i| {
            let bits = mix(seed ^ mix(first + i)) >> 40;
            let uniform = bits as f32 / (1u64 << 24) as f32;
            if uniform < p {
                0.0
            } else {
                keep
            }
        })
        .collect();
    Tensor::from_vec(values, (len, heads, t, t), device)
}

impl FusedAttention {
    /// Batch elements per chunk.
    fn chunk_len(&self, heads: usize, t: usize) -> usize {
        (self.chunk_floats / (heads * t * t).max(1)).max(1)
    }

    /// This call's dropout multipliers for batch elements `start..start + len`; `None`
    /// without dropout.
    fn dropout_mask(
        &self,
        elements: (usize, usize),
        dims: (usize, usize),
        device: &Device,
    ) -> candle_core::Result<Option<Tensor>> {
        if self.dropout > 0.0 {
            dropout_scale(self.seed, self.dropout, elements, dims, device).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Softmax probabilities (before dropout) for batch elements `start..start + len`.
    fn probs(
        &self,
        q: &Tensor,
        k: &Tensor,
        start: usize,
        len: usize,
    ) -> candle_core::Result<Tensor> {
        let scores = q
            .narrow(0, start, len)?
            .matmul(&k.narrow(0, start, len)?.t()?)?
            .broadcast_add(&self.mask.narrow(0, start, len)?)?;
        candle_nn::ops::softmax_last_dim(&scores)
    }

    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        let (b, heads, t, _) = q.dims4()?;
        let chunk = self.chunk_len(heads, t);
        let mut outputs = Vec::with_capacity(b.div_ceil(chunk));
        for start in (0..b).step_by(chunk) {
            let len = chunk.min(b - start);
            let mut probs = self.probs(q, k, start, len)?;
            if let Some(scale) = self.dropout_mask((start, len), (heads, t), q.device())? {
                probs = probs.mul(&scale)?;
            }
            outputs.push(probs.matmul(&v.narrow(0, start, len)?)?);
        }
        Tensor::cat(&outputs, 0)
    }

    /// Gradients of q, k, v from the output's gradient, recomputing the probabilities.
    fn backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (b, heads, t, _) = q.dims4()?;
        let chunk = self.chunk_len(heads, t);
        let (mut dq, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
        for start in (0..b).step_by(chunk) {
            let len = chunk.min(b - start);
            let probs = self.probs(q, k, start, len)?;
            let (q_c, k_c, v_c) = (
                q.narrow(0, start, len)?,
                k.narrow(0, start, len)?,
                v.narrow(0, start, len)?,
            );
            let grad_c = grad.narrow(0, start, len)?;
            // d(probs after dropout) = grad·vᵀ; dropout scales it by the same mask.
            let mut d_probs = grad_c.matmul(&v_c.t()?)?;
            let dropped =
                if let Some(scale) = self.dropout_mask((start, len), (heads, t), q.device())? {
                    d_probs = d_probs.mul(&scale)?;
                    probs.mul(&scale)?
                } else {
                    probs.clone()
                };
            dv.push(dropped.t()?.matmul(&grad_c)?);
            // Softmax backward: dS = P ⊙ (dP − Σⱼ dPⱼ·Pⱼ).
            let row_dot = (&d_probs * &probs)?.sum_keepdim(D::Minus1)?;
            let d_scores = (d_probs.broadcast_sub(&row_dot)? * &probs)?;
            dq.push(d_scores.matmul(&k_c)?);
            dk.push(d_scores.t()?.matmul(&q_c)?);
        }
        Ok((
            Tensor::cat(&dq, 0)?,
            Tensor::cat(&dk, 0)?,
            Tensor::cat(&dv, 0)?,
        ))
    }
}

/// A CPU tensor holding a copy of a contiguous storage's data.
fn to_tensor(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    Tensor::from_slice(
        contiguous_f32(storage, layout)?,
        layout.shape(),
        &Device::Cpu,
    )
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            to_tensor(q, q_layout)?,
            to_tensor(k, k_layout)?,
            to_tensor(v, v_layout)?,
        );
        let out = self.forward(&q, &k, &v)?;
        let shape = out.shape().clone();
        Ok((CpuStorage::F32(out.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = self.backward(&q.detach(), &k.detach(), &v.detach(), &grad.detach())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
