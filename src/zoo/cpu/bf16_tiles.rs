//! The bf16 product on Intel's AMX tile unit (Sapphire Rapids and later): one `tdpbf16ps`
//! multiplies a 16 × 32 bf16 tile by a 32 × 16 one into 16 × 16 f32 sums, 8192 products an
//! instruction where AVX512-BF16's `vdpbf16ps` does 32, so a decoding step's products stop
//! costing compute and cost only the weight's bytes read from memory.
//!
//! The weight `W [n, k]` is the tiles' left operand as it lies in memory (16 of its rows, 32
//! values of each, at a stride of one row), so it needs no repacking; the activations are the
//! right operand, rounded to bf16 and packed in the pairs of inputs the instruction takes
//! (`[k / 2][16 rows][2]`) once a call. The tiles' sums are therefore `yᵀ`: 16 output columns
//! by 16 rows of `x`, scattered into `y` as each group of columns finishes. A layer frozen for
//! serving holds its weight repacked into tiles instead (`super::bf16_tiled_weight`: faster,
//! the weight read as contiguous tiles); this kernel takes the weights that keep their rows,
//! such as an output layer tied to the embedding.
//!
//! The instructions are written as inline assembly (Rust's AMX intrinsics are unstable); the
//! tile registers are configured at the start of each task and released at its end, so a
//! thread that is not multiplying carries no tile state. Linux grants a process the tile
//! registers only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), asked once in
//! [`available`]; where it refuses, or the CPU has no AMX, callers keep the other kernels.

use std::arch::asm;
use std::ops::Range;
use std::sync::OnceLock;

use super::bf16_product::new_column_blocks;

/// Inputs one tile multiplication consumes (one row of the weight's tile: 64 bytes).
pub const INPUT_STEP: usize = 32;

/// Output columns (weight rows) one tile holds.
pub const COLUMN_TILE: usize = 16;

/// Rows of `x` one tile holds.
pub(super) const ROW_TILE: usize = 16;

/// How many input steps ahead of the tiles the weight's cache lines are asked for.
const PREFETCH_STEPS: usize = 4;

/// Output-column tiles one pass over the inputs fills (tile registers 0–3).
const TILES_PER_PASS: usize = 4;

/// Linux's `arch_prctl` request for permission to use an extended state component, and AMX's
/// tile data component.
const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
const XFEATURE_XTILEDATA: libc::c_ulong = 18;

/// Whether this CPU has AMX with bf16 and the kernel let this process use it (asked once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let amx_bf16 = leaf7.edx & (1 << 22) != 0;
        let amx_tile = leaf7.edx & (1 << 24) != 0;
        if !(amx_bf16 && amx_tile) {
            return false;
        }
        // SAFETY: a request for a permission; it changes nothing but what the process may
        // use, and its answer is checked.
        let granted = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        granted == 0
    })
}

/// Whether the tile kernel takes a product of `k` inputs to `n` outputs: whole tiles of
/// both (every model temper serves has widths that are multiples of 64).
pub fn fits(k: usize, n: usize) -> bool {
    k.is_multiple_of(INPUT_STEP) && n.is_multiple_of(COLUMN_TILE) && k > 0 && n > 0
}

/// `x [m, k]` rounded to bf16 and packed as the tiles' right operand: for each group of 16
/// rows (the last padded with zeros), `k / 2` rows of 16 pairs `(x[r][2i], x[r][2i + 1])`.
pub fn packed_rows(x: &[f32], m: usize, k: usize) -> Vec<u32> {
    let pairs = k / 2;
    let mut packed = vec![0u32; m.div_ceil(ROW_TILE) * pairs * ROW_TILE];
    // A group's rows are rounded first, in a loop that vectorises, then read across so that
    // the packed pairs are written in order (written row by row, each of a row's pairs went
    // to its own cache line: 7 % of a 32-stream decoding step, `perf`).
    let mut rounded = vec![0u16; ROW_TILE * k];
    for (group, out) in packed.chunks_exact_mut(pairs * ROW_TILE).enumerate() {
        let rows = x.chunks_exact(k).skip(group * ROW_TILE).take(ROW_TILE);
        let count = rows.len();
        for (row, bits) in rows.zip(rounded.chunks_exact_mut(k)) {
            super::bf16_product::round_into(row, bits);
        }
        for (i, across) in out.chunks_exact_mut(ROW_TILE).enumerate() {
            for (r, pair) in across.iter_mut().enumerate().take(count) {
                let at = r * k + 2 * i;
                *pair = u32::from(rounded[at]) | (u32::from(rounded[at + 1]) << 16);
            }
        }
    }
    packed
}

