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

/// `x [m, k]` rounded to bf16, padded with zero rows to whole groups of 16.
pub fn rounded_rows(x: &[f32], m: usize, k: usize) -> Vec<u16> {
    let mut out = vec![0u16; m.div_ceil(ROW_TILE) * ROW_TILE * k];
    super::bf16_product::round_into(&x[..(m * k).min(x.len())], &mut out);
    out
}

/// One block of output `columns` (a multiple of 16 of them) for every group of rows of
/// `rows` ([`rounded_rows`], `padded_m` of them): `block` is `padded_m × columns.len()`.
///
/// # Safety
/// `super::bf16_tiles::available` must have answered true; `tiles` must be [`packed`] of a
/// weight of `k` inputs (a multiple of 32) with at least `columns.end` rows; `rows` must
/// hold `padded_m · k` values (`padded_m` a multiple of 16), `block` `padded_m · width`.
pub unsafe fn block(
    rows: &[u16],
    tiles: &[u16],
    (padded_m, k): (usize, usize),
    columns: Range<usize>,
    block: &mut [f32],
) {
    let _tiles = TileSession::start();
    let width = columns.len();
    let steps = k / INPUT_STEP;
    let column_tiles = width / COLUMN_TILE;
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
            width,
        )
    };
    let groups = padded_m / ROW_TILE;
    let mut group = 0;
    while group < groups {
        let left = rows.as_ptr().add(group * ROW_TILE * k);
        let out = block.as_mut_ptr().add(group * ROW_TILE * width);
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
                    width,
                );
                t += 2;
            }
            while t < column_tiles {
                single(left, out, t);
                single(left.add(ROW_TILE * k), out.add(ROW_TILE * width), t);
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
            four_tiles(left, k, columns, steps, out.add(t * COLUMN_TILE), width);
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
/// stored at `out[0]` (column tile 0) and `out[1]` (column tile 1), rows `width` apart.
unsafe fn two_by_two(
    left: *const u16,
    k: usize,
    weight: [*const u16; 2],
    steps: usize,
    out: [*mut f32; 2],
    width: usize,
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
    let second_group = ROW_TILE * width;
    let at = [
        out[0],
        out[0].add(second_group),
        out[1],
        out[1].add(second_group),
    ];
    store_sums(&at, width * 4);
}

/// One group of 16 rows by four column tiles (64 output columns) into `out`.
unsafe fn four_tiles(
    left: *const u16,
    k: usize,
    weight: [*const u16; 4],
    steps: usize,
    out: *mut f32,
    width: usize,
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
    store_sums(&at, width * 4);
}

/// One group of 16 rows by one column tile into `out`.
unsafe fn one_tile(
    left: *const u16,
    k: usize,
    weight: *const u16,
    steps: usize,
    out: *mut f32,
    width: usize,
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
    store_sums(&[out], width * 4);
}
