//! "Output computed elsewhere, gradient for the input only": the op a frozen linear base
//! attaches its input's gradient with, so candle never computes a frozen weight's.

use std::sync::{Arc, Mutex};

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// The frozen weight a backward multiplies by.
pub(super) enum GradWeight {
    Dense(Tensor),
    /// Dequantized only while the backward runs: one transient f32 weight at a time.
    Quantized(Arc<QTensor>),
}

/// "Output computed elsewhere, gradient for the input only": forward returns a copy of the
/// precomputed `x·Wᵀ (+ b)`, backward gives `grad_out · W` and never touches dW.
pub(super) struct FrozenLinearGrad {
    /// Taken by the forward, so that the graph (which keeps the op until backward) does not
    /// also keep a second copy of every frozen projection's output: measured on QLoRA
    /// SmolLM2, 0.6 MB per token of the batch.
    output: Mutex<Option<Tensor>>,
    weight: GradWeight,
}

impl FrozenLinearGrad {
    pub(super) fn new(output: Tensor, weight: GradWeight) -> Self {
        Self {
            output: Mutex::new(Some(output)),
            weight,
        }
    }

    fn take_output(&self) -> candle_core::Result<Tensor> {
        self.output
            .lock()
            .map_err(|_| candle_core::Error::Msg("frozen-linear: poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("frozen-linear: forward ran twice".into()))
    }
}

impl CustomOp1 for FrozenLinearGrad {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let output = self.take_output()?;
        let (storage, layout) = output.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(s) => {
                let copy = s.try_clone(layout)?;
                Ok((copy, output.shape().clone()))
            }
            _ => candle_core::bail!("frozen-linear: output is not on the cpu"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let output = self.take_output()?;
        let (storage, layout) = output.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cuda(s) => {
                let copy = s.try_clone(layout)?;
                Ok((copy, output.shape().clone()))
            }
            _ => candle_core::bail!("frozen-linear: output is not on the gpu"),
        }
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // A bf16 weight (mixed precision) multiplies the gradient in bf16; the input's
        // gradient is returned in the input's dtype.
        let grad_in = match &self.weight {
            GradWeight::Dense(w) => grad_res.to_dtype(w.dtype())?.matmul(w)?,
            GradWeight::Quantized(q) => grad_res.matmul(&q.dequantize(grad_res.device())?)?,
        };
        Ok(Some(grad_in.to_dtype(arg.dtype())?.reshape(arg.shape())?))
    }
}
