//! Serving a frozen bf16 layer on the CPU: `cpu::bf16_product`'s products, and the weight
//! repacked for the AMX tiles where the CPU has them (`LinearBase::PackedBf16`).

use candle_core::Tensor;

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
    /// packed for the tiles in one pass over the pool where they all are and serving sends
    /// f32 rows (`cpu::bf16_product::packed_bf16_linears`), each on its own otherwise.
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
        let mut outputs = Vec::with_capacity(N);
        let together = match (packed, x.track_op()) {
            (Some(packed), false) => {
                crate::zoo::cpu::bf16_product::packed_bf16_linears(x, &packed)?
            }
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
