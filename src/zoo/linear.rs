//! `TrainLinear`: the one linear layer of every trainable model.
//!
//! The base weight is either frozen (LoRA) or a trainable `Var` (full fine-tuning). A
//! frozen base goes through [`FrozenLinearGrad`], a custom op that only propagates the
//! input gradient: a plain matmul against a frozen tensor makes candle compute (and keep)
//! a full dW for every frozen weight, measured 25% slower and much larger in memory.
//! A quantized frozen base (QLoRA) multiplies through candle's `QMatMul`, whose own op has
//! no backward at all; the same custom op re-attaches the input gradient, computed from a
//! weight dequantized on the fly so no f32 copy of the base stays resident.

use candle_core::{DType, Tensor, Var};

pub use super::decoder::QuantKind;
pub use super::lora::LoraAdapter;
use super::lora::{fused_lora_forward, lora_update};
pub use super::quantized_weight::{QuantizedWeight, GPU_QUANTIZED_ROWS};
use super::ZooError;

/// A weight or bias that is either frozen (plain tensor, no gradient) or trainable.
#[derive(Debug, Clone)]
pub enum Param {
    Frozen(Tensor),
    Trainable(Var),
}

impl Param {
    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Frozen(t) => t,
            Param::Trainable(v) => v.as_tensor(),
        }
    }

    pub fn is_trainable(&self) -> bool {
        matches!(self, Param::Trainable(_))
    }

    /// The var a trainable value lives in; `None` once frozen.
    pub fn as_var(&self) -> Option<&Var> {
        match self {
            Param::Frozen(_) => None,
            Param::Trainable(var) => Some(var),
        }
    }

    /// Makes the value a plain tensor with no autograd history. Candle records every op
    /// that touches a var or a tensor computed from one, so a model served with vars keeps
    /// each request's whole forward graph alive until the output is dropped.
    pub fn freeze(&mut self) {
        let detached = self.tensor().detach();
        *self = Param::Frozen(detached);
    }
}

/// What freezing a model for inference does with its LoRA adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedAdapters {
    /// Folded into the base weights: one product per layer, a copy of the weights per model.
    Merged,
    /// Kept beside the base weights (frozen too): a base shared by many adapters is never
    /// written to, at the price of the low-rank products.
    Unmerged,
}

/// Where the base weight lives.
#[derive(Debug, Clone)]
pub enum LinearBase {
    /// `W` is `[out, in]`, as in PyTorch / Hugging Face checkpoints.
    Dense(Param),
    /// QLoRA: always frozen; quantized forward, dequantize-on-the-fly backward.
    Quantized(QuantizedWeight),
    /// Frozen for serving on a CPU with AMX: the bf16 `[out, in]` weight repacked in the
    /// tiles `cpu::bf16_packing::packed_weight` makes (same shape, rows not in order), read
    /// only by that product; [`TrainLinear::base_weight`] gives the rows back.
    PackedBf16(Tensor),
}

/// How a forward pass runs a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Training: LoRA dropout on.
    Train,
    /// Evaluation: adapters applied, no dropout.
    Eval,
    /// The frozen base alone: adapters skipped and the input detached, so the pass records
    /// no gradient. With LoRA this is the model before fine-tuning (DPO's reference model)
    /// without a second copy of the weights.
    BaseOnly,
}

