//! Many LoRA adapters in one served batch (no gradient): each run of rows adds its own
//! adapter's `x · Aᵀ · (s·B)ᵀ` to the base layer's output, written straight into a copy
//! of that output. As candle ops every run cost a narrow, two matmuls, an addition and its
//! share of a concatenation, each an allocation and a dispatch: with 20 adapters among 32
//! decoding sequences, 4,200 runs a step on SmolLM2 left the batch at 0.41× the merged
//! model's tokens/s. Here a run is two small products on the gemm kernels, the runs
//! spread over the rayon pool (each writes only its own rows).

use candle_core::Tensor;
use rayon::prelude::*;

use super::gemm::{matmul, Threads, View, ViewMut};
use crate::zoo::fused::with_cpu_values;

/// Rows `start..start + len` of a batch and their adapter's factors: `down_t` `Aᵀ`
/// `[in, r]`, `up_t` `(s·B)ᵀ` `[r, out]`, both contiguous CPU f32.
pub struct RowRun<'a> {
    pub start: usize,
    pub len: usize,
    pub down_t: &'a Tensor,
    pub up_t: &'a Tensor,
}

/// The f32 values of a contiguous CPU tensor, for as long as `f` runs.
fn with_values<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    with_cpu_values(t, "segmented lora", f)
}

/// `base_out [N, out]` with each run's update added to its rows of `x [N, in]`'s products;
/// rows in no run keep the base output.
pub fn add_segmented_lora(
    base_out: &Tensor,
    x: &Tensor,
    runs: &[RowRun<'_>],
) -> candle_core::Result<Tensor> {
    let (rows, out) = base_out.dims2()?;
    let (x_rows, in_dim) = x.dims2()?;
    if x_rows != rows {
        candle_core::bail!("segmented lora: {x_rows} input rows for {rows} output rows");
    }
    let (base_out, x) = (base_out.contiguous()?, x.contiguous()?);
    let mut y = with_values(&base_out, |values| Ok(values.to_vec()))?;
    // Each run's rows of `y`, split off in order so the runs fill them in parallel.
    let mut targets = Vec::with_capacity(runs.len());
    let mut rest: &mut [f32] = &mut y;
    let mut taken = 0;
    for run in runs {
        if run.start < taken || run.start + run.len > rows {
            candle_core::bail!(
                "segmented lora: rows {}..{} of {rows} overlap an earlier run or the end",
                run.start,
                run.start + run.len
            );
        }
        let (_, after_gap) = std::mem::take(&mut rest).split_at_mut((run.start - taken) * out);
        let (target, after) = after_gap.split_at_mut(run.len * out);
        targets.push((run, target));
        rest = after;
        taken = run.start + run.len;
    }
    with_values(&x, |x| {
        targets
            .into_par_iter()
            .try_for_each(|(run, target)| add_run(run, x, in_dim, target, out))
    })?;
    Tensor::from_vec(y, (rows, out), base_out.device())
}

/// One run: `target [len, out] += x_rows · Aᵀ · (s·B)ᵀ`.
fn add_run(
    run: &RowRun<'_>,
    x: &[f32],
    in_dim: usize,
    target: &mut [f32],
    out: usize,
) -> candle_core::Result<()> {
    let (down_in, rank) = run.down_t.dims2()?;
    let (up_rank, up_out) = run.up_t.dims2()?;
    if down_in != in_dim || up_rank != rank || up_out != out {
        candle_core::bail!(
            "segmented lora: x [_, {in_dim}], Aᵀ [{down_in}, {rank}], (sB)ᵀ [{up_rank}, {up_out}] into [_, {out}]"
        );
    }
    let end = run.start + run.len;
    let x_rows = &x[run.start * in_dim..end * in_dim];
    if run.len <= LOOP_RUN_ROWS {
        return with_values(run.down_t, |down| {
            with_values(run.up_t, |up| {
                add_rows_by_loops(x_rows, down, up, target, (in_dim, rank, out));
                Ok(())
            })
        });
    }
    let mut low = vec![0f32; run.len * rank];
    let x_rows = View::rows(x_rows, run.len, in_dim);
    with_values(run.down_t, |down| {
        let down = View::rows(down, in_dim, rank);
        let low = ViewMut::rows(&mut low, run.len, rank);
        matmul(low, x_rows, down, 1.0, false, Threads::Single)
    })?;
    with_values(run.up_t, |up| {
        let up = View::rows(up, rank, out);
        let dst = ViewMut::rows(target, run.len, out);
        matmul(
            dst,
            View::rows(&low, run.len, rank),
            up,
            1.0,
            true,
            Threads::Single,
        )
    })
}

/// Runs of at most this many rows take plain loops: at rank 8 a row's two products are a
/// few thousand multiply-adds, less than two `gemm` calls cost to set up. Serving 32
/// streams spread over 20 adapters makes most runs one row: 4,200 runs a step on SmolLM2.
const LOOP_RUN_ROWS: usize = 4;

/// `target [rows, out] += x_rows · down · up` row by row: `low = x · down` (`down` is
/// `Aᵀ [in, r]`) as `in` steps of an `r`-wide update, then `r` rows of `up` (`(s·B)ᵀ
/// [r, out]`) added in proportion. Compiled for AVX2 as well (see `Cargo.toml`).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn add_rows_by_loops(
    x_rows: &[f32],
    down: &[f32],
    up: &[f32],
    target: &mut [f32],
    (in_dim, rank, out): (usize, usize, usize),
) {
    let mut low = vec![0f32; rank];
    for (x, row) in x_rows
        .chunks_exact(in_dim)
        .zip(target.chunks_exact_mut(out))
    {
        low.fill(0.0);
        for (&xi, down_row) in x.iter().zip(down.chunks_exact(rank)) {
            for (l, &d) in low.iter_mut().zip(down_row) {
                *l += xi * d;
            }
        }
        for (&l, up_row) in low.iter().zip(up.chunks_exact(out)) {
            for (t, &u) in row.iter_mut().zip(up_row) {
                *t += l * u;
            }
        }
    }
}
