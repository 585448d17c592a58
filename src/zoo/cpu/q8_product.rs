//! `y [m, n] = x [m, k] · Wᵀ` for a frozen q8_0 weight on the CPU: what `--serve-dtype q8_0`
//! and a GGUF base's Q8_0 projections multiply with where the CPU has AVX512-VNNI.
//!
//! The arithmetic is llama.cpp's for q8_0: each row of `x` is quantized per block of 32 to
//! int8 with an f32 scale (`amax / 127`), each block's integer dot product with the weight's
//! block is exact, and the sum over blocks is `Σ dx · dw · dot` in f32. candle's quantized
//! matmul does the same arithmetic one dot product at a time (a horizontal sum per block
//! and output): at 32 rows it was slower than dequantizing the whole weight to f32 for the
//! call. Here the weight is repacked so that a 512-bit register holds four consecutive
//! inputs of sixteen output columns, and one `vpdpbusd` adds 64 products into sixteen
//! columns' sums with no reduction at all; a row's four int8 inputs are broadcast to it.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so the weight is stored offset by 128
//! (`q + 128`, 0 to 255: every int8 value, -128 included) and the activations stay signed;
//! the offset adds `128 · Σ x_q` to each block's dot product, which the activations'
//! quantization computes once per row and block and each block subtracts. The repacked
//! weight takes the bytes the q8_0 blocks take: one byte a value and an f16 scale a block.

use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

use super::bf16_product::new_column_blocks;

/// Values of a q8_0 block, each block with its own scale.
pub const BLOCK: usize = 32;

/// Output columns one register of sums holds.
const GROUP: usize = 16;

/// Inputs one `vpdpbusd` takes from each column: a block is `BLOCK / STEP` steps.
const STEP: usize = 4;

/// Bytes of a block of one column in a GGUF file (and in candle): its f16 scale, then its
/// 32 int8 values.
const STORED_BLOCK_BYTES: usize = 2 + BLOCK;

/// What a stored weight byte is above its int8 value.
const OFFSET: i32 = 128;

/// A q8_0 weight `[n, k]` repacked for [`q8_products`].
#[derive(Debug)]
pub struct PackedQ8 {
    /// `[group][block][step][column of the group][4 inputs]`, each `q + 128`; the columns
    /// past `n` in the last group are zeros (128).
    quants: Vec<u8>,
    /// `[group][block][column of the group]`; zero past `n`.
    scales: Vec<f16>,
    n: usize,
    k: usize,
}

/// Whether this CPU runs [`q8_products`] with its integer dot products.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl PackedQ8 {
    /// The weight whose rows `data` holds as q8_0 blocks (`n` rows of `k / 32` blocks).
    pub fn from_q8_0(data: &[u8], n: usize, k: usize) -> candle_core::Result<Self> {
        if k == 0 || !k.is_multiple_of(BLOCK) {
            candle_core::bail!("q8_0 needs inputs in blocks of {BLOCK}, got {k}");
        }
        let blocks = k / BLOCK;
        let row_bytes = blocks * STORED_BLOCK_BYTES;
        if data.len() != n * row_bytes {
            candle_core::bail!("q8_0 blocks of {} bytes for [{n}, {k}]", data.len());
        }
        let groups = n.div_ceil(GROUP);
        let mut quants = vec![OFFSET as u8; groups * GROUP * k];
        let mut scales = vec![f16::ZERO; groups * GROUP * blocks];
        for (column, row) in data.chunks_exact(row_bytes).enumerate() {
            let (group, lane) = (column / GROUP, column % GROUP);
            for (b, stored) in row.chunks_exact(STORED_BLOCK_BYTES).enumerate() {
                let at = group * blocks + b;
                scales[at * GROUP + lane] = f16::from_le_bytes([stored[0], stored[1]]);
                for (i, &byte) in stored[2..].iter().enumerate() {
                    let (step, input) = (i / STEP, i % STEP);
                    let to = ((at * (BLOCK / STEP) + step) * GROUP + lane) * STEP + input;
                    quants[to] = (byte as i8 as i32 + OFFSET) as u8;
                }
            }
        }
        Ok(Self {
            quants,
            scales,
            n,
            k,
        })
    }

    /// `[n, k]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes of the values and scales.
    pub fn storage_bytes(&self) -> usize {
        self.quants.len() + self.scales.len() * std::mem::size_of::<f16>()
    }

    fn blocks(&self) -> usize {
        self.k / BLOCK
    }

    /// Value `input` of output column `column` as stored: int8, and its block's scale.
    fn stored(&self, column: usize, input: usize) -> (i32, f32) {
        let (group, lane) = (column / GROUP, column % GROUP);
        let at = group * self.blocks() + input / BLOCK;
        let (step, i) = ((input % BLOCK) / STEP, input % STEP);
        let byte = self.quants[((at * (BLOCK / STEP) + step) * GROUP + lane) * STEP + i];
        (
            byte as i32 - OFFSET,
            self.scales[at * GROUP + lane].to_f32(),
        )
    }

    /// The f32 weight `[n, k]` the blocks encode (row-major).
    pub fn dequantized(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.n * self.k);
        for column in 0..self.n {
            for input in 0..self.k {
                let (value, scale) = self.stored(column, input);
                out.push(value as f32 * scale);
            }
        }
        out
    }
}

