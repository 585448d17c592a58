//! A bounds-checked front to the `gemm` crate (the kernels candle's CPU matmul runs on) for
//! the fused ops that multiply strided views in place: attention heads read straight out of
//! the packed `[N, hidden]` projections, outputs written straight into their rows, bias
//! rows accumulated into, with no copies and no zero-filled buffers in between. Where the
//! machine has OpenBLAS the products run on it ([`super::blas`]), faster at these shapes.

use super::blas;

/// A read-only `rows × cols` matrix view: element `(r, c)` is `data[r·row_stride + c·col_stride]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A contiguous row-major matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, as a view of the same data.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Columns `start..start + len`.
    pub fn columns(self, start: usize, len: usize) -> Self {
        let offset = (start * self.col_stride).min(self.data.len());
        Self {
            data: &self.data[offset..],
            cols: len,
            ..self
        }
    }

    /// One past the last element the view reads.
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// A row-major destination: row `r` starts at `r·row_stride`, its columns are adjacent.
pub struct ViewMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl<'a> ViewMut<'a> {
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
        }
    }
}

/// Whether one product may split over the rayon pool; products inside an already parallel
/// loop run serially.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    Pool,
    Single,
}

/// `dst = (accumulate ? dst : 0) + scale · a · b`.
pub fn matmul(
    dst: ViewMut<'_>,
    a: View<'_>,
    b: View<'_>,
    scale: f32,
    accumulate: bool,
    threads: Threads,
) -> candle_core::Result<()> {
    matmul_on(blas::blas(), dst, a, b, scale, accumulate, threads)
}

/// [`matmul`] on the given BLAS, or on the gemm crate when there is none.
pub(super) fn matmul_on(
    blas: Option<&blas::Blas>,
    dst: ViewMut<'_>,
    a: View<'_>,
    b: View<'_>,
    scale: f32,
    accumulate: bool,
    threads: Threads,
) -> candle_core::Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || dst.rows != m || dst.cols != n {
        candle_core::bail!(
            "gemm: [{m}, {k}] · [{}, {n}] into [{}, {}]",
            b.rows,
            dst.rows,
            dst.cols
        );
    }
    let dst_extent = if m == 0 || n == 0 {
        0
    } else {
        (m - 1) * dst.row_stride + n
    };
    if a.extent() > a.data.len()
        || b.extent() > b.data.len()
        || dst_extent > dst.data.len()
        || (m > 1 && dst.row_stride < n)
    {
        candle_core::bail!("gemm: a view reaches past its buffer or its rows overlap");
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for row in dst.data.chunks_mut(dst.row_stride.max(1)).take(m) {
                row[..n].fill(0.0);
            }
        }
        return Ok(());
    }
    // One row too (a decoding step's matrix-vector products, bound by reading the weights):
    // `examples/gemm_speed`'s SmolLM2-135M step took 28.5 ms on the gemm crate against 30 on
    // OpenBLAS on a 2-core Zen 4, but 44.7 against 33.5–34.0 on a 2-core AVX-512 Xeon, where
    // the gemm crate streams the weights at 12 GB/s: a 5 % loss on the one, a 25 % gain on
    // the other.
    if let Some(blas) = blas {
        if let (Some(a_op), Some(b_op)) = (operand(a), operand(b)) {
            return blas_products(
                blas,
                dst.data,
                dst.row_stride,
                (a_op, b_op),
                (m, n, k),
                scale,
                accumulate,
                threads,
            );
        }
    }
    let parallelism = match threads {
        Threads::Pool if rayon::current_num_threads() > 1 => {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        }
        _ => gemm::Parallelism::None,
    };
    // SAFETY: every index gemm touches is `row·stride + col·stride` with row < rows and
    // col < cols of its view, all of which were checked against the slices' lengths
    // above; the destination is a distinct `&mut` borrow whose rows do not overlap, so
    // gemm's parallel writes are disjoint; the strides fit in isize because they index
    // allocated slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            dst.row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// Products smaller than this many multiply-adds run on one thread: splitting them costs
