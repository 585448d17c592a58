//! The gated MLP's activation, `silu(gate) · up`, as one op with an analytic backward.
//!
//! Composed from candle ops it is a SiLU and a product forward, and backward candle's SiLU
//! rule (negate, exp, add, reciprocal, three products) plus the product's two: about ten
//! passes over `[tokens, intermediate]` tensors per layer, each on one thread while the
//! other core waits (`CANDLE_NUM_THREADS=1`, see `runtime`). Profiled on SmolLM2 LoRA SFT
//! (2 cores, `examples/sft_speed` under `perf`) those serial passes were ~7 % of the driving
//! thread's time. Here forward is one parallel pass and backward another, which writes both
//! input gradients.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::zoo::cpu::exp::exp;
use crate::zoo::fused::{
    balanced_task_len, contiguous_f32, uses_fused_kernels, PARALLEL_CHUNK as CHUNK,
};

/// `silu(gate) · up`, element-wise; `gate` and `up` have the same shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if gate.shape() != up.shape() {
        candle_core::bail!("swiglu: gate {:?} and up {:?}", gate.shape(), up.shape());
    }
    if uses_fused_kernels(gate) && uses_fused_kernels(up) {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu);
    }
    candle_nn::ops::silu(gate)? * up
}

/// `sigmoid(v)` as candle's SiLU computes it, with the vectorisable `exp` (within two units
/// in the last place of libm's; the forward agrees with candle's to 1e-6 relative).
#[inline(always)]
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + exp(-v))
}

/// `out = silu(gate) · up`, compiled for AVX-512 and AVX2 as well (see `Cargo.toml`): at
/// 32 decoding SmolLM2 streams the AVX2 build was 2 % of the server's time.
#[multiversion::multiversion(targets("x86_64+avx512f", "x86_64+avx2"))]
fn swiglu_chunk(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

/// Both input gradients of [`swiglu_chunk`] (see [`SwiGluGrad`]), compiled for AVX2 as well.
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn swiglu_grad_chunk([d_gate, d_up]: [&mut [f32]; 2], gate: &[f32], up: &[f32], g: &[f32]) {
    let outputs = d_gate.iter_mut().zip(d_up.iter_mut());
    for ((d_gate, d_up), ((&gate, &up), &g)) in outputs.zip(gate.iter().zip(up).zip(g)) {
        let s = sigmoid(gate);
        *d_gate = g * up * s * (1.0 + gate * (1.0 - s));
        *d_up = g * gate * s;
    }
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "decoder-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (gate, up) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let mut y = vec![0f32; gate.len()];
        let task = balanced_task_len(gate.len(), 1);
        y.par_chunks_mut(task)
            .zip(gate.par_chunks(task).zip(up.par_chunks(task)))
            .for_each(|(out, (gate, up))| swiglu_chunk(out, gate, up));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let packed = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluGrad)?;
        let n = gate.dim(0)?;
        Ok((Some(packed.narrow(0, 0, n)?), Some(packed.narrow(0, n, n)?)))
    }
}

/// Both input gradients in one pass, stacked along the first dimension: rows `0..n` are
/// `d gate = g · up · s · (1 + gate · (1 − s))` (s = sigmoid(gate)), rows `n..2n` are
/// `d up = g · silu(gate)`.
struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "decoder-swiglu-grad"
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
        let (gate, up, g) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let len = gate.len();
        let mut out = vec![0f32; 2 * len];
        let (d_gate, d_up) = out.split_at_mut(len);
        d_gate
            .par_chunks_mut(CHUNK)
            .zip(d_up.par_chunks_mut(CHUNK))
            .zip(
                gate.par_chunks(CHUNK)
                    .zip(up.par_chunks(CHUNK).zip(g.par_chunks(CHUNK))),
            )
            .for_each(|((d_gate, d_up), (gate, (up, g)))| {
                swiglu_grad_chunk([d_gate, d_up], gate, up, g)
            });
        let mut dims = l1.shape().dims().to_vec();
        match dims.first_mut() {
            Some(first) => *first *= 2,
            None => candle_core::bail!("swiglu: a scalar has no rows"),
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{Tensor, Var};

    use super::swiglu;
    use crate::zoo::test_tensors::{max_abs_diff, wave};

    fn composed(gate: &Tensor, up: &Tensor) -> Tensor {
        (candle_nn::ops::silu(gate).unwrap() * up).unwrap()
    }

    /// Gradients of `Σ y · w` for a fixed, non-uniform `w`.
    fn grads(y: &Tensor, vars: [&Var; 2]) -> [Tensor; 2] {
        let w = wave(y.dims(), 1.0, 2.0);
        let store = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
        vars.map(|v| store.get(v.as_tensor()).unwrap().clone())
    }

    #[test]
    fn fused_swiglu_matches_the_composed_ops_forward_and_backward() {
        // More elements than one parallel chunk, so several tasks write each output.
        let shape = [37, 1000];
        let gate = Var::from_tensor(&wave(&shape, 6.0, 0.3)).unwrap();
        let up = Var::from_tensor(&wave(&shape, 2.0, 1.1)).unwrap();
        let fused = swiglu(gate.as_tensor(), up.as_tensor()).unwrap();
        let reference = composed(gate.as_tensor(), up.as_tensor());
        // libm's `exp` against the vectorised one: a few units in the last place of outputs
        // up to ~12.
        let forward = max_abs_diff(&fused, &reference);
        assert!(forward <= 4e-6, "forward differs by {forward}");
        let (fused_grads, reference_grads) =
            (grads(&fused, [&gate, &up]), grads(&reference, [&gate, &up]));
        for (name, (a, b)) in ["gate", "up"]
            .iter()
            .zip(fused_grads.iter().zip(&reference_grads))
        {
            assert_eq!(a.dims(), &shape);
            let d = max_abs_diff(a, b);
            assert!(d < 1e-5, "d {name} differs by {d}");
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let (gate, up) = (wave(&[2, 3], 1.0, 0.0), wave(&[3, 2], 1.0, 0.0));
        assert!(swiglu(&gate, &up).is_err());
    }
}