impl Pass {
    /// `Train` or `Eval`.
    pub fn training(train: bool) -> Self {
        if train {
            Pass::Train
        } else {
            Pass::Eval
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrainLinear {
    base: LinearBase,
    bias: Option<Param>,
    lora: Option<LoraAdapter>,
    /// Mixed precision: the dtype the base's matmul runs in (bf16), the input cast to it
    /// and the output back; the weight is stored in it when frozen, and cast from its f32
    /// master copy on every pass when trainable. `None`: the input's dtype.
    compute_dtype: Option<DType>,
    /// Served (set by [`TrainLinear::serve_bf16_on_cpu`]): a frozen bf16 weight is multiplied
    /// on the CPU by `cpu::bf16_product` (f32 sums, f32 output) rather than candle's bf16
    /// matmul. Only for serving: a training run's frozen passes (DPO's reference) keep the
    /// same arithmetic as its tracked ones.
    bf16_product: bool,
}

impl TrainLinear {
    pub fn new(weight: Param, bias: Option<Param>) -> Self {
        Self {
            base: LinearBase::Dense(weight),
            bias,
            lora: None,
            compute_dtype: None,
            bf16_product: false,
        }
    }

    /// The dtype the base's matmul runs in, when not the input's (mixed precision).
    pub fn compute_dtype(&self) -> Option<DType> {
        self.compute_dtype
    }

    /// Runs the dense base's matmul in `dtype` (see [`TrainLinear`]'s `compute_dtype`); a
    /// quantized base keeps its own kernels.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        if matches!(self.base, LinearBase::Dense(_)) {
            self.compute_dtype = Some(dtype);
        }
        self
    }

    /// A frozen base quantized from `weight` (f32 `[out, in]`, `in` a multiple of 32, the
    /// block size of both formats), on `weight`'s device.
    pub fn quantized(
        weight: &Tensor,
        bias: Option<Param>,
        kind: QuantKind,
    ) -> Result<TrainLinear, ZooError> {
        Ok(Self {
            base: LinearBase::Quantized(QuantizedWeight::quantize(weight, kind)?),
            bias,
            lora: None,
            compute_dtype: None,
            bf16_product: false,
        })
    }

    /// A frozen base of blocks already made (a GGUF file's).
    pub fn from_quantized(weight: QuantizedWeight, bias: Option<Param>) -> TrainLinear {
        Self {
            base: LinearBase::Quantized(weight),
            bias,
            lora: None,
            compute_dtype: None,
            bf16_product: false,
        }
    }

    pub fn with_lora(mut self, lora: LoraAdapter) -> Self {
        self.lora = Some(lora);
        self
    }

    /// The dense base weight; an error for a quantized base, which has none (use
    /// [`Self::base_weight`] or [`Self::merged_weight`] for its values).
    pub fn weight(&self) -> Result<&Param, ZooError> {
        match &self.base {
            LinearBase::Dense(w) => Ok(w),
            LinearBase::Quantized(q) => Err(ZooError::Unsupported(format!(
                "a {} base has no dense weight",
                q.format_name()
            ))),
            LinearBase::PackedBf16(_) => Err(ZooError::Unsupported(
                "a weight packed for serving has no dense rows (use base_weight)".into(),
            )),
        }
    }

    pub fn base(&self) -> &LinearBase {
        &self.base
    }

    /// The base weight's values as f32 `[out, in]` (dequantized for a quantized base).
    pub fn base_weight(&self) -> Result<Tensor, ZooError> {
        match &self.base {
            LinearBase::Dense(w) => Ok(w.tensor().to_dtype(DType::F32)?),
            LinearBase::Quantized(q) => q.dequantize(),
            LinearBase::PackedBf16(packed) => {
                Ok(super::cpu::bf16_packing::unpacked_weight(packed)?.to_dtype(DType::F32)?)
            }
        }
    }

    pub fn bias(&self) -> Option<&Param> {
        self.bias.as_ref()
    }

    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    /// The tensors of this layer a backward gives gradients to: a trainable weight and
    /// bias, the adapter's A and B.
    pub fn trainable_tensors(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        if let LinearBase::Dense(w) = &self.base {
            if w.is_trainable() {
                out.push(w.tensor().clone());
            }
        }
        if let Some(b) = self.bias.as_ref().filter(|b| b.is_trainable()) {
            out.push(b.tensor().clone());
        }
        if let Some(lora) = &self.lora {
            for factor in [&lora.a, &lora.b] {
                if factor.is_trainable() {
                    out.push(factor.tensor().clone());
                }
            }
        }
        out
    }

    pub fn out_dim(&self) -> Result<usize, ZooError> {
        match &self.base {
            LinearBase::Dense(w) => Ok(w.tensor().dim(0)?),
            LinearBase::Quantized(q) => Ok(q.dims().0),
            LinearBase::PackedBf16(packed) => Ok(packed.dim(0)?),
        }
    }

    pub fn in_dim(&self) -> Result<usize, ZooError> {
        match &self.base {
            LinearBase::Dense(w) => Ok(w.tensor().dim(1)?),
            LinearBase::Quantized(q) => Ok(q.dims().1),
            LinearBase::PackedBf16(packed) => Ok(packed.dim(1)?),
        }
    }

    /// `x [.., in] -> [.., out]`; dropout on the LoRA input only when `train`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor, ZooError> {
        self.forward_pass(x, Pass::training(train))
    }