/// Rows of activations quantized per block of [`BLOCK`] as q8_0 quantizes them.
pub struct QuantizedRows {
    /// `[m, k]` int8.
    values: Vec<i8>,
    /// `[m, k / BLOCK]`: each block's scale.
    scales: Vec<f32>,
    /// `[m, k / BLOCK]`: `128 · Σ` of each block's values, what the weight's offset adds to
    /// its dot products.
    offsets: Vec<i32>,
    k: usize,
}

/// A block of quantized activations: its values, scale and offset.
type BlockOut<'a> = (&'a mut [i8], (&'a mut f32, &'a mut i32));

/// Rows from which the activations are quantized in parallel.
const PARALLEL_ROWS: usize = 64;

impl QuantizedRows {
    /// `x [m, k]` quantized (`k` a multiple of [`BLOCK`]: [`q8_products`] checks it).
    pub fn new(x: &[f32], k: usize) -> Self {
        let m = x.len() / k;
        let blocks = k / BLOCK;
        let mut rows = Self {
            values: vec![0; m * k],
            scales: vec![0.0; m * blocks],
            offsets: vec![0; m * blocks],
            k,
        };
        let quantize = |((values, (scale, offset)), x): (BlockOut, &[f32])| {
            let (d, sum) = quantize_block(x, values);
            (*scale, *offset) = (d, OFFSET * sum);
        };
        if m < PARALLEL_ROWS {
            // A few rows: the pool's wake-up would cost more than the work.
            let scales_and_offsets = rows.scales.iter_mut().zip(rows.offsets.iter_mut());
            rows.values
                .chunks_exact_mut(BLOCK)
                .zip(scales_and_offsets)
                .zip(x.chunks_exact(BLOCK))
                .for_each(quantize);
            return rows;
        }
        let scales_and_offsets = rows.scales.par_iter_mut().zip(rows.offsets.par_iter_mut());
        rows.values
            .par_chunks_exact_mut(BLOCK)
            .zip(scales_and_offsets)
            .zip(x.par_chunks_exact(BLOCK))
            .with_min_len(blocks)
            .for_each(quantize);
        rows
    }

    fn rows(&self) -> usize {
        self.values.len() / self.k.max(1)
    }
}

/// One block quantized: `out[i] = round(x[i] / d)` with `d = max |x| / 127` (to nearest,
/// ties to even, as the vector kernel's conversion rounds); returns `d` and `Σ out`.
fn quantize_block(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has AVX-512 F/BW (checked); both slices hold a block.
        return unsafe { avx512::quantize_block(x, out) };
    }
    quantize_block_portable(x, out)
}