/// more in packing and waking than it saves.
const MIN_SPLIT_MULTIPLY_ADDS: usize = 1 << 18;

/// Blocks are multiples of 16 rows or columns, the unroll of OpenBLAS's AVX-512 f32
/// kernels, so that only the last block of a split can end in a partial kernel tile.
const ROW_BLOCK: usize = 16;
const COLUMN_BLOCK: usize = 16;

/// How an `m × k · k × n` product splits over the threads of the pool: along its larger
/// side, because every thread packs the whole of the operand it shares (`b` for blocks of
/// rows, `a` for blocks of columns), and that copy is the split's cost; not at all when
/// the product is small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Split {
    Whole,
    /// Blocks of this many rows, the last taking the rest.
    Rows(usize),
    /// Blocks of this many columns, the last taking the rest.
    Columns(usize),
}

pub(super) fn split((m, n, k): (usize, usize, usize), threads: usize) -> Split {
    if threads <= 1 || m * n * k < MIN_SPLIT_MULTIPLY_ADDS {
        Split::Whole
    } else if m >= n && m >= threads * ROW_BLOCK {
        Split::Rows(m.div_ceil(threads).next_multiple_of(ROW_BLOCK))
    } else if n >= threads * COLUMN_BLOCK {
        Split::Columns(n.div_ceil(threads).next_multiple_of(COLUMN_BLOCK))
    } else {
        Split::Whole
    }
}

/// The destination's first element, shared by the blocks of one split product, each of
/// which writes its own rows or columns of it.
#[derive(Clone, Copy)]
pub(super) struct Destination(pub(super) *mut f32);

// SAFETY: the blocks of one product write disjoint elements (see `blas_products`,
// `bf16_product::in_padded_blocks_of` and `bf16_product::new_column_blocks`), and the `&mut` borrow the pointer came from outlives the
// parallel loop.
unsafe impl Send for Destination {}
// SAFETY: as above.
unsafe impl Sync for Destination {}

impl Destination {
    /// The element `offset` elements in; taking `self` whole makes closures capture the
    /// `Send` wrapper rather than its raw pointer field.
    pub(super) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `dst = (accumulate ? dst : 0) + scale · a · b` with BLAS, split over the pool's threads
/// (see [`split`]).
#[allow(clippy::too_many_arguments)]
fn blas_products(
    blas: &blas::Blas,
    dst: &mut [f32],
    dst_row_stride: usize,
    (a_op, b_op): (blas::Operand<'_>, blas::Operand<'_>),
    (m, n, k): (usize, usize, usize),
    scale: f32,
    accumulate: bool,
    threads: Threads,
) -> candle_core::Result<()> {
    let beta = if accumulate { 1.0 } else { 0.0 };
    let pool = match threads {
        Threads::Pool => rayon::current_num_threads(),
        Threads::Single => 1,
    };
    let plan = split((m, n, k), pool);
    // Element steps between a row (column) of an operand and the next one.
    let step = |op: blas::Operand<'_>, along_rows: bool| {
        if op.transposed == along_rows {
            1
        } else {
            op.leading
        }
    };
    let destination = Destination(dst.as_mut_ptr());
    let product = |index: usize| {
        let (rows, columns, a_block, b_block, dst_offset) = match plan {
            Split::Whole => (m, n, a_op, b_op, 0),
            Split::Rows(block) => {
                let first = index * block;
                let count = block.min(m - first);
                let a_block = blas::Operand {
                    data: &a_op.data[first * step(a_op, true)..],
                    ..a_op
                };
                (count, n, a_block, b_op, first * dst_row_stride)
            }
            Split::Columns(block) => {
                let first = index * block;
                let count = block.min(n - first);
                let b_block = blas::Operand {
                    data: &b_op.data[first * step(b_op, false)..],
                    ..b_op
                };
                (m, count, a_op, b_block, first)
            }
        };
        // SAFETY: `matmul` checked the operands' and the destination's extents against
        // their slices, and a block's operands and destination are sub-matrices of them;
        // the blocks write disjoint rows (or disjoint columns) of the destination.
        unsafe {
            blas.sgemm(
                (rows, columns, k),
                scale,
                (a_block, b_block),
                beta,
                (destination.at(dst_offset), dst_row_stride),
            )
        }
        .ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "gemm: [{m}, {k}] · [{k}, {n}] exceeds BLAS's 32-bit sizes"
            ))
        })
    };
    use rayon::prelude::*;
    match plan {
        Split::Whole => product(0),
        Split::Rows(block) => (0..m.div_ceil(block)).into_par_iter().try_for_each(product),
        Split::Columns(block) => (0..n.div_ceil(block)).into_par_iter().try_for_each(product),
    }
}