    /// `x [.., in] -> [.., out]` in the given [`Pass`].
    pub fn forward_pass(&self, x: &Tensor, pass: Pass) -> Result<Tensor, ZooError> {
        let detached;
        let x = if pass == Pass::BaseOnly {
            detached = x.detach();
            &detached
        } else {
            x
        };
        let dims = x.dims().to_vec();
        let in_dim = *dims
            .last()
            .ok_or_else(|| ZooError::Unsupported("linear input must have rank >= 1".into()))?;
        let rows = x.elem_count() / in_dim.max(1);
        // 2-D matmuls are what gemm is fastest at. A reshape costs nothing forward but is a
        // graph node, whose backward candle runs as a zero-filled gradient plus an addition
        // over the whole tensor, so an input that is already 2-D is used as it is.
        let x2 = if dims.len() == 2 {
            x.clone()
        } else {
            x.reshape((rows, in_dim))?
        };
        let fused = match (&self.lora, &self.base) {
            (Some(lora), LinearBase::Dense(weight)) if pass != Pass::BaseOnly => {
                fused_lora_forward(lora, &x2, weight, self.bias.as_ref(), pass)?
            }
            _ => None,
        };
        let out = match (fused, pass) {
            (Some(out), _) => out,
            // A trainable base is detached too: nothing of this pass reaches a gradient.
            (None, Pass::BaseOnly) => self.detached_base_forward(&x2)?,
            (None, Pass::Train | Pass::Eval) => {
                let base = self.base_forward(&x2)?;
                match &self.lora {
                    Some(lora) => lora_update(lora, &x2, base, pass)?,
                    None => base,
                }
            }
        };
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.out_dim()?;
        if out.dims() == out_dims.as_slice() {
            return Ok(out);
        }
        Ok(out.reshape(out_dims)?)
    }

    fn base_forward(&self, x2: &Tensor) -> Result<Tensor, ZooError> {
        let weight = match &self.base {
            LinearBase::Dense(weight) => weight,
            LinearBase::Quantized(q) => return self.quantized_forward(q, x2),
            LinearBase::PackedBf16(packed) => return self.packed_forward(packed, x2),
        };
        if let Some(dtype) = self.compute_dtype.filter(|d| *d != x2.dtype()) {
            return self.autocast_forward(x2, weight, dtype);
        }
        if super::fused::uses_fused_kernels(x2) && super::fused::uses_fused_kernels(weight.tensor())
        {
            // One op whose backward computes only the gradients that are tracked: for a
            // frozen weight that is the input's alone, as `FrozenLinearGrad` gives it.
            return Ok(super::cpu::linear_op::linear(
                x2,
                weight.tensor(),
                self.bias.as_ref().map(Param::tensor),
            )?);
        }
        let bias_trainable = self.bias.as_ref().is_some_and(Param::is_trainable);
        if weight.is_trainable() || bias_trainable {
            let mut out = x2.matmul(&weight.tensor().t()?)?;
            if let Some(b) = &self.bias {
                out = out.broadcast_add(b.tensor())?;
            }
            return Ok(out);
        }
        // Frozen: compute on detached tensors, then attach only the input gradient.
        let w = weight.tensor();
        let mut out = x2.detach().matmul(&w.t()?)?;
        if let Some(b) = &self.bias {
            out = out.broadcast_add(b.tensor())?;
        }
        if !x2.track_op() {
            return Ok(out);
        }
        Ok(x2.apply_op1(FrozenLinearGrad::new(out, GradWeight::Dense(w.clone())))?)
    }

