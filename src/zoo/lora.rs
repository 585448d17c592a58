//! LoRA adapters: their parameters, and their forward beside a layer's base.

use candle_core::{DType, Tensor, Var};
use rand::rngs::StdRng;
use rand::Rng;

use super::linear::{Param, Pass};
use super::ZooError;

/// Low-rank adapter `scale · B(A(dropout(x)))`, PEFT layout: A `[r, in]`, B `[out, r]`.
/// Trainable while a job trains it; frozen (plain tensors) when served unmerged.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub a: Param,
    pub b: Param,
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
            a: Param::Trainable(a),
            b: Param::Trainable(b),
            scale: alpha / rank as f64,
            dropout,
        })
    }

    /// `scale · B · A`, shaped like the base weight.
    pub fn delta_weight(&self) -> Result<Tensor, ZooError> {
        Ok((self.b.tensor().matmul(self.a.tensor())? * self.scale)?)
    }

    /// Both factors as plain tensors (see [`Param::freeze`]), for serving unmerged.
    pub fn freeze(&mut self) {
        self.a.freeze();
        self.b.freeze();
    }
}

/// `base_out + scale · B(A(dropout(x2)))`. On CPU the scale goes on the `[rows, r]`
/// low-rank activations and the up-projection accumulates into the base output in its
/// own product, where the composed form scaled and added two `[rows, out]` tensors.
pub(super) fn lora_update(
    lora: &LoraAdapter,
    x2: &Tensor,
    base_out: Tensor,
    pass: Pass,
) -> Result<Tensor, ZooError> {
    let train_dropout = pass == Pass::Train && lora.dropout > 0.0;
    if super::fused::uses_fused_kernels(x2) && super::fused::uses_fused_kernels(&base_out) {
        use super::cpu::linear_op::{linear, linear_add};
        let lora_in = if train_dropout {
            super::cpu::dropout::dropout(x2, lora.dropout as f32)?
        } else {
            x2.clone()
        };
        let low = (linear(&lora_in, lora.a.tensor(), None)? * lora.scale)?;
        return Ok(linear_add(&base_out, &low, lora.b.tensor())?);
    }
    let lora_in = if train_dropout {
        super::cpu::dropout::seeded_dropout_any_device(x2, lora.dropout as f32)?
    } else {
        x2.clone()
    };
    let low = lora_in.matmul(&lora.a.tensor().t()?)?;
    let up = low.matmul(&lora.b.tensor().t()?)?;
    Ok((base_out + (up * lora.scale)?)?)
}

/// The whole layer as one fused op ([`super::cpu::lora_linear`]) when it can be: a frozen
/// f32 base on the CPU, a frozen bias or none, and no LoRA dropout in this pass. `None`
/// leaves the layer to the base op plus [`lora_update`].
pub(super) fn fused_lora_forward(
    lora: &LoraAdapter,
    x2: &Tensor,
    weight: &Param,
    bias: Option<&Param>,
    pass: Pass,
) -> Result<Option<Tensor>, ZooError> {
    let (Param::Frozen(weight), None | Some(Param::Frozen(_))) = (weight, bias) else {
        return Ok(None);
    };
    let dropout = pass == Pass::Train && lora.dropout > 0.0;
    if dropout || !super::fused::uses_fused_kernels(x2) || !super::fused::uses_fused_kernels(weight)
    {
        return Ok(None);
    }
    Ok(Some(super::cpu::lora_linear::lora_linear(
        x2,
        weight,
        bias.map(Param::tensor),
        (lora.a.tensor(), lora.b.tensor()),
        lora.scale,
    )?))
}
