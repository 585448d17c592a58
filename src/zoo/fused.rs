//! Fused CPU kernels with analytic backward passes for the element-wise parts of the
//! encoder that dominate a training step after the matmuls.
//!
//! Measured on MiniLM-L6 full fine-tuning (2 cores, `perf`): candle's `gelu_erf` spends
//! ~10 % of the step in scalar libm `erff`/`erfc`, and a LayerNorm composed from primitive
//! ops (needed because candle's fused one has no backward) costs ~10 passes over the
//! activations forward and ~20 backward, 13 times per forward. Each kernel here is one
//! pass forward and one backward. Other devices keep the composed ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::exp::exp;
use super::cpu::lanes::{sum2_lanes, sum_lanes};

/// Elements per parallel task of the element-wise kernels: large enough that rayon's
/// fork/join costs little next to the work.
pub(crate) const PARALLEL_CHUNK: usize = 1 << 14;

/// Elements per parallel task of a row-wise kernel over rows of `width`: whole rows, about
/// [`PARALLEL_CHUNK`] elements.
pub(crate) fn rows_per_task(width: usize) -> usize {
    (PARALLEL_CHUNK / width.max(1)).max(1) * width.max(1)
}

/// Fewest elements a forward kernel splits over the pool: below it one task is quicker
/// than waking a thread.
const SPLIT_FROM: usize = 4096;

/// Elements per parallel task of a forward kernel over `len` elements in whole units of
/// `unit` (a row's width, or 1): about [`PARALLEL_CHUNK`] each, in a number of tasks that is
/// a multiple of the pool's threads, so that every thread gets the same share. By
/// [`rows_per_task`] a decoding step's `[32, 576]` rows were one task of 28 rows and one of
/// 4, and SwiGLU's `[32, 1536]` three tasks for two threads. (Backward kernels keep
/// [`rows_per_task`]: their partial sums are added in task order, and that order stays the
/// same on every machine.)
pub(crate) fn balanced_task_len(len: usize, unit: usize) -> usize {
    let unit = unit.max(1);
    let units = len.div_ceil(unit).max(1);
    if len < SPLIT_FROM {
        return units * unit;
    }
    let threads = rayon::current_num_threads().max(1);
    let tasks = len
        .div_ceil(PARALLEL_CHUNK)
        .next_multiple_of(threads)
        .min(units);
    units.div_ceil(tasks) * unit
}

/// The backward of a row-wise norm over rows of `width`, split over the pool: each task
/// writes its rows' input gradient (`rows_backward(x, g, dx)`) and returns its share of the
/// parameter gradients, added into `sums` in task order (the same sum on every run). A
/// share may be shorter than `sums`: empty when the parameters take no gradient.
pub(crate) fn norm_backward_rows(
    (x, g): (&[f32], &[f32]),
    dx_all: &mut [f32],
    width: usize,
    sums: &mut [f32],
    rows_backward: impl Fn(&[f32], &[f32], &mut [f32]) -> Vec<f32> + Sync,
) {
    let task = rows_per_task(width);
    let partials: Vec<Vec<f32>> = dx_all
        .par_chunks_mut(task)
        .zip(x.par_chunks(task).zip(g.par_chunks(task)))
        .map(|(dx, (x, g))| rows_backward(x, g, dx))
        .collect();
    for partial in partials {
        sums.iter_mut().zip(&partial).for_each(|(a, b)| *a += b);
    }
}

/// The f32 data of a contiguous tensor's storage; the kernels here and in
/// `decoder::kernels` are only called on contiguous inputs.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fused kernels take contiguous inputs"),
    }
}

/// The f32 values of a contiguous CPU tensor, for as long as `f` runs; `op` names the
/// caller in the error for a tensor elsewhere.
pub(crate) fn with_cpu_values<R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => f(contiguous_f32(cpu, layout)?),
        _ => candle_core::bail!("{op}: a tensor is not on the cpu"),
    }
}

thread_local! {
    /// Set while [`with_generic_ops`] runs its closure on this thread.
    static GENERIC_OPS_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The fused kernels are CPU f32 code; other devices and dtypes use composed candle ops
/// (the device-generic path), as does the CPU inside [`with_generic_ops`].
pub(crate) fn uses_fused_kernels(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && !generic_ops_only()
}

/// Whether this thread is inside [`with_generic_ops`].
pub(crate) fn generic_ops_only() -> bool {
    GENERIC_OPS_ONLY.with(|g| g.get())
}

/// Runs `f` with every op on its device-generic path, the composed candle ops a GPU runs,
/// although the tensors are on the CPU: the way CI, which has no GPU, proves that path equal
/// to the fused one. Models must be built inside `f` too, since some layers choose their
/// path when they are loaded. Thread-local, so tests running beside it are unaffected.
pub fn with_generic_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GENERIC_OPS_ONLY.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GENERIC_OPS_ONLY.with(|g| g.replace(true)));
    f()
}

