//! `y [m, n] = x [m, k] · Wᵀ` for a frozen bf16 weight `W [n, k]` and f32 activations, on the
//! CPU: what `--serve-dtype bf16` multiplies with. candle widens a bf16 matmul to f32 on the
//! CPU, so its bf16 is no faster than f32 there; here the weight stays bf16 in memory, half
//! the bytes a decoding step reads, and where the CPU has AVX512-BF16 (Intel Sapphire Rapids
//! and later, AMD Zen 4) the products are its `vdpbf16ps` pair dot products, twice the f32
//! FMA's work an instruction, on the activations rounded to bf16 (f32 sums). Elsewhere the
//! weight's values are widened to f32 as they are read and the activations stay f32. From
//! [`WIDENED_FROM_ROWS`] rows (prefill, many streams) each block of the weight is widened to
//! f32 once for the call and the dense f32 products take it. Where the CPU has AMX (Sapphire
//! Rapids and later) products of [`TILES_FROM_ROWS`] rows and more go to its tile unit
//! (`super::bf16_tiles`) instead, at every row count.
//!
//! The outputs are split in blocks of [`COLUMN_BLOCK`] columns over temper's rayon pool; a
//! block's weight rows (`COLUMN_BLOCK · k` bf16, 72 KiB at SmolLM2's 576) stay in the core's
//! L2 cache while every row of `x` passes over them.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::gemm::{matmul, Destination, Threads, View, ViewMut};

/// Output columns one task of the bf16 kernels computes.
pub(super) const COLUMN_BLOCK: usize = 64;

/// The most output columns one task of the widened path computes (4 MiB of f32 weight at
/// SmolLM2's 1536 inputs).
const WIDENED_COLUMN_BLOCK: usize = 1024;

/// `x [m, k]` (f32) times `weightᵀ` for `weight [n, k]` (bf16), both on the CPU → f32
/// `[m, n]`. No gradient: serving only.
pub fn bf16_linear(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&weight.contiguous()?, &Bf16Product)
}

/// Whether `x` and `weight` are what [`bf16_linear`] multiplies: f32 rows and a bf16
/// matrix, both on the CPU.
pub fn takes(x: &Tensor, weight: &Tensor) -> bool {
    x.device().is_cpu()
        && weight.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::BF16
        && x.rank() == 2
        && weight.rank() == 2
}

/// The product op (the weight's rows as they lie; packed weights go through
/// [`packed_bf16_linears`]).
struct Bf16Product;

impl CustomOp2 for Bf16Product {
    fn name(&self) -> &'static str {
        "bf16-product"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = x_layout.shape().dims2()?;
        let (n, w_k) = w_layout.shape().dims2()?;
        if w_k != k {
            candle_core::bail!("bf16 product: input width {k}, weight [{n}, {w_k}]");
        }
        let (CpuStorage::F32(x), CpuStorage::BF16(w)) = (x, w) else {
            candle_core::bail!("bf16 product: needs f32 inputs and a bf16 weight");
        };
        let x = contiguous_slice(x, x_layout)?;
        let w = contiguous_slice(w, w_layout)?;
        // The weight's storage read in place as its bits (a copy would cost what bf16 saves).
        let w_bits: &[u16] = w.reinterpret_cast();
        let y = new_product(x, w_bits, (m, k, n));
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}

fn contiguous_slice<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("bf16 product: a non-contiguous operand"),
    }
}

