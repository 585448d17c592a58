//! Where the real tokens of a padded `[B, T]` batch sit once packed as `[N, …]` rows: the
//! encoder runs every per-token op on the real tokens only.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::cpu::varlen_attention::Span;
use super::ZooError;

#[derive(Clone)]
pub(super) struct Packing {
    /// Flat index `b·T + t` of each real token, in order (u32, for index ops).
    pub rows: Tensor,
    /// Position `t` of each real token, for the position embeddings.
    pub positions: Tensor,
    /// Each batch row's real tokens as one run of packed rows, for packed attention.
    pub spans: Arc<[Span]>,
    /// The packed row of each sequence's position 0 (its [CLS]), `[B]` u32; `None` when some
    /// sequence's position 0 is padding, whose hidden state is the zero row.
    pub first_rows: Option<Tensor>,
}

impl Packing {
    pub fn new(attention_mask: &Tensor) -> Result<Self, ZooError> {
        let device = attention_mask.device();
        let mask = attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let t = mask.first().map_or(0, Vec::len);
        let (mut rows, mut positions, mut spans) = (Vec::new(), Vec::new(), Vec::new());
        for (bi, row) in mask.iter().enumerate() {
            let start = rows.len();
            for (ti, &m) in row.iter().enumerate() {
                if m != 0 {
                    rows.push((bi * t + ti) as u32);
                    positions.push(ti as u32);
                }
            }
            spans.push(Span {
                start,
                len: rows.len() - start,
            });
        }
        let first_rows = if mask.iter().all(|row| row.first().is_some_and(|&m| m != 0)) {
            let starts: Vec<u32> = spans.iter().map(|s| s.start as u32).collect();
            Some(Tensor::from_vec(starts, mask.len(), device)?)
        } else {
            None
        };
        let n = rows.len();
        Ok(Self {
            rows: Tensor::from_vec(rows, n, device)?,
            positions: Tensor::from_vec(positions, n, device)?,
            spans: spans.into(),
            first_rows,
        })
    }

    /// `[N, H]` packed rows → `[B, T, H]` with zeros at padding positions (differentiable).
    pub fn pad(
        &self,
        packed: &Tensor,
        (b, t, h): (usize, usize, usize),
    ) -> Result<Tensor, ZooError> {
        let zeros = Tensor::zeros((b * t, h), packed.dtype(), packed.device())?;
        Ok(zeros.index_add(&self.rows, packed, 0)?.reshape((b, t, h))?)
    }
}