/// Splits the output of a norm's backward kernel, `[rows + n_params, hidden]`: the input
/// gradient in `x`'s shape, then one `[hidden]` row per parameter gradient. One pass
/// computes them all, so they come packed in one tensor.
pub(crate) fn unpack_norm_grads(
    packed: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    n_params: usize,
) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
    let rows = x.elem_count() / weight.elem_count();
    let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
    let params = (0..n_params)
        .map(|i| packed.narrow(0, rows + i, 1)?.reshape(weight.shape()))
        .collect::<candle_core::Result<_>>()?;
    Ok((dx, params))
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// erf(z) and exp(−z²) by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), branch-free and
/// with the vectorisable `exp` so the loop vectorises; exp(−z²) is returned because the GELU
/// derivative needs it too.
#[inline(always)]
fn erf_and_gaussian(z: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = z.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0]) * t;
    let gaussian = exp(-a * a);
    ((1.0 - poly * gaussian).copysign(z), gaussian)
}

/// `out = GELU(x)`, compiled for AVX2 as well (see `Cargo.toml`).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn gelu_chunk(out: &mut [f32], x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = 0.5 * v * (1.0 + erf_and_gaussian(v * FRAC_1_SQRT_2).0);
    }
}

/// `out = g · GELU'(x)`, compiled for AVX2 as well.
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn gelu_grad_chunk(out: &mut [f32], x: &[f32], g: &[f32]) {
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(g) {
        let (erf, gaussian) = erf_and_gaussian(v * FRAC_1_SQRT_2);
        *o = g * (0.5 * (1.0 + erf) + v * FRAC_1_SQRT_2PI * gaussian);
    }
}

/// GELU with the exact (erf) form, as BERT uses it.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if uses_fused_kernels(x) {
        x.contiguous()?.apply_op1(GeluErf)
    } else {
        x.gelu_erf()
    }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let mut y = vec![0f32; x.len()];
        let task = balanced_task_len(x.len(), 1);
        y.par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .for_each(|(out, x)| gelu_chunk(out, x));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluErfGrad)?))
    }
}

/// d/dx GELU(x) = Φ(x) + x·φ(x), times the incoming gradient.
struct GeluErfGrad;

impl CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(PARALLEL_CHUNK)
            .zip(
                x.par_chunks(PARALLEL_CHUNK)
                    .zip(g.par_chunks(PARALLEL_CHUNK)),
            )
            .for_each(|(out, (x, g))| gelu_grad_chunk(out, x, g));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// LayerNorm over the last dimension: `(x − mean) / sqrt(var + eps) · weight + bias`.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

pub(crate) fn fused_layer_norm_applies(x: &Tensor) -> bool {
    uses_fused_kernels(x)
}

struct LayerNorm {
    eps: f32,
}

/// Mean and 1/std of one row (sums in lanes, so the callers' loops vectorise).
#[inline(always)]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = sum_lanes(row, |v| v) / n;
    let var = sum_lanes(row, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm of the rows of `x` into `y`, compiled for AVX2 as well (see `Cargo.toml`).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn layer_norm_rows(x: &[f32], y: &mut [f32], (w, b): (&[f32], &[f32]), eps: f32) {
    for (row, out) in x.chunks_exact(w.len()).zip(y.chunks_exact_mut(w.len())) {
        let (mean, rstd) = row_stats(row, eps);
        for (((o, &v), &w), &b) in out.iter_mut().zip(row).zip(w).zip(b) {
            *o = (v - mean) * rstd * w + b;
        }
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
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
        let hidden = w.len();
        let task = balanced_task_len(x.len(), hidden);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .for_each(|(y, x)| layer_norm_rows(x, y, (w, b), self.eps));
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
        let packed = x.apply_op3_no_bwd(
            &grad.contiguous()?,
            weight,
            &LayerNormGrad { eps: self.eps },
        )?;
        let (dx, params) = unpack_norm_grads(&packed, x, weight, 2)?;
        let [dw, db] = <[Tensor; 2]>::try_from(params)
            .map_err(|_| candle_core::Error::Msg("layer norm: two parameter gradients".into()))?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
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
        let hidden = w.len();
        let rows = x.len() / hidden;
        let mut out = vec![0f32; (rows + 2) * hidden];
        let (dx_all, sums) = out.split_at_mut(rows * hidden);
        // `sums` is `[dw | db]`, as each task's partial is.
        norm_backward_rows((x, g), dx_all, hidden, sums, |x, g, dx| {
            self.rows_backward(x, g, w, dx)
        });
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, hidden))))
    }
}

impl LayerNormGrad {
    /// dx of some rows into `dx_all`; returns their `[dw | db]` contributions.
    fn rows_backward(&self, x: &[f32], g: &[f32], w: &[f32], dx_all: &mut [f32]) -> Vec<f32> {
        let mut sums = vec![0f32; 2 * w.len()];
        layer_norm_rows_backward((x, g, w), dx_all, &mut sums, self.eps);
        sums
    }
}

