//! Serving a frozen bf16 layer on the CPU: `cpu::bf16_product`'s products, and the weight
//! repacked for the AMX tiles where the CPU has them (`LinearBase::PackedBf16`); a quantized
//! layer's q8_0 blocks repacked for `cpu::q8_product`.

use candle_core::{DType, Tensor};

use crate::zoo::cpu::q8_product::{self, PackedQ8};

use super::{LinearBase, Param, Pass, TrainLinear, ZooError};

impl TrainLinear {
    /// Multiplies a frozen bf16 weight with `cpu::bf16_product` from now on (serving); with
    /// `repack`, where the CPU has AMX and the widths are whole tiles, the weight is repacked
    /// in its tiles in place of its rows (not for a weight shared with another module, such
    /// as a tied output layer: the copy would double its bytes).
    pub fn serve_bf16_on_cpu(&mut self, repack: bool) -> Result<(), ZooError> {
        self.bf16_product = true;
        if let (true, None, LinearBase::Dense(Param::Frozen(weight))) =
            (repack, &self.lora, &self.base)
        {
            if let Some(packed) = crate::zoo::cpu::bf16_packing::packed_weight(weight)? {
                self.base = LinearBase::PackedBf16(packed);
            }
        }
        Ok(())
    }

    /// Multiplies a quantized weight as serving does from now on: q8_0 blocks on a CPU with
    /// AVX512-VNNI repacked for `cpu::q8_product` (`QuantizedWeight::packed_for_cpu_serving`).
    pub fn serve_quantized_on_cpu(&mut self) -> Result<(), ZooError> {
        if let LinearBase::Quantized(q) = &self.base {
            self.base = LinearBase::Quantized(q.clone().packed_for_cpu_serving()?);
        }
        Ok(())
    }

    /// The base of a weight packed for serving: `cpu::bf16_product`'s tile product for f32
    /// rows on the CPU (what serving sends), else (any other input) through the rows
    /// unpacked, so that no caller ever multiplies the packed order.
    pub(super) fn packed_forward(&self, packed: &Tensor, x2: &Tensor) -> Result<Tensor, ZooError> {
        let product = match x2.track_op() {
            false => crate::zoo::cpu::bf16_product::packed_bf16_linears(x2, &[packed])?,
            true => None,
        };
        let out = match product.and_then(|mut outputs| outputs.pop()) {
            Some(out) => out,
            None => {
                let weight = crate::zoo::cpu::bf16_packing::unpacked_weight(packed)?;
                x2.detach().matmul(&weight.to_dtype(x2.dtype())?.t()?)?
            }
        };
        self.with_bias(out)
    }

    /// `linears[i].forward_pass(x, pass)` for each: the products of layers whose weights are
    /// packed for the tiles, or repacked q8_0 blocks, in one pass over the pool where they
    /// all are and serving sends f32 rows (`cpu::bf16_product::packed_bf16_linears`,
    /// `cpu::q8_product::q8_linears`: the rows quantized once for all), each on its own
    /// otherwise.
    pub fn forward_together<const N: usize>(
        linears: [&TrainLinear; N],
        x: &Tensor,
        pass: Pass,
    ) -> Result<[Tensor; N], ZooError> {
        let packed: Option<Vec<&Tensor>> = linears
            .iter()
            .map(|linear| match (&linear.base, &linear.lora) {
                (LinearBase::PackedBf16(packed), None) => Some(packed),
                _ => None,
            })
            .collect();
        let q8: Option<Vec<&PackedQ8>> = linears
            .iter()
            .map(|linear| match (&linear.base, &linear.lora) {
                (LinearBase::Quantized(q), None) => q.packed_q8(),
                _ => None,
            })
            .collect();
        let f32_rows = x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op();
        let mut outputs = Vec::with_capacity(N);
        let together = match (packed, q8, x.track_op()) {
            (Some(packed), _, false) => {
                crate::zoo::cpu::bf16_product::packed_bf16_linears(x, &packed)?
            }
            (_, Some(q8), _) if f32_rows => Some(q8_product::q8_linears(x, &q8)?),
            _ => None,
        };
        match together {
            Some(products) => {
                for (linear, out) in linears.iter().zip(products) {
                    outputs.push(linear.with_bias(out)?);
                }
            }
            None => {
                for linear in linears {
                    outputs.push(linear.forward_pass(x, pass)?);
                }
            }
        }
        outputs
            .try_into()
            .map_err(|_| ZooError::Unsupported("a product went missing".into()))
    }

    fn with_bias(&self, out: Tensor) -> Result<Tensor, ZooError> {
        match &self.bias {
            Some(b) => Ok(out.broadcast_add(&b.tensor().detach().to_dtype(out.dtype())?)?),
            None => Ok(out),
        }
    }
}
