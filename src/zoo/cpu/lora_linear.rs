//! A LoRA layer over a frozen dense base, `x·Wᵀ (+ b) + s·(x·Aᵀ)·Bᵀ`, as one op.
//!
//! Built from the linear ops a LoRA layer is four graph nodes (base product, down-projection,
//! scale, up-projection added to the base output), and candle's backward gives each node's
//! input its own gradient tensor: a zero-filled buffer plus an addition for every
//! contribution, on one thread (`CANDLE_NUM_THREADS=1`, see `runtime`), so the layer's
//! input collects two `[rows, in]` gradients (base and adapter) that are then summed again.
//! Here the forward writes the base and the adapter into one output, and the backward writes
//! the input gradient once, the adapter's product accumulated into the base's (`g·W + d·A`),
//! with `dA` and `dB` beside it in the same buffer. The low-rank activations `s·x·Aᵀ` are
//! recomputed in the backward instead of kept: `rows × in × r` multiply-adds, under 1.5 % of
//! the layer's at SmolLM2's sizes with rank 8.
//!
//! Only for a frozen f32 base without LoRA dropout (the layer picks it; dropout and
//! quantized bases keep the composed ops).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::gemm::{matmul, Threads, View, ViewMut};
use crate::zoo::fused::{contiguous_f32, with_cpu_values};

/// `x [rows, in] · weightᵀ (+ bias) + scale · (x · aᵀ) · bᵀ` → `[rows, out]`, with
/// `weight [out, in]` and `bias [out]` frozen, `a [r, in]` and `b [out, r]` the adapter.
/// CPU f32 only (the caller checks [`crate::zoo::fused::uses_fused_kernels`]).
pub fn lora_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    (a, b): (&Tensor, &Tensor),
    scale: f64,
) -> candle_core::Result<Tensor> {
    let op = LoraLinear {
        base: FrozenBase {
            weight: weight.detach().contiguous()?,
            bias: bias.map(|b| b.detach().contiguous()).transpose()?,
        },
        scale: scale as f32,
    };
    x.contiguous()?
        .apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}

struct FrozenBase {
    weight: Tensor,
    bias: Option<Tensor>,
}

struct LoraLinear {
    base: FrozenBase,
    scale: f32,
}

/// The f32 values of a contiguous CPU tensor, for as long as `f` runs.
fn with_values<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    with_cpu_values(t, "lora-linear", f)
}

/// `(rows, in, out, rank)`, checked across the operands.
fn dims(x: &Layout, a: &Layout, b: &Layout, w: &Tensor) -> candle_core::Result<[usize; 4]> {
    let (rows, in_dim) = x.shape().dims2()?;
    let (rank, a_in) = a.shape().dims2()?;
    let (out, b_rank) = b.shape().dims2()?;
    let (w_out, w_in) = w.dims2()?;
    if a_in != in_dim || w_in != in_dim || w_out != out || b_rank != rank {
        candle_core::bail!(
            "lora-linear: x [{rows}, {in_dim}], A [{rank}, {a_in}], B [{out}, {b_rank}], W [{w_out}, {w_in}]"
        );
    }
    Ok([rows, in_dim, out, rank])
}

