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
use super::exp::softmax_in_place;
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

/// The shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention: query head `h` reads key/value head
    /// `h / (heads / kv_heads)`, as transformers' `repeat_kv` pairs them).
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The factor on q·kᵀ (1/√d, or 1 where the queries already carry it).
    pub scale: f32,
    /// Each query sees only keys at or before its own position (decoders).
    pub causal: bool,
    /// Attention dropout probability in train mode, 0 otherwise.
    pub dropout: f32,
}

impl AttentionSpec {
    /// Bidirectional multi-head attention with the usual 1/√d scale (encoders).
    pub fn encoder(hidden: usize, heads: usize, dropout: f32) -> Self {
        let head_dim = hidden / heads.max(1);
        Self {
            heads,
            kv_heads: heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            causal: false,
            dropout,
        }
    }
}

/// `dropout(softmax(scale·q·kᵀ))·v` per sequence and head; `q` is `[N, heads·d]` and `k`,
/// `v` are `[N, kv_heads·d]`, heads side by side in the columns (as the projections write
/// them); `spans` tile `0..N` in order. Returns `[N, heads·d]`.
pub fn varlen_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: &Arc<[Span]>,
    spec: AttentionSpec,
) -> candle_core::Result<Tensor> {
    let (n, hidden) = q.dims2()?;
    let AttentionSpec {
        heads,
        kv_heads,
        head_dim,
        dropout,
        ..
    } = spec;
    if heads == 0
        || kv_heads == 0
        || heads % kv_heads != 0
        || heads >= MAX_HEADS
        || hidden != heads * head_dim
        || k.dims2()? != (n, kv_heads * head_dim)
        || v.dims2()? != (n, kv_heads * head_dim)
    {
        candle_core::bail!(
            "attention: q [{n}, {hidden}], k {:?}, v {:?} do not fit {heads} query and {kv_heads} key/value heads of {head_dim}",
            k.dims(),
            v.dims()
        );
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
        spec,
        seed: super::dropout::next_seed(),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[derive(Clone)]
struct VarlenAttention {
    spans: Arc<[Span]>,
    spec: AttentionSpec,
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

/// Row-wise softmax of an `l × l` matrix, in place; `causal` zeroes each row's entries
/// after its diagonal (their scores are never read). Compiled for AVX2 as well (see
/// `Cargo.toml`).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn softmax_rows(p: &mut [f32], l: usize, causal: bool) {
    for (i, row) in p.chunks_exact_mut(l).enumerate() {
        let (seen, future) = row.split_at_mut(if causal { i + 1 } else { l });
        future.fill(0.0);
        softmax_in_place(seen);
    }
}

/// `row[j] ·= mask(first_key | j) · scale` (see `VarlenAttention::keep_scale`), compiled for
/// AVX2 as well (see `Cargo.toml`).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn mask_row(row: &mut [f32], (seed, first_key, p): (u64, u64, f32), scale: f32) {
    for (j, value) in row.iter_mut().enumerate() {
        *value *= if kept(seed, first_key | j as u64, p) {
            scale
        } else {
            0.0
        };
    }
}

/// Which of the packed inputs a buffer holds: queries are `heads` wide, keys and values
/// `kv_heads`.
#[derive(Clone, Copy)]
enum Width {
    Query,
    KeyValue,
}

impl VarlenAttention {
    fn width(&self, which: Width) -> usize {
        let heads = match which {
            Width::Query => self.spec.heads,
            Width::KeyValue => self.spec.kv_heads,
        };
        heads * self.spec.head_dim
    }

    /// The key/value head query head `h` reads.
    fn kv_head(&self, h: usize) -> usize {
        h / (self.spec.heads / self.spec.kv_heads)
    }

    /// Head `h` of a span's rows (`[len, width]`) as a `[len, d]` view.
    fn head<'a>(&self, rows: &'a [f32], len: usize, h: usize, which: Width) -> View<'a> {
        View {
            data: &rows[h * self.spec.head_dim..],
            rows: len,
            cols: self.spec.head_dim,
            row_stride: self.width(which),
            col_stride: 1,
        }
    }

    fn head_mut<'a>(&self, rows: &'a mut [f32], len: usize, h: usize, which: Width) -> ViewMut<'a> {
        ViewMut {
            data: &mut rows[h * self.spec.head_dim..],
            rows: len,
            cols: self.spec.head_dim,
            row_stride: self.width(which),
        }
    }

    /// The rows of `span` in a packed `[N, width]` buffer.
    fn rows<'a>(&self, data: &'a [f32], span: Span, which: Width) -> &'a [f32] {
        let width = self.width(which);
        &data[span.start * width..(span.start + span.len) * width]
    }

    /// The first mask key of query row `row` (packed index), head `h`: key `j` adds `j`.
    fn mask_key(row: usize, h: usize) -> u64 {
        ((row as u64) << 32) | ((h as u64) << 20)
    }

    /// The dropout multiplier (0 or 1/(1−p)) of query row `row` (packed index), head `h`,
    /// key `j`: a pure function of the call's seed, so the backward sees the forward's mask.
    #[cfg(test)]
    fn keep_scale(&self, row: usize, h: usize, j: usize) -> f32 {
        if kept(
            self.seed,
            Self::mask_key(row, h) | j as u64,
            self.spec.dropout,
        ) {
            1.0 / (1.0 - self.spec.dropout)
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
        let rows_q = self.rows(q, span, Width::Query);
        let rows_k = self.rows(k, span, Width::KeyValue);
        matmul(
            ViewMut::rows(probs, span.len, span.len),
            self.head(rows_q, span.len, h, Width::Query),
            self.head(rows_k, span.len, self.kv_head(h), Width::KeyValue)
                .t(),
            self.spec.scale,
            false,
            Threads::Single,
        )?;
        softmax_rows(probs, span.len, self.spec.causal);
        Ok(())
    }

    /// Multiplies `values` (`len²`, row `i` = query `span.start + i`) by head `h`'s mask.
    fn apply_mask(&self, values: &mut [f32], span: Span, h: usize) {
        let p = self.spec.dropout;
        for (i, row) in values.chunks_exact_mut(span.len).enumerate() {
            let first_key = Self::mask_key(span.start + i, h);
            mask_row(row, (self.seed, first_key, p), 1.0 / (1.0 - p));
        }
    }

    fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> candle_core::Result<Vec<f32>> {
        let mut out = vec![0f32; q.len()];
        let blocks = split_rows(&mut out, &self.spans, self.width(Width::Query));
        blocks
            .into_par_iter()
            .zip(self.spans.par_iter())
            .try_for_each(|(block, &span)| {
                let mut probs = vec![0f32; span.len * span.len];
                let v_rows = self.rows(v, span, Width::KeyValue);
                for h in 0..self.spec.heads {
                    self.probabilities((q, k), span, h, &mut probs)?;
                    if self.spec.dropout > 0.0 {
                        self.apply_mask(&mut probs, span, h);
                    }
                    matmul(
                        self.head_mut(block, span.len, h, Width::Query),
                        View::rows(&probs, span.len, span.len),
                        self.head(v_rows, span.len, self.kv_head(h), Width::KeyValue),
                        1.0,
                        false,
                        Threads::Single,
                    )?;
                }
                Ok::<(), candle_core::Error>(())
            })?;
        Ok(out)
    }

    /// `dq`, `dk`, `dv` flattened one after the other, from the output gradient `g`.
    fn backward(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        g: &[f32],
    ) -> candle_core::Result<Vec<f32>> {
        let mut packed = vec![0f32; q.len() + 2 * k.len()];
        let (dq, rest) = packed.split_at_mut(q.len());
        let (dk, dv) = rest.split_at_mut(k.len());
        let (wq, wkv) = (self.width(Width::Query), self.width(Width::KeyValue));
        let blocks = split_rows(dq, &self.spans, wq)
            .into_iter()
            .zip(split_rows(dk, &self.spans, wkv))
            .zip(split_rows(dv, &self.spans, wkv))
            .collect::<Vec<_>>();
        blocks
            .into_par_iter()
            .zip(self.spans.par_iter())
            .try_for_each(|(((dq, dk), dv), &span)| {
                self.span_backward((q, k, v), g, span, (dq, dk, dv))
            })?;
        Ok(packed)
    }

    /// One sequence's gradients, head by head, into its rows of dq, dk, dv.
    fn span_backward(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        g: &[f32],
        span: Span,
        (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    ) -> candle_core::Result<()> {
        let len = span.len;
        let dropout = self.spec.dropout > 0.0;
        let mut probs = vec![0f32; len * len];
        let mut d_probs = vec![0f32; len * len];
        let mut dropped = if dropout {
            vec![0f32; len * len]
        } else {
            Vec::new()
        };
        let (q_rows, g_rows) = (
            self.rows(q, span, Width::Query),
            self.rows(g, span, Width::Query),
        );
        let k_rows = self.rows(k, span, Width::KeyValue);
        let v_rows = self.rows(v, span, Width::KeyValue);
        let group = self.spec.heads / self.spec.kv_heads;
        for h in 0..self.spec.heads {
            let kv = self.kv_head(h);
            // The first query head of a group writes its key/value head's gradient, the
            // others add to it.
            let accumulate = h % group != 0;
            self.probabilities((q, k), span, h, &mut probs)?;
            // d(dropped probs) = g·vᵀ.
            matmul(
                ViewMut::rows(&mut d_probs, len, len),
                self.head(g_rows, len, h, Width::Query),
                self.head(v_rows, len, kv, Width::KeyValue).t(),
                1.0,
                false,
                Threads::Single,
            )?;
            let used = if dropout {
                dropped.copy_from_slice(&probs);
                self.apply_mask(&mut dropped, span, h);
                self.apply_mask(&mut d_probs, span, h);
                &dropped
            } else {
                &probs
            };
            // dv = (dropped probs)ᵀ·g.
            matmul(
                self.head_mut(dv, len, kv, Width::KeyValue),
                View::rows(used, len, len).t(),
                self.head(g_rows, len, h, Width::Query),
                1.0,
                accumulate,
                Threads::Single,
            )?;
            // Softmax backward: dS = P ⊙ (dP − Σⱼ dPⱼ·Pⱼ), in place of dP (masked entries
            // have P = 0, so their dS is 0).
            for (dp_row, p_row) in d_probs.chunks_exact_mut(len).zip(probs.chunks_exact(len)) {
                let dot: f32 = dp_row.iter().zip(p_row).map(|(a, b)| a * b).sum();
                for (dp, &p) in dp_row.iter_mut().zip(p_row) {
                    *dp = p * (*dp - dot);
                }
            }
            let d_scores = View::rows(&d_probs, len, len);
            matmul(
                self.head_mut(dq, len, h, Width::Query),
                d_scores,
                self.head(k_rows, len, kv, Width::KeyValue),
                self.spec.scale,
                false,
                Threads::Single,
            )?;
            matmul(
                self.head_mut(dk, len, kv, Width::KeyValue),
                d_scores.t(),
                self.head(q_rows, len, h, Width::Query),
                self.spec.scale,
                accumulate,
                Threads::Single,
            )?;
        }
        Ok(())
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
        let (nq, nkv) = (q.elem_count(), k.elem_count());
        Ok((
            Some(packed.narrow(0, 0, nq)?.reshape(q.shape())?),
            Some(packed.narrow(0, nq, nkv)?.reshape(k.shape())?),
            Some(packed.narrow(0, nq + nkv, nkv)?.reshape(v.shape())?),
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
        let len = packed.len();
        Ok((CpuStorage::F32(packed), Shape::from(len)))
    }
}

#[cfg(test)]
#[path = "varlen_attention_tests.rs"]
mod tests;
