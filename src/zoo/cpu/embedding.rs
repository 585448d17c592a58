//! An embedding lookup whose gradient stays row-sparse.
//!
//! candle's `index_select` backward materialises the table's whole gradient: a zero-filled
//! `[vocab, hidden]` tensor, then `index_add` into a second full copy, then the add into
//! the gradient store. For MiniLM that is three 47 MB buffers (and their page faults) per
//! step for the 432 rows a batch touches, 6 % of a training step. This op's backward hands
//! the touched rows' gradients to a [`RowGradients`] sink instead; the optimizer drains it
//! ([`RowGradients::drain`]) and updates the table with zero gradients elsewhere, exactly
//! as it would with the dense one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::zoo::fused::contiguous_f32;

/// A table's gradient as distinct rows: `values[i·width..(i + 1)·width]` is the gradient of
/// row `ids[i]`; every other row's gradient is zero.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseRows {
    pub ids: Vec<u32>,
    pub values: Vec<f32>,
    pub width: usize,
    /// Rows in the table: the dense gradient's `[rows, width]`.
    pub rows: usize,
}

impl SparseRows {
    /// Sums the rows of a lookup's output gradient into one row per distinct id, adding
    /// each id's rows in the order they come (as `index_add` into zeros does, so the sums
    /// are the dense gradient's bit for bit).
    fn coalesce(ids: &[u32], grad: &[f32], width: usize, rows: usize) -> Self {
        let mut out = Self {
            ids: Vec::new(),
            values: Vec::new(),
            width,
            rows,
        };
        out.add_rows(HashMap::with_capacity(ids.len()), ids, grad);
        out
    }

    /// `self + other`, row by row (gradient accumulation over micro-batches: each id's sum
    /// is `self`'s row plus `other`'s, as the dense tensors' sum is).
    pub fn merge(&mut self, other: &SparseRows) -> candle_core::Result<()> {
        if other.width != self.width || other.rows != self.rows {
            candle_core::bail!(
                "row gradients of [{}, {}] and [{}, {}]",
                self.rows,
                self.width,
                other.rows,
                other.width
            );
        }
        let slot_of = self
            .ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i))
            .collect();
        self.add_rows(slot_of, &other.ids, &other.values);
        Ok(())
    }

    /// Adds each `values` row into the row of its id (`slot_of`: id → index in
    /// `self.ids`), appending the ids not there yet, in order.
    fn add_rows(&mut self, mut slot_of: HashMap<u32, usize>, ids: &[u32], values: &[f32]) {
        let width = self.width;
        for (&id, row) in ids.iter().zip(values.chunks_exact(width.max(1))) {
            match slot_of.get(&id) {
                Some(&slot) => self.values[slot * width..(slot + 1) * width]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(d, &g)| *d += g),
                None => {
                    slot_of.insert(id, self.ids.len());
                    self.ids.push(id);
                    self.values.extend_from_slice(row);
                }
            }
        }
    }

    /// Σ g² over the rows (the dense gradient's, whose other entries are zero), in f64.
    pub fn sum_of_squares(&self) -> f64 {
        self.values
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum()
    }

    /// The dense `[rows, width]` gradient (for devices and paths without a row-wise update).
    pub fn to_dense(&self, device: &candle_core::Device) -> candle_core::Result<Tensor> {
        let mut dense = vec![0f32; self.rows * self.width];
        for (&id, row) in self
            .ids
            .iter()
            .zip(self.values.chunks_exact(self.width.max(1)))
        {
            let start = id as usize * self.width;
            dense[start..start + self.width].copy_from_slice(row);
        }
        Tensor::from_vec(dense, (self.rows, self.width), device)
    }

    /// For each table row, its index in `ids` (`u32::MAX`: no gradient).
    pub fn slot_of_rows(&self) -> Vec<u32> {
        let mut slots = vec![u32::MAX; self.rows];
        for (slot, &id) in self.ids.iter().enumerate() {
            if let Some(s) = slots.get_mut(id as usize) {
                *s = slot as u32;
            }
        }
        slots
    }
}

/// Where a table's lookups leave their row gradients until the optimizer takes them: one
/// coalesced entry per backward pass.
#[derive(Debug, Default)]
pub struct RowGradients {
    pending: Mutex<Vec<SparseRows>>,
}

impl RowGradients {
    /// The gradients of the backward passes since the last drain, summed; `None` when no
    /// lookup has been back-propagated through.
    pub fn drain(&self) -> candle_core::Result<Option<SparseRows>> {
        let pending = std::mem::take(&mut *self.lock()?);
        let mut passes = pending.into_iter();
        let Some(mut total) = passes.next() else {
            return Ok(None);
        };
        for pass in passes {
            total.merge(&pass)?;
        }
        Ok(Some(total))
    }

    fn lock(&self) -> candle_core::Result<std::sync::MutexGuard<'_, Vec<SparseRows>>> {
        self.pending
            .lock()
            .map_err(|_| candle_core::Error::Msg("row gradients: lock poisoned".into()))
    }
}

/// `table[ids]` (`[n, width]` from a contiguous CPU f32 `[rows, width]` table, `ids` u32
/// `[n]`), whose backward sends the table's gradient to `sink` as rows, not as a tensor.
pub fn lookup(
    table: &Tensor,
    ids: &Tensor,
    sink: &Arc<RowGradients>,
) -> candle_core::Result<Tensor> {
    let (rows, width) = table.dims2()?;
    let ids: Vec<u32> = ids.flatten_all()?.to_vec1()?;
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= rows) {
        candle_core::bail!("embedding lookup: id {bad} in a table of {rows} rows");
    }
    table.contiguous()?.apply_op1(Lookup {
        ids,
        width,
        rows,
        sink: Arc::clone(sink),
    })
}

struct Lookup {
    ids: Vec<u32>,
    width: usize,
    rows: usize,
    sink: Arc<RowGradients>,
}

impl CustomOp1 for Lookup {
    fn name(&self) -> &'static str {
        "row-sparse-embedding"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let table = contiguous_f32(storage, layout)?;
        let w = self.width;
        if table.len() != self.rows * w {
            candle_core::bail!("embedding lookup: table of {} values", table.len());
        }
        let mut out = vec![0f32; self.ids.len() * w];
        out.par_chunks_mut(w.max(1))
            .zip(self.ids.par_iter())
            .for_each(|(row, &id)| {
                let start = id as usize * w;
                row.copy_from_slice(&table[start..start + w]);
            });
        Ok((CpuStorage::F32(out), Shape::from((self.ids.len(), w))))
    }

    fn bwd(
        &self,
        _table: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad: Vec<f32> = grad.contiguous()?.flatten_all()?.to_vec1()?;
        if grad.len() != self.ids.len() * self.width {
            candle_core::bail!("embedding lookup: gradient of {} values", grad.len());
        }
        let rows = SparseRows::coalesce(&self.ids, &grad, self.width, self.rows);
        self.sink.lock()?.push(rows);
        Ok(None)
    }
}

#[cfg(test)]
#[path = "embedding_tests.rs"]
mod tests;
