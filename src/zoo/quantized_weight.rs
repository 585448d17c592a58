//! A frozen quantized weight (`--serve-dtype q8_0|q4_0`, QLoRA's base) and how it multiplies.
//!
//! On the CPU the weight is stored as consecutive parts of its output rows, one per core,
//! each multiplied by candle's quantized matmul on a thread of temper's rayon pool. candle
//! runs that matmul on its own barrier pool, which temper keeps to one thread on machines
//! of up to four cores (`runtime::tune_for_cpu_training`: its spinning threads cost training
//! half its speed), so a single weight multiplied on one core: served as q8_0, 32 streams of
//! SmolLM2 made 73 tokens/s against 276 for f32 (`bench/serving.py`). The parts hold the
//! same blocks as one whole weight would (q8_0 and q4_0 quantize each row on its own), so
//! the product is the same, column for column. Served q8_0 on a CPU with AVX512-VNNI is
//! repacked for `cpu::q8_product` instead ([`QuantizedWeight::packed_for_cpu_serving`]).

use std::sync::Arc;

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Module, Tensor, D};
use rayon::prelude::*;

use super::cpu::q8_product::{self, PackedQ8};
use super::decoder::QuantKind;
use super::ZooError;

/// Fewest output rows a part of a CPU weight holds: below it the split costs more than it
/// parallelizes.
const MIN_PART_ROWS: usize = 64;

/// The most rows a GPU batch multiplies by candle's quantized kernels (its matrix-vector
/// kernels, which take the activations as they are); see [`QuantizedWeight::forward`].
pub const GPU_QUANTIZED_ROWS: usize = 8;

fn ggml_dtype(kind: QuantKind) -> GgmlDType {
    match kind {
        QuantKind::Q4_0 => GgmlDType::Q4_0,
        QuantKind::Q4_1 => GgmlDType::Q4_1,
        QuantKind::Q8_0 => GgmlDType::Q8_0,
    }
}

/// From how many rows a CPU product of `format` blocks with `in_dim` inputs is faster
/// through f32 (the blocks dequantized for the call, then the dense product) than through
/// candle's quantized matmul, which quantizes the activations and takes each row's dot
/// products in turn: its cost grows with the rows, dequantizing does not. Measured with
/// `examples/quantized_speed.rs` (2 cores, candle 0.11.1, SmolLM2's 576/1536 shapes and
/// 512-wide ones): q4_1 has no vectorised dot product there and loses from 2 rows (2 rows:
/// 1.0 ms against 0.7 dequantized, 32 rows: 15.2 against 1.5); q4_0 from 16 (2.1 against
/// 1.3 ms); q8_0 from 32 rows (3.1 against 1.6 ms at 576) unless the input is a multiple of
/// 256, where its matmul is 3× faster and only loses from about 256 rows, like the k-quants.
/// The two ways agree to the format's rounding of the activations, not to the bit.
fn dequantized_from_rows(format: GgmlDType, in_dim: usize) -> usize {
    match format {
        GgmlDType::Q4_1 => 2,
        GgmlDType::Q4_0 => 16,
        GgmlDType::Q8_0 if !in_dim.is_multiple_of(256) => 32,
        _ => 256,
    }
}

/// A frozen quantized weight `[out, in]`: its blocks, in parts of consecutive output rows,
/// or (q8_0 served on a CPU with AVX512-VNNI) repacked for `cpu::q8_product`.
#[derive(Debug, Clone)]
pub struct QuantizedWeight {
    blocks: Blocks,
    /// The block format (one of [`QuantKind`]'s, or any a GGUF file stores).
    format: GgmlDType,
    dims: (usize, usize),
}

#[derive(Debug, Clone)]
enum Blocks {
    /// candle's blocks, in parts of consecutive output rows.
    Parts(Vec<QuantizedPart>),
    /// The q8_0 blocks repacked for `cpu::q8_product` (see [`QuantizedWeight::packed_for_cpu_serving`]).
    PackedQ8(Arc<PackedQ8>),
}

#[derive(Debug, Clone)]
struct QuantizedPart {
    qtensor: Arc<QTensor>,
    matmul: QMatMul,
}

