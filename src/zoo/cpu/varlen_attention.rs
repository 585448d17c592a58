//! The encoder's attention over a packed batch: each sequence's tokens attend to that
//! sequence's tokens only, read straight from the `[N, hidden]` projections, with no padding.
//!
//! The padded layout this replaces scattered q, k and v into zero-filled `[B, T, hidden]`
//! buffers, transposed each to `[B, heads, T, d]`, masked the padding and gathered the
//! context back: eleven copies per layer, and `B·T²` softmax entries where `Σ Tᵢ²` are real
//! (on Rotten Tomatoes batches, a third of them). Here each sequence and head multiplies
//! strided views of the projections with `gemm`, the softmax and the dropout run on one
//! `L × L` buffer per sequence, and the backward recomputes the probabilities instead of
//! keeping them (as the padded op did). Sequences run in parallel on the rayon pool.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::dropout::kept;
use super::gemm::{matmul, Threads, View, ViewMut};
use crate::zoo::fused::contiguous_f32;

/// One sequence's rows in the packed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub len: usize,
}

/// Sequences at most this long (the dropout key packs the key position in 20 bits).
const MAX_LEN: usize = 1 << 20;
const MAX_HEADS: usize = 1 << 12;

/// `dropout(softmax(q·kᵀ/√d))·v` per sequence and head; `q`, `k`, `v` are `[N, hidden]`
/// with heads side by side in the columns (as the projections write them), `spans` tile
/// `0..N` in order. Returns `[N, hidden]`. `dropout` is the attention dropout probability
/// in train mode and 0 otherwise.
pub fn varlen_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: &Arc<[Span]>,
    heads: usize,
    dropout: f32,
) -> candle_core::Result<Tensor> {
    let (n, hidden) = q.dims2()?;
    if heads == 0 || hidden % heads != 0 || heads >= MAX_HEADS {
        candle_core::bail!("attention: {hidden} columns do not split into {heads} heads");
    }
    let mut next = 0;
    for span in spans.iter() {
        if span.start != next || span.len >= MAX_LEN {
            candle_core::bail!("attention: spans must tile the packed rows in order");
        }
        next += span.len;
    }
    if next != n {
        candle_core::bail!("attention: spans cover {next} of {n} rows");
    }
    if !(0.0..1.0).contains(&dropout) {
        candle_core::bail!("attention dropout {dropout} is not in [0, 1)");
    }
    let op = VarlenAttention {
        spans: spans.clone(),
        heads,
        head_dim: hidden / heads,
        dropout,
        seed: rand::random(),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[derive(Clone)]
struct VarlenAttention {
    spans: Arc<[Span]>,
    heads: usize,
    head_dim: usize,
    dropout: f32,
    seed: u64,
}

/// Splits `[N, width]` rows into one mutable block per span.
fn split_rows<'a>(mut data: &'a mut [f32], spans: &[Span], width: usize) -> Vec<&'a mut [f32]> {
    let mut blocks = Vec::with_capacity(spans.len());
    for span in spans {
        let (block, rest) = std::mem::take(&mut data).split_at_mut(span.len * width);
        blocks.push(block);
        data = rest;
    }
    blocks
}

/// Row-wise softmax of an `l × l` matrix, in place.
fn softmax_rows(p: &mut [f32], l: usize) {
    for row in p.chunks_exact_mut(l) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for value in row.iter_mut() {
            *value = (*value - max).exp();
            sum += *value;
        }
        let inverse = 1.0 / sum;
        row.iter_mut().for_each(|value| *value *= inverse);
    }
}

