//! `TrainLinear`: the one linear layer of every trainable model.
//!
//! The base weight is either frozen (LoRA) or a trainable `Var` (full fine-tuning). A
//! frozen base goes through [`FrozenLinearGrad`], a custom op that only propagates the
//! input gradient: a plain matmul against a frozen tensor makes candle compute (and keep)
//! a full dW for every frozen weight, measured 25% slower and much larger in memory.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, Var};
use rand::rngs::StdRng;
use rand::Rng;

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
}

/// Where the base weight lives. A quantized frozen base (QLoRA: quantized forward,
/// dequantize-on-the-fly backward) will be a third variant.
#[derive(Debug, Clone)]
pub enum LinearBase {
    /// `W` is `[out, in]`, as in PyTorch / Hugging Face checkpoints.
    Dense(Param),
}

/// Low-rank adapter `scale · B(A(dropout(x)))`, PEFT layout: A `[r, in]`, B `[out, r]`.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
}

impl LoraAdapter {
    /// A Kaiming-uniform (PEFT: `kaiming_uniform_(a=√5)`, bound 1/√in), B zeros, so a fresh
    /// adapter leaves the base output unchanged. Seeded because candle's CPU RNG is not.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        rank: usize,
        alpha: f64,
        dropout: f64,
        rng: &mut StdRng,
        device: &candle_core::Device,
    ) -> Result<Self, ZooError> {
        if rank == 0 {
            return Err(ZooError::Config("LoRA rank must be > 0".into()));
        }
        let bound = 1.0 / (in_dim as f32).sqrt();
        let a_data: Vec<f32> = (0..rank * in_dim)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Var::from_tensor(&Tensor::from_vec(a_data, (rank, in_dim), device)?)?;
        let b = Var::zeros((out_dim, rank), DType::F32, device)?;
        Ok(Self {
            a,
            b,
            scale: alpha / rank as f64,
            dropout,
        })
    }

    /// `scale · B · A`, shaped like the base weight.
    pub fn delta_weight(&self) -> Result<Tensor, ZooError> {
        Ok((self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?)
    }
}

#[derive(Debug, Clone)]
pub struct TrainLinear {
    base: LinearBase,
    bias: Option<Param>,
    lora: Option<LoraAdapter>,
}

impl TrainLinear {
    pub fn new(weight: Param, bias: Option<Param>) -> Self {
        Self {
            base: LinearBase::Dense(weight),
            bias,
            lora: None,
        }
    }

    pub fn with_lora(mut self, lora: LoraAdapter) -> Self {
        self.lora = Some(lora);
        self
    }

    pub fn weight(&self) -> &Param {
        match &self.base {
            LinearBase::Dense(w) => w,
        }
    }

    pub fn bias(&self) -> Option<&Param> {
        self.bias.as_ref()
    }

    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    pub fn out_dim(&self) -> Result<usize, ZooError> {
        Ok(self.weight().tensor().dim(0)?)
    }

