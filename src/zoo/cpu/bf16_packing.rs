//! Frozen bf16 weights repacked for the AMX tile product and back, as candle tensors: what
//! a layer frozen for serving on such a CPU holds in place of its rows
//! (`zoo::linear::LinearBase::PackedBf16`). The layout is `super::bf16_tiled_weight`'s.

use candle_core::{DType, Tensor};
use half::vec::{HalfBitsVecExt, HalfFloatVecExt};

/// `weight [n, k]` (bf16, on the CPU) repacked in the tiles the AMX kernel reads, the same
/// shape and dtype; `None` where the CPU has no AMX or the widths are not whole tiles.
pub fn packed_weight(weight: &Tensor) -> candle_core::Result<Option<Tensor>> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(weight.device().is_cpu() && weight.dtype() == DType::BF16 && weight.rank() == 2) {
            return Ok(None);
        }
        let (n, k) = weight.dims2()?;
        if !(super::bf16_tiles::fits(k, n) && super::bf16_tiles::available()) {
            return Ok(None);
        }
        let bits = bf16_bits(weight)?;
        let Some(packed) = super::bf16_tiled_weight::packed(&bits, n, k) else {
            return Ok(None);
        };
        Ok(Some(bf16_tensor(packed, (n, k))?))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = weight;
        Ok(None)
    }
}

/// The rows of a weight [`packed_weight`] repacked, as they were.
pub fn unpacked_weight(packed: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = packed.dims2()?;
    #[cfg(target_arch = "x86_64")]
    {
        let rows = super::bf16_tiled_weight::unpacked(&bf16_bits(packed)?, n, k);
        bf16_tensor(rows, (n, k))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (n, k);
        candle_core::bail!("bf16 packing: no weight is packed on this architecture")
    }
}

fn bf16_bits(weight: &Tensor) -> candle_core::Result<Vec<u16>> {
    let values = weight.flatten_all()?.to_vec1::<half::bf16>()?;
    Ok(values.reinterpret_into())
}

fn bf16_tensor(bits: Vec<u16>, shape: (usize, usize)) -> candle_core::Result<Tensor> {
    let values: Vec<half::bf16> = bits.reinterpret_into();
    Tensor::from_vec(values, shape, &candle_core::Device::Cpu)
}