    /// `x·Wᵀ (+ b)` with the product in `dtype` (mixed precision): the input and a trainable
    /// weight's master copy are cast to it (candle's cast is differentiable, so the f32 master
    /// gets the gradient), a frozen weight is already stored in it and only the input's
    /// gradient is attached, in bf16 too. The result and the f32 bias are added in the
    /// input's dtype.
    fn autocast_forward(
        &self,
        x2: &Tensor,
        weight: &Param,
        dtype: DType,
    ) -> Result<Tensor, ZooError> {
        let out = if weight.is_trainable() {
            let w = weight.tensor().to_dtype(dtype)?;
            x2.to_dtype(dtype)?.matmul(&w.t()?)?.to_dtype(x2.dtype())?
        } else {
            let w = weight.tensor().to_dtype(dtype)?;
            if self.bf16_product && !x2.track_op() && super::cpu::bf16_product::takes(x2, &w) {
                // Serving bf16 on the CPU: the weight read as bf16, the sums in f32.
                let out = super::cpu::bf16_product::bf16_linear(x2, &w)?;
                return Ok(match &self.bias {
                    Some(b) => out.broadcast_add(b.tensor())?,
                    None => out,
                });
            }
            let out = x2
                .detach()
                .to_dtype(dtype)?
                .matmul(&w.t()?)?
                .to_dtype(x2.dtype())?;
            if x2.track_op() {
                x2.apply_op1(FrozenLinearGrad::new(out, GradWeight::Dense(w)))?
            } else {
                out
            }
        };
        match &self.bias {
            Some(b) => Ok(out.broadcast_add(b.tensor())?),
            None => Ok(out),
        }
    }

    /// The base on detached weights (`x2` is already detached): a graph-free result.
    fn detached_base_forward(&self, x2: &Tensor) -> Result<Tensor, ZooError> {
        if let LinearBase::PackedBf16(packed) = &self.base {
            return self.packed_forward(packed, &x2.detach());
        }
        if let (Some(dtype), LinearBase::Dense(weight)) = (self.compute_dtype, &self.base) {
            if dtype != x2.dtype() {
                let frozen = Param::Frozen(weight.tensor().detach());
                let out = self.autocast_forward(&x2.detach(), &frozen, dtype)?;
                return Ok(out.detach());
            }
        }
        if let LinearBase::Dense(weight) = &self.base {
            if super::fused::uses_fused_kernels(x2)
                && super::fused::uses_fused_kernels(weight.tensor())
            {
                // The product the training passes run (OpenBLAS where it is installed), so
                // that this pass with the adapters off equals theirs with zero adapters to
                // the bit: DPO's loss starts at exactly ln 2.
                let bias = self.bias.as_ref().map(|b| b.tensor().detach());
                return Ok(super::cpu::linear_op::linear(
                    &x2.detach(),
                    &weight.tensor().detach(),
                    bias.as_ref(),
                )?);
            }
        }
        let mut out = match &self.base {
            LinearBase::Dense(weight) => x2.matmul(&weight.tensor().detach().t()?)?,
            LinearBase::Quantized(q) => q.forward(&x2.contiguous()?)?,
            LinearBase::PackedBf16(packed) => return self.packed_forward(packed, x2),
        };
        if let Some(b) = &self.bias {
            out = out.broadcast_add(&b.tensor().detach())?;
        }
        Ok(out)
    }