    /// `x [.., in] -> [.., out]`; dropout on the LoRA input only when `train`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor, ZooError> {
        let dims = x.dims().to_vec();
        let in_dim = *dims
            .last()
            .ok_or_else(|| ZooError::Unsupported("linear input must have rank >= 1".into()))?;
        let rows = x.elem_count() / in_dim.max(1);
        // 2-D matmuls are what gemm is fastest at; reshape of a contiguous input is free.
        let x2 = x.reshape((rows, in_dim))?;
        let mut out = self.base_forward(&x2)?;
        if let Some(lora) = &self.lora {
            let lora_in = if train && lora.dropout > 0.0 {
                candle_nn::ops::dropout(&x2, lora.dropout as f32)?
            } else {
                x2.clone()
            };
            let low = lora_in.matmul(&lora.a.as_tensor().t()?)?;
            let up = low.matmul(&lora.b.as_tensor().t()?)?;
            out = (out + (up * lora.scale)?)?;
        }
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.out_dim()?;
        Ok(out.reshape(out_dims)?)
    }

    fn base_forward(&self, x2: &Tensor) -> Result<Tensor, ZooError> {
        let LinearBase::Dense(weight) = &self.base;
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
        Ok(x2.apply_op1(FrozenLinearGrad {
            output: out,
            weight: w.clone(),
        })?)
    }

    /// Fold the adapter into the base (`W + (α/r)·B·A`) and drop it; the result is frozen.
    pub fn merge(&mut self) -> Result<(), ZooError> {
        if let Some(lora) = self.lora.take() {
            let merged = (self.weight().tensor() + lora.delta_weight()?)?;
            self.base = LinearBase::Dense(Param::Frozen(merged));
        }
        Ok(())
    }

    /// The weight as it would be after merging (for exports), without changing `self`.
    pub fn merged_weight(&self) -> Result<Tensor, ZooError> {
        let w = self.weight().tensor();
        match &self.lora {
            Some(lora) => Ok((w + lora.delta_weight()?)?),
            None => Ok(w.clone()),
        }
    }

    pub fn parameter_bytes(&self) -> usize {
        let mut n = self.weight().tensor().elem_count();
        n += self.bias.as_ref().map_or(0, |b| b.tensor().elem_count());
        if let Some(l) = &self.lora {
            n += l.a.elem_count() + l.b.elem_count();
        }
        n * 4
    }
}

/// "Output computed elsewhere, gradient for the input only": forward returns a copy of the
/// precomputed `x·Wᵀ + b`, backward gives `grad_out · W` and never touches dW.
struct FrozenLinearGrad {
    output: Tensor,
    weight: Tensor,
}

impl CustomOp1 for FrozenLinearGrad {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (storage, layout) = self.output.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(s) => {
                let copy = s.try_clone(layout)?;
                Ok((copy, self.output.shape().clone()))
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
        let (storage, layout) = self.output.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cuda(s) => {
                let copy = s.try_clone(layout)?;
                Ok((copy, self.output.shape().clone()))
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
        Ok(Some(grad_res.matmul(&self.weight)?.reshape(arg.shape())?))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;

    fn ramp(shape: (usize, usize), step: f32) -> Tensor {
        let n = shape.0 * shape.1;
        let data: Vec<f32> = (0..n).map(|i| ((i % 11) as f32 - 5.0) * step).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn frozen_base_gives_the_plain_input_gradient_and_no_weight_gradient() {
        let w = ramp((3, 4), 0.1);
        let b = ramp((1, 3), 0.05).squeeze(0).unwrap();
        let x = Var::from_tensor(&ramp((2, 4), 0.3)).unwrap();
        let frozen = TrainLinear::new(Param::Frozen(w.clone()), Some(Param::Frozen(b.clone())));
        let y = frozen.forward(x.as_tensor(), true).unwrap();
        let grads = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap();
        assert!(grads.get(&w).is_none());

        let plain = x
            .as_tensor()
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let plain_grads = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let diff = (gx - plain_grads.get(x.as_tensor()).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "input gradient differs by {diff}");
        let dy = (y - plain).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(dy.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn merge_folds_scaled_adapter_into_the_weight() {
        let mut rng = StdRng::seed_from_u64(1);
        let lora = LoraAdapter::new(4, 3, 2, 6.0, 0.0, &mut rng, &Device::Cpu).unwrap();
        assert_eq!(lora.scale, 3.0);
        lora.b.set(&ramp((3, 2), 0.2)).unwrap();
        let mut lin = TrainLinear::new(Param::Frozen(ramp((3, 4), 0.1)), None).with_lora(lora);
        let x = ramp((5, 4), 0.7);
        let before = lin.forward(&x, false).unwrap();
        lin.merge().unwrap();
        assert!(lin.lora().is_none());
        let after = lin.forward(&x, false).unwrap();
        let diff = (before - after).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