/// `y = x · wᵀ` (`x [m, k]` f32, `w [n, k]` bf16 bits as they lie) on the tile unit into a
/// new `y [m, n]`, each task's block of output columns stored straight into its columns of
/// `y`, which is not cleared first ([`block`] writes every value); `None` where the CPU has
/// no AMX or the widths are not whole tiles. The output layer tied to the embedding takes
/// this at every decoding step: clearing and copying its 6 MiB of logits at 32 streams cost
/// a third of its product.
pub fn new_product(x: &[f32], w: &[u16], (m, k, n): (usize, usize, usize)) -> Option<Vec<f32>> {
    if !(fits(k, n) && available()) || x.len() != m * k || w.len() < n * k {
        return None;
    }
    let packed = packed_rows(x, m, k);
    let fill = |_: usize, columns: Range<usize>, out: (*mut f32, usize)| {
        // SAFETY: `available` answered true, `fits` checked `k` and `n`, `w` holds `n` rows;
        // `out` is writable at these columns of `m` rows (`new_column_blocks`).
        unsafe { block(&packed, w, (m, k), columns, out) }
    };
    // SAFETY: `block` writes every row of its columns.
    unsafe { new_column_blocks(m, &[n], fill) }.pop()
}

/// The tile registers' layout: palette 1; registers 0–3 hold 16 × 16 f32 sums, 4–5 the
/// weight's 16 × 32 bf16 tiles, 6–7 the activations' 16 × 16 pairs; each 16 rows of 64
/// bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        for register in 0..8 {
            // Bytes per row (little-endian u16 from byte 16), then rows (u8 from byte 48).
            bytes[16 + 2 * register] = 64;
            bytes[48 + register] = 16;
        }
        Self(bytes)
    }
}

/// The tile registers configured ([`TileConfig`]) for as long as this lives, released when
/// it drops, so that a thread which is not multiplying carries no tile state.
pub(super) struct TileSession(());

impl TileSession {
    /// # Safety
    /// [`available`] must have answered true.
    pub(super) unsafe fn start() -> Self {
        let config = TileConfig::new();
        asm!("ldtilecfg [{0}]", in(reg) config.0.as_ptr(), options(nostack));
        Self(())
    }
}