/// From how many rows of `x` a product is faster with each block of the weight widened to
/// f32 and multiplied by the f32 products (`super::gemm`, OpenBLAS where installed) than by
/// the bf16 pair dot products, whose cost grows with the rows (the weight is read again for
/// every four). `examples/bf16_speed.rs` on 2 cores of an AVX512-BF16 Xeon, milliseconds at
/// 32 / 48 / 64 rows: `[576 → 1536]` 0.38 / 0.57 / 0.74 against 0.45 / 0.52 / 0.63 widened,
/// `[1536 → 576]` 0.44 / 0.61 / 0.80 against 0.49 / 0.66 / 0.73, the output layer
/// `[576 → 49152]` 15.4 / 19.8 / 25.8 against 13.3 / 16.2 / 19.1. At one row, over two runs,
/// the pair dot products took 0.02–0.07, 0.03 and 1.3 ms, the f32 product 0.03, 0.03 and 8.0.
pub const WIDENED_FROM_ROWS: usize = 40;

/// From how many rows of `x` the AMX tile kernel is used where the CPU has it: a tile
/// multiplies 16 rows whatever `x` has, so one row is faster by the pair dot products.
/// `examples/bf16_speed.rs`, milliseconds of the output layer `[576 → 49152]` at 1 / 2 / 4
/// rows, two runs: tiles 1.61 / 1.53 / 1.59 and 1.52 / 1.47 / 1.59, pair dot products 1.26 /
/// 1.81 / 2.06 and 1.24 / 1.74 / 2.05; at 32 rows tiles 2.68, pair dot products 15.3, the
/// widened weight 13.5 and the f32 product 13.0.
pub const TILES_FROM_ROWS: usize = 2;

/// `y = x · wᵀ` (`x [m, k]` f32, `w [n, k]` bf16 bits, `y [m, n]`), on the pool: by the AMX
/// tiles where the CPU has them, the widths are whole tiles and `x` has at least
/// [`TILES_FROM_ROWS`] rows; else with the AVX512-BF16 kernel where the CPU has it and `x`
/// has fewer than [`WIDENED_FROM_ROWS`] rows, else through the widened weight.
pub fn product(x: &[f32], w: &[u16], dims: (usize, usize, usize), y: &mut [f32]) {
    if dims.0 >= TILES_FROM_ROWS && tile_product(x, w, dims, y) {
        return;
    }
    match dims.0 >= WIDENED_FROM_ROWS {
        true => widened_product(x, w, dims, y),
        false => pair_dot_product(x, w, dims, y),
    }
}

/// [`product`] into a new `y`: written in place, never cleared, where the tile unit takes it
/// (`bf16_tiles::new_product`).
pub fn new_product(x: &[f32], w: &[u16], (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if m >= TILES_FROM_ROWS {
        if let Some(y) = super::bf16_tiles::new_product(x, w, (m, k, n)) {
            return y;
        }
    }
    let mut y = vec![0f32; m * n];
    product(x, w, (m, k, n), &mut y);
    y
}

/// [`product`] through each block of the weight widened to f32, at any row count: blocks of
/// one thread's share of the columns, at most [`WIDENED_COLUMN_BLOCK`] (the f32 copy is
/// what the call holds beside the weight), so that each product is one large dense one.
pub fn widened_product(x: &[f32], w: &[u16], (m, k, n): (usize, usize, usize), y: &mut [f32]) {
    let share = n.div_ceil(rayon::current_num_threads().max(1));
    let width = share
        .next_multiple_of(COLUMN_BLOCK)
        .min(WIDENED_COLUMN_BLOCK);
    in_blocks_of(width, y, (m, n), |columns, block| {
        widened_block(x, w, (m, k), columns, block)
    });
}

/// [`product`] on the AMX tile unit (`super::bf16_tiles`), at any row count, where the CPU
/// has it and the widths are whole tiles; false (and `y` untouched) elsewhere.
pub fn tile_product(x: &[f32], w: &[u16], (m, k, n): (usize, usize, usize), y: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use super::bf16_tiles;
        if !(bf16_tiles::fits(k, n) && bf16_tiles::available()) {
            return false;
        }
        let packed = bf16_tiles::packed_rows(x, m, k);
        in_column_blocks(y, (m, n), |columns, block| {
            // SAFETY: `available` answered true and `fits` checked `k`; the blocks' columns
            // are multiples of the tile's 16 (as `n` is) within `w`'s rows, and `block`
            // holds `m` rows of them.
            let out = (block.as_mut_ptr(), columns.len());
            unsafe { bf16_tiles::block(&packed, w, (m, k), columns, out) }
        });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w, m, k, n, y);
        false
    }
}