impl QuantizedPart {
    fn new(weight: &Tensor, kind: QuantKind) -> Result<Self, ZooError> {
        Self::of(QTensor::quantize(weight, ggml_dtype(kind))?)
    }

    fn of(qtensor: QTensor) -> Result<Self, ZooError> {
        let qtensor = Arc::new(qtensor);
        let matmul = QMatMul::from_arc(qtensor.clone())?;
        Ok(Self { qtensor, matmul })
    }
}

/// How many parts of at least [`MIN_PART_ROWS`] rows `rows` are stored in, at most `parts`,
/// and the rows of each but the last.
fn part_rows(rows: usize, parts: usize) -> usize {
    let parts = parts.min(rows / MIN_PART_ROWS).max(1);
    rows.div_ceil(parts).max(1)
}

impl QuantizedWeight {
    /// `weight` (f32 `[out, in]`) quantized on its device: in one part per thread of the
    /// rayon pool on the CPU, whole elsewhere.
    pub fn quantize(weight: &Tensor, kind: QuantKind) -> Result<Self, ZooError> {
        let parts = if weight.device().is_cpu() {
            rayon::current_num_threads()
        } else {
            1
        };
        Self::quantize_in_parts(weight, kind, parts)
    }

    /// `weight` quantized in up to `parts` parts of at least [`MIN_PART_ROWS`] rows each;
    /// its input dimension must be a multiple of the format's block (32 for both).
    pub(super) fn quantize_in_parts(
        weight: &Tensor,
        kind: QuantKind,
        parts: usize,
    ) -> Result<Self, ZooError> {
        let dims = weight.dims2()?;
        let block = ggml_dtype(kind).block_size();
        if dims.1 % block != 0 {
            return Err(ZooError::Unsupported(format!(
                "{} needs an input dimension divisible by {block}, got {}",
                kind.as_str(),
                dims.1
            )));
        }
        let rows_per_part = part_rows(dims.0, parts);
        let parts = (0..dims.0)
            .step_by(rows_per_part)
            .map(|start| {
                let rows = rows_per_part.min(dims.0 - start);
                // Storage of its own: `QTensor::quantize` reads a tensor's storage from its
                // start, whatever offset a narrowed view begins at (and `copy` keeps it).
                let part = weight.narrow(0, start, rows)?.force_contiguous()?;
                QuantizedPart::new(&part, kind)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            blocks: Blocks::Parts(parts),
            format: ggml_dtype(kind),
            dims,
        })
    }

    /// A weight from blocks already made (a GGUF file's `[out, in]` tensor, on the CPU),
    /// its output rows in the order `rows` gives (row `i` of the result is row `rows[i]`
    /// of `blocks`; every row once), stored as [`Self::quantize`] stores it: in parts on
    /// `device` when it is the CPU, whole elsewhere. The blocks are kept as they are.
    pub fn from_blocks(
        blocks: &QTensor,
        rows: Option<&[usize]>,
        device: &candle_core::Device,
    ) -> Result<Self, ZooError> {
        let dims = blocks.shape().dims2()?;
        let format = blocks.dtype();
        let row_bytes = dims.1 / format.block_size() * format.type_size();
        let data = blocks.data()?;
        if data.len() != dims.0 * row_bytes {
            return Err(ZooError::Unsupported(format!(
                "{format:?} blocks of {} bytes for {dims:?}",
                data.len()
            )));
        }
        let order: Vec<usize> = match rows {
            Some(rows) => rows.to_vec(),
            None => (0..dims.0).collect(),
        };
        if order.len() != dims.0 || order.iter().any(|&r| r >= dims.0) {
            return Err(ZooError::Config(format!(
                "a row order of {} rows for {} rows",
                order.len(),
                dims.0
            )));
        }
        let parts = if device.is_cpu() {
            rayon::current_num_threads()
        } else {
            1
        };
        let parts = order
            .chunks(part_rows(dims.0, parts))
            .map(|chunk| {
                let mut bytes = Vec::with_capacity(chunk.len() * row_bytes);
                for &row in chunk {
                    bytes.extend_from_slice(&data[row * row_bytes..(row + 1) * row_bytes]);
                }
                let storage = QStorage::from_data(Cow::Owned(bytes), device, format)?;
                QuantizedPart::of(QTensor::new(storage, (chunk.len(), dims.1))?)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            blocks: Blocks::Parts(parts),
            format,
            dims,
        })
    }

