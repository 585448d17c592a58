//! The optimizer's gradients: per parameter a tensor or, for an embedding table trained with
//! the CPU kernels (`zoo::cpu::embedding`), the rows its lookups reached; their global norm
//! and clipping; and AdamW's update of a table from its rows, one pass that reads no
//! gradient for the rows a step did not touch.

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;

use super::optim::{StepScalars, PARALLEL_CHUNK};
use crate::zoo::cpu::embedding::SparseRows;
use crate::zoo::cpu::lanes::sum_lanes;

pub use crate::zoo::params::Grad;

/// Gradients of the optimizer's parameters, in its parameter order. Kept apart from the
/// `GradStore` so the store (which also holds gradients of intermediate and frozen
/// tensors) can be dropped right after backward.
pub struct Gradients {
    pub(super) grads: Vec<Option<Grad>>,
    /// The clipping factor, applied as the optimizer reads each gradient rather than by
    /// rewriting every gradient tensor (a pass and an allocation over all parameters).
    pub(super) scale: f64,
}

impl Gradients {
    /// Square root of the sum of squares over every gradient (torch's total 2-norm), as the
    /// optimizer will apply them (times [`Self::scale`]).
    pub fn global_norm(&self) -> candle_core::Result<f64> {
        let mut sum_sq = 0f64;
        for g in self.grads.iter().flatten() {
            sum_sq += match g {
                Grad::Dense(t) => sum_of_squares(t)?,
                Grad::Rows(rows) => rows.sum_of_squares(),
            };
        }
        Ok(sum_sq.sqrt() * self.scale)
    }

    /// The factor [`Self::clip_global_norm`] chose (1 when it did not clip); the optimizer
    /// multiplies each gradient by it as it reads it. [`Self::get`] gives the unscaled
    /// gradients.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Global-norm clipping like `torch.nn.utils.clip_grad_norm_`: when the norm exceeds
    /// `max_norm`, every gradient is scaled by `max_norm / (norm + 1e-6)`. `max_norm <= 0`
    /// disables clipping. Returns the norm before clipping.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> candle_core::Result<f64> {
        let norm = self.global_norm()?;
        if max_norm > 0.0 {
            let coef = max_norm / (norm + 1e-6);
            if coef < 1.0 {
                self.scale *= coef;
            }
        }
        Ok(norm)
    }

    /// The gradient of parameter `index` (optimizer order), if it received one, before
    /// clipping's [`Self::scale`].
    pub fn get(&self, index: usize) -> Option<&Grad> {
        self.grads.get(index).and_then(Option::as_ref)
    }
}

/// Σ g², in f64: one parallel pass over a CPU f32 gradient's data, composed tensor ops
/// (a squared copy, then a sum) elsewhere.
fn sum_of_squares(g: &Tensor) -> candle_core::Result<f64> {
    if g.device().is_cpu() && g.dtype() == DType::F32 {
        let g = g.contiguous()?;
        let (storage, layout) = g.storage_and_layout();
        if let candle_core::Storage::Cpu(cpu) = &*storage {
            let data = crate::zoo::fused::contiguous_f32(cpu, layout)?;
            return Ok(data
                .par_chunks(PARALLEL_CHUNK)
                .map(|chunk| sum_lanes(chunk, |x| f64::from(x) * f64::from(x)))
                .sum());
        }
    }
    g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()
}

/// AdamW on a contiguous CPU f32 table from its gradient rows, written into the variable's
/// storage: every row takes the step (the moments decay and the decoupled weight decay
/// applies to all of them, as with a dense gradient), the untouched ones with a zero
/// gradient, which gives the dense update's numbers exactly.
///
/// A row that has never had a gradient has zero moments, and a zero gradient leaves them
/// zero and adds nothing to the parameter (`0 / (√0 + ε) = 0`): its step is the decay
/// alone, so its moments are neither read nor written. Most of a vocabulary is such rows
/// (6,512 of MiniLM's 30,522 word pieces occur in the NER training split), and the full
/// update reads and writes 28 bytes per element against the decay's 8.
pub(super) struct RowWiseUpdate<'a> {
    pub scalars: &'a StepScalars,
    pub rows: &'a SparseRows,
    /// The table's moments and which rows have non-zero ones; the op's `&self` interface
    /// reaches them through the lock.
    pub moments: Mutex<RowMoments<'a>>,
}

pub(super) type RowMoments<'a> = (&'a mut [f32], &'a mut [f32], &'a mut [bool]);

impl InplaceOp1 for RowWiseUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-row-update"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(param) = storage else {
            candle_core::bail!("adamw: the row update takes f32 parameters");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("adamw: the row update takes contiguous parameters");
        };
        let p = &mut param[start..end];
        let mut moments = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("adamw: moments lock poisoned".into()))?;
        let (m, v, live) = &mut *moments;
        let (rows, width) = (self.rows.rows, self.rows.width);
        if width == 0
            || p.len() != rows * width
            || m.len() != p.len()
            || v.len() != p.len()
            || live.len() != rows
        {
            candle_core::bail!(
                "adamw: a [{rows}, {width}] row gradient for a parameter of {}, moments of {}",
                p.len(),
                m.len()
            );
        }
        let slots = self.rows.slot_of_rows();
        let zero = vec![0f32; width];
        let values = &self.rows.values;
        let s = self.scalars;
        let rows_per_task = (PARALLEL_CHUNK / width).max(1);
        let chunk = rows_per_task * width;
        p.par_chunks_mut(chunk)
            .zip(m.par_chunks_mut(chunk))
            .zip(v.par_chunks_mut(chunk))
            .zip(live.par_chunks_mut(rows_per_task))
            .enumerate()
            .for_each(|(task, (((p, m), v), live))| {
                let rows = p
                    .chunks_mut(width)
                    .zip(m.chunks_mut(width))
                    .zip(v.chunks_mut(width))
                    .zip(live.iter_mut());
                for (i, (((p, m), v), live)) in rows.enumerate() {
                    let gradient = match slots.get(task * rows_per_task + i) {
                        Some(&slot) if slot != u32::MAX => {
                            let slot = slot as usize;
                            values.get(slot * width..(slot + 1) * width)
                        }
                        _ => None,
                    };
                    match gradient {
                        Some(g) => {
                            *live = true;
                            s.update(p, g, m, v);
                        }
                        None if *live => s.update(p, &zero, m, v),
                        None => s.decay_only(p),
                    }
                }
            });
        Ok(())
    }
}

#[cfg(test)]
#[path = "gradients_tests.rs"]
mod tests;
