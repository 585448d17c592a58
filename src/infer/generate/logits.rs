//! What a step hands the sampler: one row of logits per chunk, read where the model wrote
//! them. The model's output tensor is kept as it is rather than copied into a vector per
//! row: at 32 SmolLM2 streams that copy was 6 MiB a step on the engine's thread while the
//! other core waited (0.8 ms of a 30 ms step).

use candle_core::{DType, Device, Tensor};

use crate::infer::InferError;

/// `rows` rows of `vocab` logits, in chunk order.
pub struct StepLogits {
    rows: usize,
    vocab: usize,
    values: Values,
}

enum Values {
    Owned(Vec<f32>),
    /// A contiguous f32 `[rows, vocab]` tensor on the CPU.
    Tensor(Tensor),
}

impl StepLogits {
    /// Rows computed one by one (tests' fake models); every row `vocab` long.
    pub fn from_rows(rows: Vec<Vec<f32>>, vocab: usize) -> Result<Self, InferError> {
        if let Some(row) = rows.iter().find(|row| row.len() != vocab) {
            return Err(InferError::engine(format!(
                "a logits row has {} values for a vocabulary of {vocab}",
                row.len()
            )));
        }
        Ok(Self {
            rows: rows.len(),
            vocab,
            values: Values::Owned(rows.concat()),
        })
    }

    /// The model's `[rows, vocab]` output; brought to the CPU as f32 (one copy) where it is
    /// on another device or in another dtype, used in place where it is not.
    pub fn from_tensor(logits: Tensor) -> Result<Self, InferError> {
        let fail = |e: candle_core::Error| InferError::engine(format!("logits: {e}"));
        let (rows, vocab) = logits.dims2().map_err(fail)?;
        let logits = logits
            .to_device(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.contiguous())
            .map_err(fail)?;
        Ok(Self {
            rows,
            vocab,
            values: Values::Tensor(logits),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `f` over every row's values, row after row (`rows · vocab` of them).
    pub fn with_values<R>(&self, f: impl FnOnce(&[f32], usize) -> R) -> Result<R, InferError> {
        match &self.values {
            Values::Owned(values) => Ok(f(values, self.vocab)),
            Values::Tensor(tensor) => {
                crate::zoo::fused::with_cpu_values(tensor, "logits", |values| {
                    Ok(f(values, self.vocab))
                })
                .map_err(|e| InferError::engine(format!("logits: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rows_and_tensors_read_the_same() {
        let rows = vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]];
        let owned = StepLogits::from_rows(rows.clone(), 3).unwrap();
        // A transposed view: not contiguous, read in row order all the same.
        let columns = Tensor::new(&[[1f32, 4.0], [2.0, 5.0], [3.0, 6.0]], &Device::Cpu).unwrap();
        let viewed = StepLogits::from_tensor(columns.t().unwrap()).unwrap();
        for logits in [owned, viewed] {
            assert_eq!(logits.rows(), 2);
            let read = logits.with_values(|v, vocab| (v.to_vec(), vocab)).unwrap();
            assert_eq!(read, (vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3));
        }
    }

    #[test]
    fn a_row_of_the_wrong_length_is_refused() {
        let error = StepLogits::from_rows(vec![vec![1.0; 3], vec![1.0; 2]], 3)
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("2 values for a vocabulary of 3"),
            "{error}"
        );
    }

    #[test]
    fn other_dtypes_are_read_as_f32() {
        let tensor = Tensor::new(&[[1.5f32, -2.0]], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let logits = StepLogits::from_tensor(tensor).unwrap();
        assert_eq!(
            logits.with_values(|v, _| v.to_vec()).unwrap(),
            vec![1.5, -2.0]
        );
    }
}