fn quantize_block_portable(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inverse = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut sum = 0;
    for (q, v) in out.iter_mut().zip(x) {
        *q = (v * inverse).round_ties_even() as i8;
        sum += *q as i32;
    }
    (d, sum)
}

/// `x [m, k]` (f32, row-major) times each of `weights` transposed, all of `k` inputs: one
/// `[m, n_i]` output each, their column blocks one set of tasks on the pool.
pub fn q8_products(
    x: &[f32],
    k: usize,
    weights: &[&PackedQ8],
) -> candle_core::Result<Vec<Vec<f32>>> {
    let whole_blocks = k > 0 && k.is_multiple_of(BLOCK) && x.len().is_multiple_of(k);
    if !whole_blocks || weights.iter().any(|w| w.k != k) {
        candle_core::bail!(
            "q8_0 product: {} inputs of width {k} for weights {:?}",
            x.len(),
            weights.iter().map(|w| w.dims()).collect::<Vec<_>>()
        );
    }
    let rows = QuantizedRows::new(x, k);
    let m = rows.rows();
    let widths: Vec<usize> = weights.iter().map(|w| w.n).collect();
    let fill = |i: usize, columns: std::ops::Range<usize>, (at, stride): (*mut f32, usize)| {
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            // SAFETY: the CPU has the kernel's features (checked); `at` is row 0 of these
            // columns of an `[m, stride]` output, which `new_column_blocks` gives this task.
            unsafe { avx512::columns(&rows, weights[i], columns, (at, stride)) };
            return;
        }
        // SAFETY: as above.
        unsafe { portable_columns(&rows, weights[i], columns, (at, stride)) };
    };
    // SAFETY: both kernels write every row of their columns, and nothing else.
    Ok(unsafe { new_column_blocks(m, &widths, fill) })
}

/// [`q8_products`] on a tensor: `x [m, k]` (f32, on the CPU) times each of `weights`
/// transposed, `[m, n_i]` each.
pub fn q8_linears(x: &Tensor, weights: &[&PackedQ8]) -> candle_core::Result<Vec<Tensor>> {
    let x = x.contiguous()?;
    let (m, k) = x.dims2()?;
    let outputs = crate::zoo::fused::with_cpu_values(&x, "q8_0 products", |values| {
        q8_products(values, k, weights)
    })?;
    outputs
        .into_iter()
        .zip(weights)
        .map(|(y, w)| Tensor::from_vec(y, (m, w.n), &Device::Cpu))
        .collect()
}

/// One output, as [`q8_products`] gives it: the sums in the order the vector kernel adds
/// them (block by block, `dot · (dw · dx)` fused into the sum), so the two agree to the bit.
///
/// # Safety
/// `at` must be row 0 of `columns` of an `[rows, stride]` output.
unsafe fn portable_columns(
    rows: &QuantizedRows,
    w: &PackedQ8,
    columns: std::ops::Range<usize>,
    (at, stride): (*mut f32, usize),
) {
    let blocks = w.blocks();
    for row in 0..rows.rows() {
        for column in columns.clone() {
            let mut sum = 0f32;
            for b in 0..blocks {
                let mut dot = 0i32;
                for input in b * BLOCK..(b + 1) * BLOCK {
                    let (value, _) = w.stored(column, input);
                    dot += (value + OFFSET) * rows.values[row * w.k + input] as i32;
                }
                let (_, dw) = w.stored(column, b * BLOCK);
                let dot = (dot - rows.offsets[row * blocks + b]) as f32;
                sum = dot.mul_add(dw * rows.scales[row * blocks + b], sum);
            }
            *at.add(row * stride + column - columns.start) = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "q8_product_avx512.rs"]
mod avx512;

#[cfg(test)]
#[path = "q8_product_tests.rs"]
mod tests;