impl VarlenAttention {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Head `h` of a span's rows (`[len, hidden]`) as a `[len, d]` view.
    fn head<'a>(&self, rows: &'a [f32], len: usize, h: usize) -> View<'a> {
        View {
            data: &rows[h * self.head_dim..],
            rows: len,
            cols: self.head_dim,
            row_stride: self.hidden(),
            col_stride: 1,
        }
    }

    fn head_mut<'a>(&self, rows: &'a mut [f32], len: usize, h: usize) -> ViewMut<'a> {
        ViewMut {
            data: &mut rows[h * self.head_dim..],
            rows: len,
            cols: self.head_dim,
            row_stride: self.hidden(),
        }
    }

    /// The rows of `span` in a packed `[N, hidden]` buffer.
    fn rows<'a>(&self, data: &'a [f32], span: Span) -> &'a [f32] {
        &data[span.start * self.hidden()..(span.start + span.len) * self.hidden()]
    }

    /// The dropout multiplier (0 or 1/(1−p)) of query row `row` (packed index), head `h`,
    /// key `j`: a pure function of the call's seed, so the backward sees the forward's mask.
    #[inline]
    fn keep_scale(&self, row: usize, h: usize, j: usize) -> f32 {
        let key = ((row as u64) << 32) | ((h as u64) << 20) | j as u64;
        if kept(self.seed, key, self.dropout) {
            1.0 / (1.0 - self.dropout)
        } else {
            0.0
        }
    }

    /// Softmax probabilities (before dropout) of head `h` of `span` into `probs` (`len²`).
    fn probabilities(
        &self,
        (q, k): (&[f32], &[f32]),
        span: Span,
        h: usize,
        probs: &mut [f32],
    ) -> candle_core::Result<()> {
        let (rows_q, rows_k) = (self.rows(q, span), self.rows(k, span));
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        matmul(
            ViewMut::rows(probs, span.len, span.len),
            self.head(rows_q, span.len, h),
            self.head(rows_k, span.len, h).t(),
            scale,
            false,
            Threads::Single,
        )?;
        softmax_rows(probs, span.len);
        Ok(())
    }

    /// Multiplies `values` (`len²`, row `i` = query `span.start + i`) by head `h`'s mask.
    fn apply_mask(&self, values: &mut [f32], span: Span, h: usize) {
        for (i, row) in values.chunks_exact_mut(span.len).enumerate() {
            for (j, value) in row.iter_mut().enumerate() {
                *value *= self.keep_scale(span.start + i, h, j);
            }
        }
    }

    fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> candle_core::Result<Vec<f32>> {
        let mut out = vec![0f32; q.len()];
        let blocks = split_rows(&mut out, &self.spans, self.hidden());
        blocks
            .into_par_iter()
            .zip(self.spans.par_iter())
            .try_for_each(|(block, &span)| {
                let mut probs = vec![0f32; span.len * span.len];
                for h in 0..self.heads {
                    self.probabilities((q, k), span, h, &mut probs)?;
                    if self.dropout > 0.0 {
                        self.apply_mask(&mut probs, span, h);
                    }
                    matmul(
                        self.head_mut(block, span.len, h),
                        View::rows(&probs, span.len, span.len),
                        self.head(self.rows(v, span), span.len, h),
                        1.0,
                        false,
                        Threads::Single,
                    )?;
                }
                Ok::<(), candle_core::Error>(())
            })?;
        Ok(out)
    }

    /// `[dq; dk; dv]` stacked as `[3N, hidden]`, from the output gradient `g`.
    fn backward(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        g: &[f32],
    ) -> candle_core::Result<Vec<f32>> {
        let size = q.len();
        let mut packed = vec![0f32; 3 * size];
        let (dq, rest) = packed.split_at_mut(size);
        let (dk, dv) = rest.split_at_mut(size);
        let hidden = self.hidden();
        let blocks = split_rows(dq, &self.spans, hidden)
            .into_iter()
            .zip(split_rows(dk, &self.spans, hidden))
            .zip(split_rows(dv, &self.spans, hidden))
            .collect::<Vec<_>>();
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        blocks
            .into_par_iter()
            .zip(self.spans.par_iter())
            .try_for_each(|(((dq, dk), dv), &span)| {
                let len = span.len;
                let mut probs = vec![0f32; len * len];
                let mut d_probs = vec![0f32; len * len];
                let mut dropped = if self.dropout > 0.0 {
                    vec![0f32; len * len]
                } else {
                    Vec::new()
                };
                let (q_rows, k_rows) = (self.rows(q, span), self.rows(k, span));
                let (v_rows, g_rows) = (self.rows(v, span), self.rows(g, span));
                for h in 0..self.heads {
                    self.probabilities((q, k), span, h, &mut probs)?;
                    // d(dropped probs) = g·vᵀ.
                    matmul(
                        ViewMut::rows(&mut d_probs, len, len),
                        self.head(g_rows, len, h),
                        self.head(v_rows, len, h).t(),
                        1.0,
                        false,
                        Threads::Single,
                    )?;
                    let used = if self.dropout > 0.0 {
                        dropped.copy_from_slice(&probs);
                        self.apply_mask(&mut dropped, span, h);
                        self.apply_mask(&mut d_probs, span, h);
                        &dropped
                    } else {
                        &probs
                    };
                    // dv = (dropped probs)ᵀ·g.
                    matmul(
                        self.head_mut(dv, len, h),
                        View::rows(used, len, len).t(),
                        self.head(g_rows, len, h),
                        1.0,
                        false,
                        Threads::Single,
                    )?;
                    // Softmax backward: dS = P ⊙ (dP − Σⱼ dPⱼ·Pⱼ), in place of dP.
                    for (dp_row, p_row) in
                        d_probs.chunks_exact_mut(len).zip(probs.chunks_exact(len))
                    {
                        let dot: f32 = dp_row.iter().zip(p_row).map(|(a, b)| a * b).sum();
                        for (dp, &p) in dp_row.iter_mut().zip(p_row) {
                            *dp = p * (*dp - dot);
                        }
                    }
                    let d_scores = View::rows(&d_probs, len, len);
                    matmul(
                        self.head_mut(dq, len, h),
                        d_scores,
                        self.head(k_rows, len, h),
                        scale,
                        false,
                        Threads::Single,
                    )?;
                    matmul(
                        self.head_mut(dk, len, h),
                        d_scores.t(),
                        self.head(q_rows, len, h),
                        scale,
                        false,
                        Threads::Single,
                    )?;
                }
                Ok::<(), candle_core::Error>(())
            })?;
        Ok(packed)
    }
}