/// The products of `x [m, k]` with several weights `bf16_packing::packed_weight` repacked
/// (`packed`, each `[n, k]`), all on the CPU, in one pass over the pool
/// (`bf16_tiled_weight::new_products`): `Some` of each `[m, n]` f32 output, in order;
/// `None` where the tile product does not take them (no AMX, other dtypes or devices).
pub fn packed_bf16_linears(
    x: &Tensor,
    packed: &[&Tensor],
) -> candle_core::Result<Option<Vec<Tensor>>> {
    if !packed.iter().all(|w| takes(x, w)) {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (m, k) = x.dims2()?;
    let mut weights = Vec::with_capacity(packed.len());
    for w in packed {
        let (n, w_k) = w.dims2()?;
        if w_k != k || !w.is_contiguous() {
            return Ok(None);
        }
        weights.push((w.storage_and_layout(), n));
    }
    let mut bits = Vec::with_capacity(weights.len());
    for ((storage, layout), n) in &weights {
        let candle_core::Storage::Cpu(CpuStorage::BF16(w)) = &**storage else {
            return Ok(None);
        };
        let w = contiguous_slice(w, layout)?;
        bits.push((w.reinterpret_cast(), *n));
    }
    let outputs = crate::zoo::fused::with_cpu_values(&x, "bf16 products", |x| {
        Ok(new_packed_products(x, &bits, (m, k)))
    })?;
    let Some(outputs) = outputs else {
        return Ok(None);
    };
    let device = candle_core::Device::Cpu;
    outputs
        .into_iter()
        .zip(&bits)
        .map(|(y, &(_, n))| Tensor::from_vec(y, (m, n), &device))
        .collect::<candle_core::Result<Vec<_>>>()
        .map(Some)
}

/// The products of one input with several weights repacked for the tiles
/// (`bf16_tiled_weight::packed`), each into a new `y` (`bf16_tiled_weight::new_products`);
/// `None` where the CPU has no AMX or the widths are not whole tiles.
pub fn new_packed_products(
    x: &[f32],
    weights: &[(&[u16], usize)],
    dims: (usize, usize),
) -> Option<Vec<Vec<f32>>> {
    #[cfg(target_arch = "x86_64")]
    {
        super::bf16_tiled_weight::new_products(x, weights, dims)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, weights, dims);
        None
    }
}

/// `y = x · wᵀ` for a weight repacked for the tiles (what a layer frozen for serving on an AMX
/// CPU holds), into a new `y` (`m × n`); `None` where the CPU has no AMX or the widths are not
/// whole tiles, which `bf16_tiled_weight::packed` never packs.
pub fn new_packed_product(
    x: &[f32],
    tiles: &[u16],
    dims: (usize, usize, usize),
) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    {
        super::bf16_tiled_weight::new_product(x, tiles, dims)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, tiles, dims);
        None
    }
}

/// [`product`] by the bf16 pair dot products at any row count (AVX512-BF16), or the
/// portable kernel.
pub fn pair_dot_product(x: &[f32], w: &[u16], (m, k, n): (usize, usize, usize), y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        let x_bf16 = avx512::rounded_rows(x, m, k);
        return in_column_blocks(y, (m, n), |columns, block| {
            // SAFETY: `available` checked the CPU's features; the block's columns are within
            // `w`'s rows and `block` holds `m` rows of them.
            unsafe { avx512::block(&x_bf16, w, (m, k), columns, block) }
        });
    }
    in_column_blocks(y, (m, n), |columns, block| {
        portable_block(x, w, (m, k), columns, block)
    });
}

