//! A frozen bf16 weight repacked once, when a model is frozen for serving on a CPU with AMX,
//! into the layout the tile unit reads as its right operand: for each 16 output columns and
//! each 32 inputs, one 1 KiB tile of 16 input pairs × 16 columns × 2. The product then reads
//! the weight as whole contiguous tiles (the in-place kernel of `super::bf16_tiles` loads 16
//! rows at a stride of a row each, which the hardware prefetcher follows poorly: 24 ns a tile
//! product against 18 contiguous, in a scratch program), the activations are the left
//! operand as they lie (rounded to bf16, no pairing), and the sums come out as `y`'s own rows.
//!
//! The packed weight keeps the tensor's shape `[n, k]` and dtype, so the layer's bookkeeping
//! (bytes, dtype, device) is unchanged; [`unpacked`] gives the rows back to whoever reads the
//! weight itself (a merge, an export).

use std::arch::asm;
use std::ops::Range;

use super::bf16_product::new_column_blocks;
use super::bf16_tiles::{store_sums, zero_sums, TileSession, COLUMN_TILE, INPUT_STEP, ROW_TILE};

/// bf16 values in one packed tile (16 input pairs × 16 columns × 2).
const TILE_VALUES: usize = INPUT_STEP * COLUMN_TILE;

/// Column tiles one pass of a single group of rows fills (tile registers 0–3).
const COLUMN_TILES_PER_PASS: usize = 4;

/// The index in the packed weight of `w[column][input]` (`k` inputs a row).
fn packed_index(column: usize, input: usize, k: usize) -> usize {
    let (tile_column, c) = (column / COLUMN_TILE, column % COLUMN_TILE);
    let (step, within) = (input / INPUT_STEP, input % INPUT_STEP);
    let tile = tile_column * (k / INPUT_STEP) + step;
    tile * TILE_VALUES + ((within / 2) * COLUMN_TILE + c) * 2 + within % 2
}

/// `w [n, k]` (row-major bf16 bits) repacked in tiles; `None` unless `super::bf16_tiles::fits`.
pub fn packed(w: &[u16], n: usize, k: usize) -> Option<Vec<u16>> {
    if !super::bf16_tiles::fits(k, n) || w.len() != n * k {
        return None;
    }
    let mut out = vec![0u16; n * k];
    for (column, row) in w.chunks_exact(k).enumerate() {
        for (input, bits) in row.iter().enumerate() {
            out[packed_index(column, input, k)] = *bits;
        }
    }
    Some(out)
}

/// The rows of `w [n, k]` back from [`packed`]'s layout.
pub fn unpacked(tiles: &[u16], n: usize, k: usize) -> Vec<u16> {
    let mut out = vec![0u16; n * k];
    for (column, row) in out.chunks_exact_mut(k).enumerate() {
        for (input, bits) in row.iter_mut().enumerate() {
            *bits = tiles[packed_index(column, input, k)];
        }
    }
    out
}

/// Whether [`product`] runs: the CPU has AMX, the widths are whole tiles and `tiles` is a
/// whole packed weight.
fn runs(tiles: &[u16], k: usize, n: usize) -> bool {
    super::bf16_tiles::fits(k, n) && super::bf16_tiles::available() && tiles.len() == n * k
}

/// `y = x · wᵀ` (`x [m, k]` f32) for `tiles` [`packed`] from `w`, into a new `y [m, n]`;
/// `None` where it does not [`runs`].
pub fn new_product(x: &[f32], tiles: &[u16], (m, k, n): (usize, usize, usize)) -> Option<Vec<f32>> {
    new_products(x, &[(tiles, n)], (m, k))?.pop()
}

