//! "Output computed elsewhere": the custom ops that attach a gradient to a result their
//! caller computed with ordinary tensor ops (a frozen linear's input gradient, a
//! checkpointed layer, a channels-last convolution) hand that result over as their forward.
//!
//! An op lives in the graph until the backward, so the forward gives the result up: holding
//! it would keep every such output twice.

use std::sync::Mutex;

use candle_core::{CpuStorage, Shape, Tensor};

/// A precomputed result, taken once by the op's forward. It must own its storage from
/// offset 0 (a fresh op result, as every caller passes): the CPU copy clones the buffer.
pub(crate) struct PrecomputedOutput {
    output: Mutex<Option<Tensor>>,
    /// The op's name, for errors.
    op: &'static str,
}

impl PrecomputedOutput {
    pub(crate) fn new(output: Tensor, op: &'static str) -> Self {
        Self {
            output: Mutex::new(Some(output)),
            op,
        }
    }

    fn take(&self) -> candle_core::Result<Tensor> {
        self.output
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{}: poisoned", self.op)))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: forward ran twice", self.op)))
    }

    /// The forward of a CPU op: a copy of the result's storage.
    pub(crate) fn take_cpu(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let output = self.take()?;
        let (storage, layout) = output.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(s) => Ok((s.try_clone(layout)?, output.shape().clone())),
            _ => candle_core::bail!("{}: the output is not on the cpu", self.op),
        }
    }

    /// The forward of a CUDA op: a copy of the result's storage.
    #[cfg(feature = "cuda")]
    pub(crate) fn take_cuda(&self) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let output = self.take()?;
        let (storage, layout) = output.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cuda(s) => Ok((s.try_clone(layout)?, output.shape().clone())),
            _ => candle_core::bail!("{}: the output is not on the gpu", self.op),
        }
    }
}