/// Runs `compute(columns, block)` for each block of [`COLUMN_BLOCK`] output columns on the
/// pool, `block` being those columns of every row (`rows × columns.len()`, row-major), then
/// writes them into `y`.
fn in_column_blocks<F>(y: &mut [f32], dims: (usize, usize), compute: F)
where
    F: Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
{
    in_blocks_of(COLUMN_BLOCK, y, dims, compute);
}

/// [`in_column_blocks`] with blocks of `width` columns. Each task computes its block in a
/// buffer of its own (a few KiB, in its core's cache) and copies it into its columns of `y`,
/// so no thread copies the whole output after the parallel part.
fn in_blocks_of<F>(width: usize, y: &mut [f32], (m, n): (usize, usize), compute: F)
where
    F: Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
{
    in_padded_blocks_of(width, y, (m, n), m, compute);
}

/// New outputs `[m, n]`, one for each of `widths`, filled on the pool without being cleared
/// first: `fill(i, columns, (at, stride))` for each block of [`COLUMN_BLOCK`] columns of output
/// `i` (`at` the block's value in row 0, rows `stride` apart), the blocks of every output one
/// set of tasks. What the products that write their sums straight into `y` share.
///
/// # Safety
/// `fill` must write each of the `m` rows of its columns, and nothing outside them.
pub(super) unsafe fn new_column_blocks<F>(m: usize, widths: &[usize], fill: F) -> Vec<Vec<f32>>
where
    F: Fn(usize, std::ops::Range<usize>, (*mut f32, usize)) + Sync,
{
    let mut outputs: Vec<Vec<f32>> = widths.iter().map(|&n| Vec::with_capacity(m * n)).collect();
    let destinations: Vec<Destination> = outputs
        .iter_mut()
        .map(|y| Destination(y.spare_capacity_mut().as_mut_ptr().cast::<f32>()))
        .collect();
    let block = balanced_column_block(widths, rayon::current_num_threads());
    let tasks: Vec<(usize, usize)> = widths
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| column_starts(block, n).into_iter().map(move |s| (i, s)))
        .collect();
    tasks.into_par_iter().for_each(|(i, start)| {
        let n = widths[i];
        // Output `i` has room for `m · n` values; these columns of its rows are this task's
        // alone (the blocks of an output are disjoint).
        fill(
            i,
            start..(start + block).min(n),
            (destinations[i].at(start), n),
        );
    });
    for (y, &n) in outputs.iter_mut().zip(widths) {
        // SAFETY: the blocks cover every column of every output (`column_starts`) and `fill`
        // wrote all `m` rows of each (the caller's promise); the capacity is `m · n`.
        unsafe { y.set_len(m * n) };
    }
    outputs
}

/// [`in_blocks_of`] with blocks of `block_rows` rows (at least `m`: a kernel that writes
/// whole groups of rows), of which the first `m` are `y`'s.
pub(super) fn in_padded_blocks_of<F>(
    width: usize,
    y: &mut [f32],
    (m, n): (usize, usize),
    block_rows: usize,
    compute: F,
) where
    F: Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
{
    let width = width.max(1);
    let y_len = y.len();
    let destination = Destination(y.as_mut_ptr());
    column_starts(width, n).into_par_iter().for_each(|start| {
        let columns = start..(start + width).min(n);
        let width = columns.len();
        let mut block = vec![0f32; block_rows.max(m) * width];
        compute(columns, &mut block);
        for (row, values) in block.chunks_exact(width).take(m).enumerate() {
            // The callers' `y` is `m · n`; were it shorter, its rows stop here.
            if row * n + start + width > y_len {
                break;
            }
            // SAFETY: this row's columns `start..start + width` lie within `y` (checked
            // above) and no other task writes them (the tasks' column ranges are
            // disjoint); `y`'s borrow outlives the loop.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    values.as_ptr(),
                    destination.at(row * n + start),
                    width,
                );
            }
        }
    });
}