/// The products of one `x [m, k]` with several packed weights (`(tiles, n)` each: the
/// query, key and value projections of a layer, or its gate and up projections), each
/// into a new `y [m, n]`, in one pass over the pool: `x` is rounded once, and the small
/// products' few column blocks share the threads with the others' rather than leaving one
/// idle (a key projection of 192 columns is three tasks for two cores). Each task's sums go
/// straight into its columns of its `y`, which is not cleared first (every value is
/// written once: clearing and copying a buffer cost as much as a layer's smaller products
/// at 32 rows); where `m` is not whole groups of 16 rows, a task's last group goes through
/// a buffer of its block. `None` where any of them does not [`runs`].
pub fn new_products(
    x: &[f32],
    weights: &[(&[u16], usize)],
    (m, k): (usize, usize),
) -> Option<Vec<Vec<f32>>> {
    if x.len() != m * k || !weights.iter().all(|&(tiles, n)| runs(tiles, k, n)) {
        return None;
    }
    let rows = rounded_rows(x, m, k);
    let padded_m = rows.len() / k;
    let widths: Vec<usize> = weights.iter().map(|&(_, n)| n).collect();
    let fill = |i: usize, columns: Range<usize>, (at, stride): (*mut f32, usize)| {
        let tiles = weights[i].0;
        // SAFETY: `runs` answered true for this weight (AMX, `k` and `n` whole tiles,
        // `tiles` the whole packed weight), so `columns` are whole tiles within it; `rows`
        // holds `padded_m` rows; `at` is writable at these columns of `m` rows, `stride`
        // apart (`new_column_blocks`), and the buffer at `padded_m` rows of them.
        unsafe {
            if padded_m == m {
                return block(&rows, tiles, (m, k), columns, (at, stride));
            }
            let width = columns.len();
            let mut buffer = vec![0f32; padded_m * width];
            block(
                &rows,
                tiles,
                (padded_m, k),
                columns,
                (buffer.as_mut_ptr(), width),
            );
            for (r, values) in buffer.chunks_exact(width).take(m).enumerate() {
                std::ptr::copy_nonoverlapping(values.as_ptr(), at.add(r * stride), width);
            }
        }
    };
    // SAFETY: `fill` writes all `m` rows of its columns: `block` stores every column tile of
    // every group of rows, straight or through the buffer whose first `m` rows are copied.
    Some(unsafe { new_column_blocks(m, &widths, fill) })
}

/// `x [m, k]` rounded to bf16, padded with zero rows to whole groups of 16.
pub fn rounded_rows(x: &[f32], m: usize, k: usize) -> Vec<u16> {
    let mut out = vec![0u16; m.div_ceil(ROW_TILE) * ROW_TILE * k];
    super::bf16_product::round_into(&x[..(m * k).min(x.len())], &mut out);
    out
}

/// One block of output `columns` (a multiple of 16 of them) for every group of rows of
/// `rows` ([`rounded_rows`], `padded_m` of them), stored at `out` (the block's first value)
/// with its rows `out_stride` values apart: a buffer of the block alone, or the columns of
/// the product itself where it has whole groups of rows.
///
/// # Safety
/// `super::bf16_tiles::available` must have answered true; `tiles` must be [`packed`] of a
/// weight of `k` inputs (a multiple of 32) with at least `columns.end` rows; `rows` must
/// hold `padded_m · k` values (`padded_m` a multiple of 16); `out` must be writable at
/// `columns.len()` values from each of `padded_m` rows `out_stride` apart, by this call
/// alone.
pub unsafe fn block(
    rows: &[u16],
    tiles: &[u16],
    (padded_m, k): (usize, usize),
    columns: Range<usize>,
    (out, out_stride): (*mut f32, usize),
) {
    let _tiles = TileSession::start();
    let steps = k / INPUT_STEP;
    let column_tiles = columns.len() / COLUMN_TILE;
    let tile_column = |t: usize| {
        tiles
            .as_ptr()
            .add((columns.start / COLUMN_TILE + t) * steps * TILE_VALUES)
    };
    // Column tile `t` for the 16 rows at `left`, into the block at `out` (their first row).
    let single = |left: *const u16, out: *mut f32, t: usize| {
        one_tile(
            left,
            k,
            tile_column(t),
            steps,
            out.add(t * COLUMN_TILE),
            out_stride,
        )
    };
    let groups = padded_m / ROW_TILE;
    let mut group = 0;
    while group < groups {
        let left = rows.as_ptr().add(group * ROW_TILE * k);
        let out = out.add(group * ROW_TILE * out_stride);
        let mut t = 0;
        if groups - group >= 2 {
            // Two groups of rows share each weight tile loaded.
            while t + 2 <= column_tiles {
                let sums = [out.add(t * COLUMN_TILE), out.add((t + 1) * COLUMN_TILE)];
                two_by_two(
                    left,
                    k,
                    [tile_column(t), tile_column(t + 1)],
                    steps,
                    sums,
                    out_stride,
                );
                t += 2;
            }
            while t < column_tiles {
                single(left, out, t);
                single(left.add(ROW_TILE * k), out.add(ROW_TILE * out_stride), t);
                t += 1;
            }
            group += 2;
            continue;
        }
        while t + COLUMN_TILES_PER_PASS <= column_tiles {
            let columns = [
                tile_column(t),
                tile_column(t + 1),
                tile_column(t + 2),
                tile_column(t + 3),
            ];
            four_tiles(
                left,
                k,
                columns,
                steps,
                out.add(t * COLUMN_TILE),
                out_stride,
            );
            t += COLUMN_TILES_PER_PASS;
        }
        while t < column_tiles {
            single(left, out, t);
            t += 1;
        }
        group += 1;
    }
}

