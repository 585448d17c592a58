//! "Output computed elsewhere, gradient for the input only": the op a frozen linear base
//! attaches its input's gradient with, so candle never computes a frozen weight's.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::QuantizedWeight;

use crate::zoo::precomputed::PrecomputedOutput;

/// The frozen weight a backward multiplies by.
pub(super) enum GradWeight {
    Dense(Tensor),
    /// Dequantized only while the backward runs: one transient f32 weight at a time.
    Quantized(QuantizedWeight),
}

/// "Output computed elsewhere, gradient for the input only": forward returns a copy of the
/// precomputed `x·Wᵀ (+ b)`, backward gives `grad_out · W` and never touches dW.
pub(super) struct FrozenLinearGrad {
    /// Taken by the forward, so that the graph (which keeps the op until backward) does not
    /// also keep a second copy of every frozen projection's output: measured on QLoRA
    /// SmolLM2, 0.6 MB per token of the batch.
    output: PrecomputedOutput,
    weight: GradWeight,
}

impl FrozenLinearGrad {
    pub(super) fn new(output: Tensor, weight: GradWeight) -> Self {
        Self {
            output: PrecomputedOutput::new(output, "frozen-linear"),
            weight,
        }
    }
}

impl CustomOp1 for FrozenLinearGrad {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output.take_cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.output.take_cuda()
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
            GradWeight::Quantized(q) => grad_res.matmul(
                &q.dequantize_on(grad_res.device())
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
            )?,
        };
        Ok(Some(grad_in.to_dtype(arg.dtype())?.reshape(arg.shape())?))
    }
}