/// `scale · x · aᵀ`, the adapter's low-rank activations `[rows, rank]`.
fn low_rank(
    x: &[f32],
    a: &[f32],
    [rows, in_dim, _, rank]: [usize; 4],
    scale: f32,
) -> candle_core::Result<Vec<f32>> {
    let mut low = vec![0f32; rows * rank];
    matmul(
        ViewMut::rows(&mut low, rows, rank),
        View::rows(x, rows, in_dim),
        View::rows(a, rank, in_dim).t(),
        scale,
        false,
        Threads::Pool,
    )?;
    Ok(low)
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "fused-lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims @ [rows, in_dim, out, rank] = dims(xl, al, bl, &self.base.weight)?;
        let (x, a, b) = (
            contiguous_f32(xs, xl)?,
            contiguous_f32(as_, al)?,
            contiguous_f32(bs, bl)?,
        );
        let mut y = match &self.base.bias {
            Some(bias) => with_values(bias, |bias| {
                if bias.len() != out {
                    candle_core::bail!("lora-linear: bias of {} for {out} outputs", bias.len());
                }
                Ok(bias.repeat(rows))
            })?,
            None => vec![0f32; rows * out],
        };
        with_values(&self.base.weight, |w| {
            matmul(
                ViewMut::rows(&mut y, rows, out),
                View::rows(x, rows, in_dim),
                View::rows(w, out, in_dim).t(),
                1.0,
                self.base.bias.is_some(),
                Threads::Pool,
            )
        })?;
        let low = low_rank(x, a, dims, self.scale)?;
        matmul(
            ViewMut::rows(&mut y, rows, out),
            View::rows(&low, rows, rank),
            View::rows(b, out, rank).t(),
            1.0,
            true,
            Threads::Pool,
        )?;
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [rows, in_dim, out, rank] =
            dims(x.layout(), a.layout(), b.layout(), &self.base.weight)?;
        let grad_op = LoraLinearGrad {
            weight: self.base.weight.clone(),
            b: b.detach(),
            scale: self.scale,
            input_grad: x.track_op(),
        };
        let packed = grad.contiguous()?.apply_op3_no_bwd(x, a, &grad_op)?;
        // [dx | dA | dB], flat; each part a contiguous view of the one buffer.
        let dx_len = if grad_op.input_grad { rows * in_dim } else { 0 };
        let dx = grad_op
            .input_grad
            .then(|| packed.narrow(0, 0, dx_len)?.reshape((rows, in_dim)))
            .transpose()?;
        let da = packed
            .narrow(0, dx_len, rank * in_dim)?
            .reshape((rank, in_dim))?;
        let db = packed
            .narrow(0, dx_len + rank * in_dim, out * rank)?
            .reshape((out, rank))?;
        Ok((dx, Some(da), Some(db)))
    }
}

/// The backward of [`LoraLinear`] on `(g, x, a)`: `[dx | dA | dB]` flat, `dx` left out
/// when the input takes no gradient.
struct LoraLinearGrad {
    weight: Tensor,
    b: Tensor,
    scale: f32,
    input_grad: bool,
}

impl CustomOp3 for LoraLinearGrad {
    fn name(&self) -> &'static str {
        "fused-lora-linear-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims @ [rows, in_dim, out, rank] = dims(xl, al, self.b.layout(), &self.weight)?;
        let (g, x, a) = (
            contiguous_f32(gs, gl)?,
            contiguous_f32(xs, xl)?,
            contiguous_f32(as_, al)?,
        );
        // d(low) = s · g · B, the gradient reaching the down-projection's output.
        let mut d_low = vec![0f32; rows * rank];
        with_values(&self.b, |b| {
            matmul(
                ViewMut::rows(&mut d_low, rows, rank),
                View::rows(g, rows, out),
                View::rows(b, out, rank),
                self.scale,
                false,
                Threads::Pool,
            )
        })?;
        let dx_len = if self.input_grad { rows * in_dim } else { 0 };
        let mut packed = vec![0f32; dx_len + rank * in_dim + out * rank];
        let (dx, rest) = packed.split_at_mut(dx_len);
        let (da, db) = rest.split_at_mut(rank * in_dim);
        if self.input_grad {
            with_values(&self.weight, |w| {
                matmul(
                    ViewMut::rows(dx, rows, in_dim),
                    View::rows(g, rows, out),
                    View::rows(w, out, in_dim),
                    1.0,
                    false,
                    Threads::Pool,
                )
            })?;
            matmul(
                ViewMut::rows(dx, rows, in_dim),
                View::rows(&d_low, rows, rank),
                View::rows(a, rank, in_dim),
                1.0,
                true,
                Threads::Pool,
            )?;
        }
        // dA = d(low)ᵀ · x; dB = gᵀ · (s · x · Aᵀ).
        matmul(
            ViewMut::rows(da, rank, in_dim),
            View::rows(&d_low, rows, rank).t(),
            View::rows(x, rows, in_dim),
            1.0,
            false,
            Threads::Pool,
        )?;
        let low = low_rank(x, a, dims, self.scale)?;
        matmul(
            ViewMut::rows(db, out, rank),
            View::rows(g, rows, out).t(),
            View::rows(&low, rows, rank),
            1.0,
            false,
            Threads::Pool,
        )?;
        let len = packed.len();
        Ok((CpuStorage::F32(packed), Shape::from(len)))
    }
}

#[cfg(test)]
#[path = "lora_linear_tests.rs"]
mod tests;