/// Two groups of 16 rows (`left`, then 16 rows on) by two column tiles, over all inputs,
/// stored at `out[0]` (column tile 0) and `out[1]` (column tile 1), rows `out_stride` apart.
unsafe fn two_by_two(
    left: *const u16,
    k: usize,
    weight: [*const u16; 2],
    steps: usize,
    out: [*mut f32; 2],
    out_stride: usize,
) {
    zero_sums();
    for step in 0..steps {
        asm!(
            "tileloadd tmm6, [{b0} + {tile_stride} * 1]",
            "tileloadd tmm4, [{a0} + {row_stride} * 1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm5, [{a1} + {row_stride} * 1]",
            "tdpbf16ps tmm1, tmm5, tmm6",
            "tileloadd tmm7, [{b1} + {tile_stride} * 1]",
            "tdpbf16ps tmm2, tmm4, tmm7",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) left.add(step * INPUT_STEP),
            a1 = in(reg) left.add(ROW_TILE * k + step * INPUT_STEP),
            b0 = in(reg) weight[0].add(step * TILE_VALUES),
            b1 = in(reg) weight[1].add(step * TILE_VALUES),
            row_stride = in(reg) k * 2,
            tile_stride = in(reg) COLUMN_TILE * 4,
            options(nostack, readonly)
        );
    }
    let second_group = ROW_TILE * out_stride;
    let at = [
        out[0],
        out[0].add(second_group),
        out[1],
        out[1].add(second_group),
    ];
    store_sums(&at, out_stride * 4);
}

/// One group of 16 rows by four column tiles (64 output columns) into `out`.
unsafe fn four_tiles(
    left: *const u16,
    k: usize,
    weight: [*const u16; 4],
    steps: usize,
    out: *mut f32,
    out_stride: usize,
) {
    zero_sums();
    for step in 0..steps {
        asm!(
            "tileloadd tmm4, [{a} + {row_stride} * 1]",
            "tileloadd tmm6, [{b0} + {tile_stride} * 1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {tile_stride} * 1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm6, [{b2} + {tile_stride} * 1]",
            "tdpbf16ps tmm2, tmm4, tmm6",
            "tileloadd tmm7, [{b3} + {tile_stride} * 1]",
            "tdpbf16ps tmm3, tmm4, tmm7",
            a = in(reg) left.add(step * INPUT_STEP),
            b0 = in(reg) weight[0].add(step * TILE_VALUES),
            b1 = in(reg) weight[1].add(step * TILE_VALUES),
            b2 = in(reg) weight[2].add(step * TILE_VALUES),
            b3 = in(reg) weight[3].add(step * TILE_VALUES),
            row_stride = in(reg) k * 2,
            tile_stride = in(reg) COLUMN_TILE * 4,
            options(nostack, readonly)
        );
    }
    let at = [
        out,
        out.add(COLUMN_TILE),
        out.add(2 * COLUMN_TILE),
        out.add(3 * COLUMN_TILE),
    ];
    store_sums(&at, out_stride * 4);
}

/// One group of 16 rows by one column tile into `out`.
unsafe fn one_tile(
    left: *const u16,
    k: usize,
    weight: *const u16,
    steps: usize,
    out: *mut f32,
    out_stride: usize,
) {
    asm!("tilezero tmm0", options(nostack, nomem));
    for step in 0..steps {
        asm!(
            "tileloadd tmm4, [{a} + {row_stride} * 1]",
            "tileloadd tmm6, [{b} + {tile_stride} * 1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            a = in(reg) left.add(step * INPUT_STEP),
            b = in(reg) weight.add(step * TILE_VALUES),
            row_stride = in(reg) k * 2,
            tile_stride = in(reg) COLUMN_TILE * 4,
            options(nostack, readonly)
        );
    }
    store_sums(&[out], out_stride * 4);
}