    /// The weight as [`Self::forward`] multiplies it when serving: q8_0 blocks on the CPU
    /// repacked for `cpu::q8_product` where the CPU has AVX512-VNNI (its integer dot
    /// products at every row count, in the blocks' bytes), anything else as it is.
    pub fn packed_for_cpu_serving(self) -> Result<Self, ZooError> {
        let Blocks::Parts(parts) = &self.blocks else {
            return Ok(self);
        };
        let on_cpu = parts.iter().all(|part| part.qtensor.device().is_cpu());
        if self.format != GgmlDType::Q8_0 || !on_cpu || !q8_product::available() {
            return Ok(self);
        }
        let mut bytes = Vec::with_capacity(self.storage_bytes());
        for part in parts {
            bytes.extend_from_slice(&part.qtensor.data()?);
        }
        let packed = PackedQ8::from_q8_0(&bytes, self.dims.0, self.dims.1)?;
        Ok(Self {
            blocks: Blocks::PackedQ8(Arc::new(packed)),
            ..self
        })
    }

    /// The q8_0 weight repacked for `cpu::q8_product`, if it is.
    pub fn packed_q8(&self) -> Option<&PackedQ8> {
        match &self.blocks {
            Blocks::PackedQ8(packed) => Some(packed),
            Blocks::Parts(_) => None,
        }
    }

    /// The block format, as ggml names it (`Q8_0`, `Q4_1`, …).
    pub fn format_name(&self) -> String {
        format!("{:?}", self.format)
    }

    /// How many parts the output rows are stored in (a repacked weight is one).
    pub fn part_count(&self) -> usize {
        match &self.blocks {
            Blocks::Parts(parts) => parts.len(),
            Blocks::PackedQ8(_) => 1,
        }
    }

    /// The f32 weight the blocks encode, on `device`.
    pub fn dequantize_on(&self, device: &candle_core::Device) -> Result<Tensor, ZooError> {
        let parts = match &self.blocks {
            Blocks::Parts(parts) => parts
                .iter()
                .map(|part| part.qtensor.dequantize(device))
                .collect::<candle_core::Result<Vec<_>>>()?,
            Blocks::PackedQ8(packed) => {
                let values = packed.dequantized();
                let cpu = candle_core::Device::Cpu;
                vec![Tensor::from_vec(values, self.dims, &cpu)?.to_device(device)?]
            }
        };
        match parts.as_slice() {
            [whole] => Ok(whole.clone()),
            _ => Ok(Tensor::cat(&parts, 0)?),
        }
    }

