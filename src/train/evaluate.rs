//! Helpers every task's evaluation uses.

use candle_core::{DType, Tensor};

use super::TrainError;

/// A scalar tensor (a loss) as `f64`.
pub fn scalar(t: &Tensor) -> Result<f64, TrainError> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}