/// Columns per task of products into outputs of `widths` columns over `threads` threads:
/// [`COLUMN_BLOCK`], or half of it where that spreads the blocks more evenly over the
/// threads (the thread with the most blocks sets the time). SmolLM2's attention output and
/// down projections (576 columns) are nine blocks of 64, five on one of two threads and four
/// on the other; eighteen of 32 are nine on each.
pub(super) fn balanced_column_block(widths: &[usize], threads: usize) -> usize {
    let threads = threads.max(1);
    let busiest = |block: usize| {
        let tasks: usize = widths.iter().map(|n| n.div_ceil(block)).sum();
        tasks.div_ceil(threads) * block
    };
    let half = COLUMN_BLOCK / 2;
    match busiest(half) < busiest(COLUMN_BLOCK) {
        true => half,
        false => COLUMN_BLOCK,
    }
}

/// The first column of each block of `width` of `n` columns.
pub(super) fn column_starts(width: usize, n: usize) -> Vec<usize> {
    (0..n).step_by(width.max(1)).collect()
}

/// `value` rounded to bf16 (to nearest, ties to even, as `vcvtne2ps2bf16` rounds); NaN stays
/// NaN.
#[inline]
pub(crate) fn round_to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    if value.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

/// `values` rounded to bf16 ([`round_to_bf16`]) into `out` (as many as both hold): with
/// AVX512-BF16's `vcvtneps2bf16`, 16 values an instruction, where the CPU has it (the scalar
/// loop was 3.4 % of a 32-stream decoding step, on the thread that drives it). Every kernel
/// that rounds its activations rounds them here.
pub(crate) fn round_into(values: &[f32], out: &mut [u16]) {
    let len = values.len().min(out.len());
    let (values, out) = (&values[..len], &mut out[..len]);
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: `available` checked the CPU's features; both slices hold `len` values.
        return unsafe { avx512::round_into(values, out) };
    }
    for (bits, value) in out.iter_mut().zip(values) {
        *bits = round_to_bf16(*value);
    }
}

/// The bf16 value's f32 (exact: bf16 is f32's upper half).
fn widened(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// The block's weight rows widened to f32, then one f32 product of every row of `x` by them
/// on this thread (the blocks are what runs in parallel).
fn widened_block(
    x: &[f32],
    w: &[u16],
    (m, k): (usize, usize),
    columns: std::ops::Range<usize>,
    block: &mut [f32],
) {
    let width = columns.len();
    let rows: Vec<f32> = w[columns.start * k..columns.end * k]
        .iter()
        .map(|bits| widened(*bits))
        .collect();
    let product = matmul(
        ViewMut::rows(block, m, width),
        View::rows(x, m, k),
        View::rows(&rows, width, k).t(),
        1.0,
        false,
        Threads::Single,
    );
    // The views are built from these very lengths, so the product cannot refuse them;
    // were it to, the portable kernel gives the same sums.
    if product.is_err() {
        portable_block(x, w, (m, k), columns, block);
    }
}

/// f32 sums of `x`'s rows (as they are) times the block's weight rows widened to f32.
fn portable_block(
    x: &[f32],
    w: &[u16],
    (m, k): (usize, usize),
    columns: std::ops::Range<usize>,
    block: &mut [f32],
) {
    let width = columns.len();
    let mut row_f32 = vec![0f32; k];
    for (c, column) in columns.enumerate() {
        for (value, bits) in row_f32.iter_mut().zip(&w[column * k..(column + 1) * k]) {
            *value = widened(*bits);
        }
        for r in 0..m {
            let x_row = &x[r * k..(r + 1) * k];
            block[r * width + c] = x_row.iter().zip(&row_f32).map(|(a, b)| a * b).sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "bf16_product_avx512.rs"]
mod avx512;

#[cfg(test)]
#[path = "bf16_product_tests.rs"]
mod tests;