    /// The f32 weight the blocks encode, on the blocks' device.
    pub fn dequantize(&self) -> Result<Tensor, ZooError> {
        match &self.blocks {
            Blocks::Parts(parts) => match parts.first() {
                Some(part) => self.dequantize_on(&part.qtensor.device()),
                None => Err(ZooError::Unsupported(
                    "a quantized weight with no rows".into(),
                )),
            },
            Blocks::PackedQ8(_) => self.dequantize_on(&candle_core::Device::Cpu),
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> (usize, usize) {
        self.dims
    }

    /// Bytes of the blocks.
    pub fn storage_bytes(&self) -> usize {
        match &self.blocks {
            Blocks::Parts(parts) => parts
                .iter()
                .map(|part| part.qtensor.storage_size_in_bytes())
                .sum(),
            Blocks::PackedQ8(packed) => packed.storage_bytes(),
        }
    }

    /// `x [rows, in] · Wᵀ` through f32: each part's blocks dequantized for this call and
    /// multiplied by the CPU's dense product, the parts in parallel. The activations are
    /// not quantized, so the result is the dense product of the dequantized weight.
    pub fn forward_dequantized(&self, x: &Tensor) -> Result<Tensor, ZooError> {
        let device = x.device().clone();
        let parts = match &self.blocks {
            Blocks::Parts(parts) => parts,
            Blocks::PackedQ8(_) => {
                let weight = self.dequantize_on(&device)?;
                return Ok(super::cpu::linear_op::linear(x, &weight, None)?);
            }
        };
        let outputs = parts
            .par_iter()
            .map(|part| {
                let weight = part.qtensor.dequantize(&device)?;
                super::cpu::linear_op::linear(x, &weight, None)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        joined_columns(outputs)
    }

    /// `x [rows, in] · Wᵀ`. A repacked q8_0 weight multiplies f32 rows on the CPU with
    /// `cpu::q8_product`. Otherwise on the CPU the parts multiply in parallel. On a GPU only
    /// batches of up to [`GPU_QUANTIZED_ROWS`] rows go through candle's quantized kernels:
    /// for larger ones candle quantizes the activations to q8_1 first, and on an H200 that
    /// gave non-finite outputs for q4_0 from 9 rows on and a NaN QLoRA loss for q8_0
    /// (`linear_quant_tests::on_cuda`); those batches multiply by the weight dequantized
    /// for the call instead.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ZooError> {
        if let Blocks::PackedQ8(packed) = &self.blocks {
            return match x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
                true => single_output(q8_product::q8_linears(x, &[packed])?),
                false => self.forward_dequantized(x),
            };
        }
        let rows = x.dims().first().copied().unwrap_or(0);
        if !x.device().is_cpu() && rows > GPU_QUANTIZED_ROWS {
            let weight = self.dequantize()?.to_dtype(x.dtype())?;
            return Ok(x.matmul(&weight.t()?)?);
        }
        if x.device().is_cpu() && rows >= dequantized_from_rows(self.format, self.dims.1) {
            return self.forward_dequantized(x);
        }
        self.forward_quantized(x)
    }

    /// `x [rows, in] · Wᵀ` with the activations quantized, whatever the rows: by candle's
    /// quantized matmul (the parts in parallel on the CPU, in turn elsewhere), or by
    /// `cpu::q8_product` for a repacked weight.
    pub fn forward_quantized(&self, x: &Tensor) -> Result<Tensor, ZooError> {
        let parts = match &self.blocks {
            Blocks::Parts(parts) => parts,
            Blocks::PackedQ8(packed) => {
                return single_output(q8_product::q8_linears(x, &[packed])?)
            }
        };
        let outputs = if x.device().is_cpu() {
            parts
                .par_iter()
                .map(|part| part.matmul.forward(x))
                .collect::<candle_core::Result<Vec<_>>>()?
        } else {
            parts
                .iter()
                .map(|part| part.matmul.forward(x))
                .collect::<candle_core::Result<Vec<_>>>()?
        };
        joined_columns(outputs)
    }
}

/// The one output of a product with one weight.
fn single_output(mut outputs: Vec<Tensor>) -> Result<Tensor, ZooError> {
    match (outputs.pop(), outputs.is_empty()) {
        (Some(output), true) => Ok(output),
        _ => Err(ZooError::Unsupported("a product went missing".into())),
    }
}

/// The parts' outputs side by side, as the whole weight's would be.
fn joined_columns(outputs: Vec<Tensor>) -> Result<Tensor, ZooError> {
    match outputs.as_slice() {
        [whole] => Ok(whole.clone()),
        _ => Ok(Tensor::cat(&outputs, D::Minus1)?),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::Device;

    use super::*;
    use crate::zoo::test_tensors::max_abs_diff;

    #[test]
    fn enough_rows_multiply_through_the_dequantized_weight() {
        // An even number of blocks per row: candle's q4_1 dot product asserts it in debug.
        let weight = values(128, 128, 1);
        let q = QuantizedWeight::quantize_in_parts(&weight, QuantKind::Q4_1, 2).unwrap();
        let dense = |x: &Tensor| x.matmul(&q.dequantize().unwrap().t().unwrap()).unwrap();
        for rows in [1, 2, 5] {
            let x = values(rows, 128, 2 + rows);
            let (got, through_f32) = (q.forward(&x).unwrap(), dense(&x));
            let diff = max_abs_diff(&got, &through_f32);
            if rows < dequantized_from_rows(GgmlDType::Q4_1, 128) {
                // One row: candle's quantized matmul, its activations rounded to 8 bits.
                assert!(diff > 1e-3, "{rows} rows: {diff}");
            } else {
                assert!(diff < 1e-4, "{rows} rows: {diff}");
            }
        }
        assert_eq!(dequantized_from_rows(GgmlDType::Q8_0, 576), 32);
        assert_eq!(dequantized_from_rows(GgmlDType::Q8_0, 512), 256);
    }

    fn values(rows: usize, cols: usize, seed: usize) -> Tensor {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| (((i * 31 + seed * 17) % 101) as f32 / 50.0 - 1.0) * 0.7)
            .collect();
        Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn a_weight_in_parts_multiplies_and_dequantizes_exactly_as_the_whole_one() {
        let weight = values(200, 64, 1);
        for kind in [QuantKind::Q8_0, QuantKind::Q4_0] {
            let whole = QuantizedWeight::quantize_in_parts(&weight, kind, 1).unwrap();
            let split = QuantizedWeight::quantize_in_parts(&weight, kind, 3).unwrap();
            assert_eq!((whole.part_count(), split.part_count()), (1, 3));
            assert_eq!(split.dims(), (200, 64));
            assert_eq!(split.storage_bytes(), whole.storage_bytes());
            let dequantized = |q: &QuantizedWeight| q.dequantize().unwrap().to_vec2::<f32>();
            assert_eq!(dequantized(&split).unwrap(), dequantized(&whole).unwrap());
            for rows in [1, 5] {
                let x = values(rows, 64, 2 + rows);
                let (a, b) = (whole.forward(&x).unwrap(), split.forward(&x).unwrap());
                assert_eq!(b.dims(), [rows, 200]);
                assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
            }
        }
    }

    #[test]
    fn a_q8_0_weight_repacked_for_serving_keeps_its_values_and_products() {
        let weight = values(80, 64, 5);
        let q4 = QuantizedWeight::quantize_in_parts(&weight, QuantKind::Q4_0, 2).unwrap();
        assert!(q4.packed_for_cpu_serving().unwrap().packed_q8().is_none());
        let q = QuantizedWeight::quantize_in_parts(&weight, QuantKind::Q8_0, 2).unwrap();
        let packed = q.clone().packed_for_cpu_serving().unwrap();
        if !q8_product::available() {
            assert!(packed.packed_q8().is_none());
            eprintln!("skipped: the repacked q8_0 weight (no AVX512-VNNI here)");
            return;
        }
        assert!(packed.packed_q8().is_some());
        assert_eq!((packed.part_count(), packed.dims()), (1, (80, 64)));
        assert_eq!(packed.storage_bytes(), q.storage_bytes());
        let dense = q.dequantize().unwrap();
        assert_eq!(max_abs_diff(&packed.dequantize().unwrap(), &dense), 0.0);
        for rows in [1, 5, 40] {
            let x = values(rows, 64, 6 + rows);
            let got = packed.forward(&x).unwrap();
            // candle's blocks with its f16 activation scales, and the dense product.
            let candle = q.forward_quantized(&x).unwrap();
            let exact = x.matmul(&dense.t().unwrap()).unwrap();
            assert!(max_abs_diff(&got, &candle) < 2e-3, "{rows} rows");
            assert!(max_abs_diff(&got, &exact) < 2e-2, "{rows} rows");
            assert!(max_abs_diff(&got, &exact) > 0.0, "{rows} rows");
        }
    }

    #[test]
    fn parts_keep_at_least_the_minimum_rows() {
        let small = QuantizedWeight::quantize_in_parts(&values(100, 32, 3), QuantKind::Q8_0, 8);
        assert_eq!(small.unwrap().part_count(), 1);
        let large = QuantizedWeight::quantize_in_parts(&values(256, 32, 4), QuantKind::Q8_0, 8);
        assert_eq!(large.unwrap().part_count(), 4);
    }
}