impl CustomOp3 for VarlenAttention {
    fn name(&self) -> &'static str {
        "varlen-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = self.forward(
            contiguous_f32(qs, ql)?,
            contiguous_f32(ks, kl)?,
            contiguous_f32(vs, vl)?,
        )?;
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = VarlenAttentionGrad {
            attention: self.clone(),
            grad: grad.detach().contiguous()?,
        };
        let packed = q.detach().apply_op3_no_bwd(&k.detach(), &v.detach(), &op)?;
        let n = q.dim(0)?;
        Ok((
            Some(packed.narrow(0, 0, n)?),
            Some(packed.narrow(0, n, n)?),
            Some(packed.narrow(0, 2 * n, n)?),
        ))
    }
}

/// The backward as an op over (q, k, v), the output gradient carried along.
struct VarlenAttentionGrad {
    attention: VarlenAttention,
    grad: Tensor,
}

impl CustomOp3 for VarlenAttentionGrad {
    fn name(&self) -> &'static str {
        "varlen-attention-grad"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (storage, layout) = self.grad.storage_and_layout();
        let candle_core::Storage::Cpu(grad) = &*storage else {
            candle_core::bail!("varlen attention: gradient is not on the cpu");
        };
        let packed = self.attention.backward(
            (
                contiguous_f32(qs, ql)?,
                contiguous_f32(ks, kl)?,
                contiguous_f32(vs, vl)?,
            ),
            contiguous_f32(grad, layout)?,
        )?;
        let (n, hidden) = ql.shape().dims2()?;
        Ok((CpuStorage::F32(packed), Shape::from((3 * n, hidden))))
    }
}

#[cfg(test)]
#[path = "varlen_attention_tests.rs"]
mod tests;