impl Drop for TileSession {
    fn drop(&mut self) {
        // SAFETY: a session exists only once `start` configured the tiles, which it did
        // only where `available` answered true.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// Tile registers 0–3 (the sums) set to zero.
///
/// # Safety
/// A [`TileSession`] must be open on this thread.
pub(super) unsafe fn zero_sums() {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
}

/// Tile registers 0..`out.len()` (at most 4) stored at `out`'s addresses, rows
/// `row_bytes` apart.
///
/// # Safety
/// A [`TileSession`] must be open on this thread and each address must have room for 16
/// rows of 64 bytes, `row_bytes` apart.
pub(super) unsafe fn store_sums(out: &[*mut f32], row_bytes: usize) {
    for (register, at) in out.iter().enumerate() {
        match register {
            0 => {
                asm!("tilestored [{a} + {s} * 1], tmm0", a = in(reg) *at, s = in(reg) row_bytes, options(nostack))
            }
            1 => {
                asm!("tilestored [{a} + {s} * 1], tmm1", a = in(reg) *at, s = in(reg) row_bytes, options(nostack))
            }
            2 => {
                asm!("tilestored [{a} + {s} * 1], tmm2", a = in(reg) *at, s = in(reg) row_bytes, options(nostack))
            }
            3 => {
                asm!("tilestored [{a} + {s} * 1], tmm3", a = in(reg) *at, s = in(reg) row_bytes, options(nostack))
            }
            _ => break,
        }
    }
}

/// One block of output `columns` (a multiple of [`COLUMN_TILE`] of them) for every row of
/// `x`, from `packed` ([`packed_rows`] of `m` rows), stored at `out` (the block's first
/// value) with its rows `out_stride` values apart: a buffer of the block alone, or these
/// columns of `y` itself. Every one of the `m × columns.len()` values is written.
///
/// # Safety
/// [`available`] must have answered true; `k` must be a multiple of [`INPUT_STEP`];
/// `columns` must be rows of `w` (`w.len() >= columns.end · k`), `packed` must be
/// [`packed_rows`] of `m` rows of `k` inputs; `out` must be writable at `columns.len()`
/// values from each of `m` rows `out_stride` apart, by this call alone.
pub unsafe fn block(
    packed: &[u32],
    w: &[u16],
    (m, k): (usize, usize),
    columns: Range<usize>,
    (out, out_stride): (*mut f32, usize),
) {
    let _tiles = TileSession::start();
    let mut out = Output {
        at: out,
        stride: out_stride,
        width: columns.len(),
        rows: m,
    };
    let weight_stride = k * 2;
    let groups: Vec<&[u32]> = packed.chunks_exact((k / 2) * ROW_TILE).collect();
    let mut sums = Sums::default();
    let mut group = 0;
    while group < groups.len() {
        // Two groups of rows share each weight tile loaded (loads, not products, are what a
        // tile product waits on); a last odd group passes alone over four weight tiles.
        let paired = groups.len() - group >= 2;
        let mut column = 0;
        while column < out.width {
            let left = (out.width - column) / COLUMN_TILE;
            let weight = w.as_ptr().add((columns.start + column) * k);
            let (group_tiles, column_tiles) = if paired && left >= 2 {
                two_by_two(groups[group], groups[group + 1], weight, k, weight_stride);
                (2, 2)
            } else if !paired && left >= TILES_PER_PASS {
                four_tiles(groups[group].as_ptr(), weight, k, weight_stride);
                (1, TILES_PER_PASS)
            } else {
                one_tile(groups[group].as_ptr(), weight, k, weight_stride);
                (1, 1)
            };
            store_registers(&mut sums, group_tiles * column_tiles);
            // Registers hold column tiles in order, each with its groups of rows in order.
            for (tile, sums) in sums.0.chunks_exact(COLUMN_TILE).enumerate() {
                if tile >= group_tiles * column_tiles {
                    break;
                }
                let first_row = (group + tile % group_tiles) * ROW_TILE;
                out.scatter(sums, first_row, column + (tile / group_tiles) * COLUMN_TILE);
            }
            column += column_tiles * COLUMN_TILE;
        }
        // A column tile left beside pairs of groups was done for the first group alone.
        group += match paired {
            true if !out.width.is_multiple_of(2 * COLUMN_TILE) => {
                let column = out.width - COLUMN_TILE;
                let weight = w.as_ptr().add((columns.start + column) * k);
                one_tile(groups[group + 1].as_ptr(), weight, k, weight_stride);
                store_registers(&mut sums, 1);
                out.scatter(&sums.0[..COLUMN_TILE], (group + 1) * ROW_TILE, column);
                2
            }
            true => 2,
            false => 1,
        };
    }
}

/// The tile registers' sums as stored: for each register, 16 output columns of 16 rows.
#[repr(C, align(64))]
struct Sums([[f32; ROW_TILE]; COLUMN_TILE * TILES_PER_PASS]);

impl Default for Sums {
    fn default() -> Self {
        Self([[0.0; ROW_TILE]; COLUMN_TILE * TILES_PER_PASS])
    }
}

/// A task's block of `y`: `rows × width` values from `at`, rows `stride` apart (the
/// caller's promise in [`block`]).
struct Output {
    at: *mut f32,
    stride: usize,
    width: usize,
    rows: usize,
}

impl Output {
    /// One register's sums (output columns by rows) into the block at `first_row` and
    /// `first_column`, rows past `x`'s last dropped: read across `sums` (in this core's L1)
    /// so that the writes run along the block's rows.
    ///
    /// # Safety
    /// `first_column + sums.len()` is at most `width` (the kernel's column tiles lie within
    /// the block), and the block is writable as [`block`] requires.
    unsafe fn scatter(&mut self, sums: &[[f32; ROW_TILE]], first_row: usize, first_column: usize) {
        let valid_rows = self.rows.saturating_sub(first_row).min(ROW_TILE);
        let columns = sums.len().min(self.width.saturating_sub(first_column));
        for r in 0..valid_rows {
            let row = self.at.add((first_row + r) * self.stride + first_column);
            for (c, by_row) in sums.iter().take(columns).enumerate() {
                row.add(c).write(by_row[r]);
            }
        }
    }
}

/// Sums of two consecutive 16-row weight tiles (32 output columns) with two groups of rows,
/// over all `k` inputs, into tile registers 0–3 (column tile 0 with groups 0 and 1, then
/// column tile 1 with them).
unsafe fn two_by_two(first: &[u32], second: &[u32], weight: *const u16, k: usize, stride: usize) {
    zero_sums();
    let tile_rows = COLUMN_TILE * k;
    for step in 0..k / INPUT_STEP {
        let pairs_at = step * (INPUT_STEP / 2) * ROW_TILE;
        let left = weight.add(step * INPUT_STEP);
        prefetch_ahead(left, k, 2 * COLUMN_TILE);
        asm!(
            "tileloadd tmm4, [{w0} + {stride} * 1]",
            "tileloadd tmm6, [{r0} + {pair_stride} * 1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{r1} + {pair_stride} * 1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{w1} + {stride} * 1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            w0 = in(reg) left,
            w1 = in(reg) left.add(tile_rows),
            r0 = in(reg) first.as_ptr().add(pairs_at),
            r1 = in(reg) second.as_ptr().add(pairs_at),
            pair_stride = in(reg) ROW_TILE * 4,
            stride = in(reg) stride,
            options(nostack, readonly)
        );
    }
}

/// Sums of four consecutive 16-row weight tiles (64 output columns) with one group of rows,
/// over all `k` inputs, into tile registers 0–3.
unsafe fn four_tiles(rows: *const u32, weight: *const u16, k: usize, stride: usize) {
    zero_sums();
    let tile_rows = COLUMN_TILE * k;
    for step in 0..k / INPUT_STEP {
        let right = rows.add(step * (INPUT_STEP / 2) * ROW_TILE);
        let left = weight.add(step * INPUT_STEP);
        prefetch_ahead(left, k, TILES_PER_PASS * COLUMN_TILE);
        asm!(
            "tileloadd tmm6, [{right} + {pair_stride} * 1]",
            "tileloadd tmm4, [{w0} + {stride} * 1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm5, [{w1} + {stride} * 1]",
            "tdpbf16ps tmm1, tmm5, tmm6",
            "tileloadd tmm4, [{w2} + {stride} * 1]",
            "tdpbf16ps tmm2, tmm4, tmm6",
            "tileloadd tmm5, [{w3} + {stride} * 1]",
            "tdpbf16ps tmm3, tmm5, tmm6",
            right = in(reg) right,
            pair_stride = in(reg) ROW_TILE * 4,
            w0 = in(reg) left,
            w1 = in(reg) left.add(tile_rows),
            w2 = in(reg) left.add(2 * tile_rows),
            w3 = in(reg) left.add(3 * tile_rows),
            stride = in(reg) stride,
            options(nostack, readonly)
        );
    }
}

/// Sums of one 16-row weight tile with one group of rows into tile register 0.
unsafe fn one_tile(rows: *const u32, weight: *const u16, k: usize, stride: usize) {
    asm!("tilezero tmm0", options(nostack, nomem));
    for step in 0..k / INPUT_STEP {
        asm!(
            "tileloadd tmm6, [{right} + {pair_stride} * 1]",
            "tileloadd tmm4, [{w0} + {stride} * 1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            right = in(reg) rows.add(step * (INPUT_STEP / 2) * ROW_TILE),
            pair_stride = in(reg) ROW_TILE * 4,
            w0 = in(reg) weight.add(step * INPUT_STEP),
            stride = in(reg) stride,
            options(nostack, readonly)
        );
    }
}

/// Asks for the cache lines `PREFETCH_STEPS` steps ahead on each of the `rows` weight rows
/// a pass reads: a pass streams that many rows at once, more than the hardware's prefetcher
/// follows.
unsafe fn prefetch_ahead(at: *const u16, k: usize, rows: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let ahead = at.wrapping_add(PREFETCH_STEPS * INPUT_STEP);
    for row in 0..rows {
        // A prefetch past the weight's end is a hint the CPU drops, never a fault.
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(row * k).cast());
    }
}

/// Tile registers 0..`tiles` (16 output columns × 16 rows of f32 each) into `sums`.
unsafe fn store_registers(sums: &mut Sums, tiles: usize) {
    let out = sums.0.as_mut_ptr().cast::<f32>();
    let tile_len = COLUMN_TILE * ROW_TILE;
    let at = [
        out,
        out.add(tile_len),
        out.add(2 * tile_len),
        out.add(3 * tile_len),
    ];
    store_sums(&at[..tiles.min(TILES_PER_PASS)], ROW_TILE * 4);
}