/// How BLAS reads a view: row-major (adjacent columns) or the transpose of a row-major
/// matrix (adjacent rows); `None` for any other layout, which the gemm crate handles.
fn operand(view: View<'_>) -> Option<blas::Operand<'_>> {
    // The leading dimension when `v` is row-major as BLAS requires (a single row's is its
    // length, whatever its stride).
    let row_major_leading = |v: View<'_>| {
        let leading = if v.rows <= 1 { v.cols } else { v.row_stride };
        (v.col_stride == 1 && leading >= v.cols).then_some(leading.max(1))
    };
    let (transposed, leading) = match row_major_leading(view) {
        Some(leading) => (false, leading),
        None => (true, row_major_leading(view.t())?),
    };
    Some(blas::Operand {
        data: view.data,
        transposed,
        leading,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use super::*;

    /// `a · b` by the definition, in f64: the reference the products are checked against.
    pub(in crate::zoo::cpu) fn naive(a: View, b: View) -> Vec<f64> {
        let mut out = vec![0.0; a.rows * b.cols];
        for r in 0..a.rows {
            for c in 0..b.cols {
                out[r * b.cols + c] = (0..a.cols)
                    .map(|i| {
                        f64::from(a.data[r * a.row_stride + i * a.col_stride])
                            * f64::from(b.data[i * b.row_stride + c * b.col_stride])
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn strided_products_match_the_naive_loop_and_accumulate() {
        let a: Vec<f32> = (0..35).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect();
        let b: Vec<f32> = (0..30).map(|i| (i % 5) as f32 * 0.25 - 0.5).collect();
        // a as [5, 7]; b as [6, 5] transposed = [5, 6]; a's columns 2..7 as [5, 5].
        let av = View::rows(&a, 5, 7);
        let bt = View::rows(&b, 6, 5).t();
        let mut out = vec![1.0; 5 * 6];
        matmul(
            ViewMut::rows(&mut out, 5, 6),
            av.columns(2, 5),
            bt,
            2.0,
            true,
            Threads::Pool,
        )
        .unwrap();
        let expected = naive(av.columns(2, 5), bt);
        for (o, e) in out.iter().zip(&expected) {
            assert!(
                (f64::from(*o) - (1.0 + 2.0 * e)).abs() < 1e-5,
                "{o} vs 1 + 2·{e}"
            );
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let a = vec![1.0f32; 12];
        let mut out = vec![0.0; 9];
        let err = matmul(
            ViewMut::rows(&mut out, 3, 3),
            View::rows(&a, 3, 4),
            View::rows(&a, 3, 4),
            1.0,
            false,
            Threads::Single,
        );
        assert!(err.is_err());
    }

    #[test]
    fn a_view_past_its_buffer_is_an_error_not_a_read() {
        let a = vec![1.0f32; 10];
        let mut out = vec![0.0; 4];
        let too_long = View {
            data: &a,
            rows: 2,
            cols: 6,
            row_stride: 6,
            col_stride: 1,
        };
        let err = matmul(
            ViewMut::rows(&mut out, 2, 2),
            too_long,
            View::rows(&a, 6, 2),
            1.0,
            false,
            Threads::Single,
        );
        assert!(err.is_err());
    }
}