    /// `QMatMul` on the detached input (CPU: activations re-quantized to Q8 per call), the
    /// input gradient attached by [`FrozenLinearGrad`]; the bias is added afterwards so a
    /// trainable bias still gets its gradient.
    fn quantized_forward(&self, q: &QuantizedWeight, x2: &Tensor) -> Result<Tensor, ZooError> {
        let mut out = q.forward(&x2.detach().contiguous()?)?;
        if x2.track_op() {
            let weight = GradWeight::Quantized(q.clone());
            out = x2.apply_op1(FrozenLinearGrad::new(out, weight))?;
        }
        if let Some(b) = &self.bias {
            out = out.broadcast_add(b.tensor())?;
        }
        Ok(out)
    }

    /// Fold the adapter into the base (`W + (α/r)·B·A`) and drop it; the result is frozen,
    /// in the matmul dtype (f32 unless mixed precision). A quantized base is dequantized
    /// first, so the merged layer is dense f32.
    pub fn merge(&mut self) -> Result<(), ZooError> {
        if let Some(lora) = self.lora.take() {
            // Detached: the sum of vars would otherwise carry the adapter's graph along.
            // Stored back in the matmul dtype: a bf16 base stays bf16 once merged.
            let merged = (self.base_weight()? + lora.delta_weight()?)?.detach();
            let merged = match self.compute_dtype {
                Some(dtype) => merged.to_dtype(dtype)?,
                None => merged,
            };
            self.base = LinearBase::Dense(Param::Frozen(merged));
        }
        Ok(())
    }

    /// Merges any adapter and freezes the weight (in the matmul dtype) and bias, for
    /// inference.
    pub fn freeze(&mut self) -> Result<(), ZooError> {
        self.freeze_as(ServedAdapters::Merged)
    }

    /// Freezes the weight (in the matmul dtype), bias and adapter for inference, the
    /// adapter merged or kept apart as `adapters` says.
    pub fn freeze_as(&mut self, adapters: ServedAdapters) -> Result<(), ZooError> {
        match adapters {
            ServedAdapters::Merged => self.merge()?,
            ServedAdapters::Unmerged => {
                if let Some(lora) = &mut self.lora {
                    lora.freeze();
                }
            }
        }
        if let LinearBase::Dense(weight) = &mut self.base {
            weight.freeze();
            // A full fine-tune's f32 master, stored in the matmul dtype for serving.
            if let Some(dtype) = self.compute_dtype.filter(|d| *d != weight.tensor().dtype()) {
                *weight = Param::Frozen(weight.tensor().to_dtype(dtype)?);
            }
        }
        if let Some(bias) = &mut self.bias {
            bias.freeze();
        }
        Ok(())
    }

    /// The weight as it would be after merging (for exports), without changing `self`.
    pub fn merged_weight(&self) -> Result<Tensor, ZooError> {
        let w = self.base_weight()?;
        match &self.lora {
            Some(lora) => Ok((w + lora.delta_weight()?)?),
            None => Ok(w),
        }
    }

    /// Resident bytes: f32 for dense tensors, the block storage for a quantized base.
    pub fn parameter_bytes(&self) -> usize {
        let base = match &self.base {
            LinearBase::Dense(w) => w.tensor().elem_count() * w.tensor().dtype().size_in_bytes(),
            LinearBase::Quantized(q) => q.storage_bytes(),
            LinearBase::PackedBf16(packed) => packed.elem_count() * packed.dtype().size_in_bytes(),
        };
        let mut n = self.bias.as_ref().map_or(0, |b| b.tensor().elem_count());
        if let Some(l) = &self.lora {
            n += l.a.tensor().elem_count() + l.b.tensor().elem_count();
        }
        base + n * 4
    }
}

#[path = "frozen_linear_grad.rs"]
mod frozen_linear_grad;
use frozen_linear_grad::{FrozenLinearGrad, GradWeight};

#[cfg(test)]
#[path = "linear_quant_tests.rs"]
mod quant_tests;

#[cfg(test)]
#[path = "linear_pass_tests.rs"]
mod pass_tests;

#[path = "linear_serving.rs"]
mod serving;

#[cfg(test)]
#[path = "linear_tests.rs"]
mod tests;