/// [`LayerNormGrad::rows_backward`]'s loops, compiled for AVX2 as well: `dx` of the rows
/// of `x` into `dx_all`, their `[dw | db]` added into `sums`.
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn layer_norm_rows_backward(
    (x, g, w): (&[f32], &[f32], &[f32]),
    dx_all: &mut [f32],
    sums: &mut [f32],
    eps: f32,
) {
    let hidden = w.len();
    let (dw, db) = sums.split_at_mut(hidden);
    let (mut normed, mut weighted) = (vec![0f32; hidden], vec![0f32; hidden]);
    for ((row, g_row), dx) in x
        .chunks_exact(hidden)
        .zip(g.chunks_exact(hidden))
        .zip(dx_all.chunks_exact_mut(hidden))
    {
        let (mean, rstd) = row_stats(row, eps);
        let columns = normed.iter_mut().zip(weighted.iter_mut());
        let params = dw.iter_mut().zip(db.iter_mut());
        let inputs = row.iter().zip(g_row).zip(w);
        for (((xhat, gw), (dw, db)), ((&v, &g), &w)) in columns.zip(params).zip(inputs) {
            *xhat = (v - mean) * rstd;
            *gw = g * w;
            *dw += g * *xhat;
            *db += g;
        }
        let mean_gw = sum_lanes(&weighted, |gw| gw) / hidden as f32;
        let mean_gw_xhat = sum2_lanes(&weighted, &normed, |gw, xhat| gw * xhat) / hidden as f32;
        for ((dx, &gw), &xhat) in dx.iter_mut().zip(&weighted).zip(&normed) {
            *dx = rstd * (gw - mean_gw - xhat * mean_gw_xhat);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::zoo::test_tensors::{max_abs_diff, wave};
    use candle_core::{Var, D};

    #[test]
    fn forward_tasks_split_evenly_over_the_threads() {
        let on = |threads: usize, len: usize, unit: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| balanced_task_len(len, unit))
        };
        // A decoding step's 32 rows of 576: 16 rows a task on two threads (`rows_per_task`
        // made them 28 and 4); SwiGLU's 32 × 1536 values: four tasks, not three.
        assert_eq!(rows_per_task(576), 28 * 576);
        assert_eq!(on(2, 32 * 576, 576), 16 * 576);
        assert_eq!(on(2, 32 * 1536, 1), 12_288);
        // One thread or three: three tasks of 16,384 are already even.
        assert_eq!(on(1, 32 * 1536, 1), 16_384);
        assert_eq!(on(3, 32 * 1536, 1), 16_384);
        // A single row, or fewer values than are worth a thread: one task.
        assert_eq!(on(2, 576, 576), 576);
        assert_eq!(on(2, 4000, 1), 4000);
        // Never more tasks than rows: three rows of 4096 are two tasks of two rows at most.
        assert_eq!(on(2, 3 * 4096, 4096), 2 * 4096);
        // Large inputs keep about `PARALLEL_CHUNK` a task.
        assert_eq!(on(2, 1 << 20, 1), PARALLEL_CHUNK);
    }

    #[test]
    fn fused_gelu_matches_candle_forward_and_gradient() {
        let x = Var::from_tensor(&wave(&[4, 7, 16], 4.0, 0.1)).unwrap();
        let weights = wave(&[4, 7, 16], 1.0, 2.0);
        let fused = gelu_erf(x.as_tensor()).unwrap();
        let reference = x.as_tensor().gelu_erf().unwrap();
        assert!(
            max_abs_diff(&fused, &reference) < 2e-6,
            "forward {}",
            max_abs_diff(&fused, &reference)
        );
        let grad = |y: &Tensor| {
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (g_fused, g_ref) = (grad(&fused), grad(&reference));
        let d = max_abs_diff(
            g_fused.get(x.as_tensor()).unwrap(),
            g_ref.get(x.as_tensor()).unwrap(),
        );
        assert!(d < 2e-6, "gradient differs by {d}");
    }

    fn composed_layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let centered = x.broadcast_sub(&mean).unwrap();
        let var = centered.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let normed = centered
            .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
            .unwrap();
        normed.broadcast_mul(w).unwrap().broadcast_add(b).unwrap()
    }

    #[test]
    fn fused_layer_norm_matches_composed_forward_and_all_gradients() {
        let x = Var::from_tensor(&(wave(&[3, 5, 32], 2.0, 0.3) + 0.7).unwrap()).unwrap();
        let w = Var::from_tensor(&(wave(&[32], 0.5, 1.0) + 1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&wave(&[32], 0.2, 0.5)).unwrap();
        let weights = wave(&[3, 5, 32], 1.0, 3.0);
        let fused = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12).unwrap();
        let reference = composed_layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12);
        assert!(max_abs_diff(&fused, &reference) < 1e-5);
        let grad = |y: &Tensor| {
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (g_fused, g_ref) = (grad(&fused), grad(&reference));
        for (name, var) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let d = max_abs_diff(
                g_fused.get(var.as_tensor()).unwrap(),
                g_ref.get(var.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "{name} gradient differs by {d}");
        }
    }
}
