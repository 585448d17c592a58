//! OpenBLAS's `cblas_sgemm`, loaded at run time where the machine has the library, for the
//! fused ops' products (see [`super::gemm`]).
//!
//! Why: at the MiniLM training shapes (432 × 384 · 384 × 1536 and the like, in the three
//! orientations of a linear layer's forward and backward), the `gemm` crate reaches
//! 105–143 GFLOP/s on this project's 2-core Zen 4 machines, Debian's OpenBLAS 0.3.21
//! 95–100 per core, 156–198 on both as split here (`examples/gemm_speed`). The library is
//! loaded with `dlopen` rather than linked so that the binary builds and runs on a machine
//! without it (the `gemm` crate then does every product), and so that a user can point
//! temper at another build of it.
//!
//! `TEMPER_BLAS` chooses: unset or `auto` tries `libopenblas.so.0`, then
//! `libopenblas.so`; `off` never loads one; any other value is the path of a library that
//! exports the LP64 (32-bit integer) `cblas_sgemm`. OpenBLAS runs single-threaded here
//! (`openblas_set_num_threads(1)`): the products split over temper's own rayon pool,
//! whose threads are the cores, so no second pool spins against it.

use std::ffi::{c_char, c_int, CStr};
use std::sync::OnceLock;

/// `cblas_sgemm(layout, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// The environment variable that picks the library (see the module's documentation).
pub const BLAS_ENV: &str = "TEMPER_BLAS";

/// A loaded BLAS. The library stays loaded for the life of the process: the function
/// pointer is only valid while it is.
pub struct Blas {
    _library: libloading::Library,
    sgemm: Sgemm,
    /// For the start-up log: `OpenBLAS (<its kernels>)`, or the path of another library.
    pub name: String,
}

/// One operand as BLAS takes it: a row-major matrix, possibly transposed, with its leading
/// dimension.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    /// Starts at the matrix's first element and reaches at least to its last.
    pub data: &'a [f32],
    pub transposed: bool,
    pub leading: usize,
}

impl Blas {
    /// `c = beta·c + alpha·a·b` for `a` `m × k`, `b` `k × n`, `c` row-major `m × n` with
    /// row stride `ldc`, on the calling thread. `None` when a dimension does not fit BLAS's
    /// 32-bit integers; the caller then takes another path.
    ///
    /// # Safety
    /// Every element the operands describe (given the dimensions and leading dimensions)
    /// must lie inside their slices, every element of `c` must be valid for writes, and no
    /// one else may read or write those elements during the call.
    pub unsafe fn sgemm(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, b): (Operand<'_>, Operand<'_>),
        beta: f32,
        (c, ldc): (*mut f32, usize),
    ) -> Option<()> {
        let int = |v: usize| c_int::try_from(v).ok();
        let trans = |t: bool| if t { TRANS } else { NO_TRANS };
        let (m, n, k) = (int(m)?, int(n)?, int(k)?);
        let (lda, ldb, ldc) = (int(a.leading)?, int(b.leading)?, int(ldc)?);
        // SAFETY: the caller's contract; the pointer is valid while `_library` is loaded,
        // and `self` owns it.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                trans(a.transposed),
                trans(b.transposed),
                m,
                n,
                k,
                alpha,
                a.data.as_ptr(),
                lda,
                b.data.as_ptr(),
                ldb,
                beta,
                c,
                ldc,
            );
        }
        Some(())
    }
}

/// The process's BLAS, loaded on first use; `None` when there is none or `TEMPER_BLAS=off`.
pub fn blas() -> Option<&'static Blas> {
    static LOADED: OnceLock<Option<Blas>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let choice = std::env::var(BLAS_ENV).unwrap_or_default();
            match choice.as_str() {
                "off" => None,
                "" | "auto" => ["libopenblas.so.0", "libopenblas.so"]
                    .iter()
                    .find_map(|name| load(name).ok()),
                path => match load(path) {
                    Ok(blas) => Some(blas),
                    Err(err) => {
                        tracing::warn!("{BLAS_ENV}={path}: {err}; using the gemm crate");
                        None
                    }
                },
            }
        })
        .as_ref()
}

/// Which kernels the products run on, for the start-up log.
pub fn describe() -> String {
    match blas() {
        Some(blas) => blas.name.clone(),
        None => "the gemm crate".to_string(),
    }
}

fn load(name: &str) -> Result<Blas, libloading::Error> {
    // SAFETY: loading runs the library's initialisers; OpenBLAS's only set up its
    // per-architecture tables and, in threaded builds, its (here idle) thread pool.
    let library = unsafe { libloading::Library::new(name) }?;
    // SAFETY: the symbols are looked up with the signatures the CBLAS and OpenBLAS headers
    // declare for them.
    unsafe {
        let sgemm = *library.get::<Sgemm>(b"cblas_sgemm\0")?;
        if let Ok(set_threads) =
            library.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0")
        {
            set_threads(1);
        }
        let name = match library
            .get::<unsafe extern "C" fn() -> *const c_char>(b"openblas_get_corename\0")
        {
            Ok(corename) => {
                let raw = corename();
                if raw.is_null() {
                    name.to_string()
                } else {
                    format!("OpenBLAS ({})", CStr::from_ptr(raw).to_string_lossy())
                }
            }
            Err(_) => name.to_string(),
        };
        Ok(Blas {
            _library: library,
            sgemm,
            name,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::gemm::tests::naive;
    use super::super::gemm::{matmul_on, split, Split, Threads, View, ViewMut};
    use super::*;

    /// A BLAS of this test's own, whatever `TEMPER_BLAS` says for the process.
    fn openblas() -> Option<Blas> {
        let loaded = load("libopenblas.so.0").ok();
        if loaded.is_none() {
            eprintln!("skipped: no libopenblas.so.0 here (Debian: apt-get install libopenblas0)");
        }
        loaded
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7 + seed * 13) % 23) as f32 / 11.0 - 1.0)
            .collect()
    }

    /// An `rows × cols` view over a padded buffer: row-major with two spare columns, or
    /// the transpose of a row-major `cols × rows` matrix with three spare columns.
    fn view(data: &[f32], rows: usize, cols: usize, transposed: bool) -> View<'_> {
        if transposed {
            View::rows(data, cols, rows + 3).columns(0, rows).t()
        } else {
            View::rows(data, rows, cols + 2).columns(0, cols)
        }
    }

    #[test]
    fn every_layout_split_or_not_gives_the_naive_product() {
        let Some(blas) = openblas() else { return };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        // 70 rows by 60 columns over 3 threads: blocks of 32, 32 and 6 rows; 2 (or 70)
        // rows by 1,500 columns: blocks of 512, 512 and 476 columns; the small product whole.
        assert_eq!(split((70, 60, 96), 3), Split::Rows(32));
        assert_eq!(split((2, 1500, 96), 3), Split::Columns(512));
        assert_eq!(split((70, 1500, 96), 3), Split::Columns(512));
        assert_eq!(split((5, 6, 7), 3), Split::Whole);
        for (m, k, n) in [
            (70, 96, 60),
            (2, 96, 1500),
            (70, 96, 1500),
            (5, 7, 6),
            (1, 9, 4),
        ] {
            for (a_t, b_t, accumulate, threads) in (0..16).map(|bits| {
                let threads = if bits & 8 == 0 {
                    Threads::Pool
                } else {
                    Threads::Single
                };
                (bits & 1 == 1, bits & 2 == 2, bits & 4 == 4, threads)
            }) {
                let a_data = values((m + 3) * (k + 3), 1);
                let b_data = values((k + 3) * (n + 3), 2);
                let (a, b) = (view(&a_data, m, k, a_t), view(&b_data, k, n, b_t));
                let start = values(m * (n + 1), 3);
                let expected = naive(a, b);
                for on in [Some(&blas), None] {
                    let mut out = start.clone();
                    pool.install(|| {
                        let dst = ViewMut {
                            data: &mut out,
                            rows: m,
                            cols: n,
                            row_stride: n + 1,
                        };
                        matmul_on(on, dst, a, b, 0.5, accumulate, threads)
                    })
                    .unwrap();
                    for r in 0..m {
                        for c in 0..n {
                            let before = if accumulate {
                                f64::from(start[r * (n + 1) + c])
                            } else {
                                0.0
                            };
                            let want = before + 0.5 * expected[r * n + c];
                            let got = f64::from(out[r * (n + 1) + c]);
                            assert!(
                                (got - want).abs() < 1e-4,
                                "[{m},{k}]·[{k},{n}] a_t={a_t} b_t={b_t} acc={accumulate} blas={}: ({r},{c}) {got} vs {want}",
                                on.is_some()
                            );
                        }
                        // The padding column between rows is never written.
                        assert_eq!(out[r * (n + 1) + n], start[r * (n + 1) + n]);
                    }
                }
            }
        }
    }

    #[test]
    fn a_view_blas_cannot_read_goes_to_the_gemm_crate() {
        let Some(blas) = openblas() else { return };
        // Every other element of a [4, 6] buffer: neither stride is 1.
        let data = values(24, 4);
        let a = View {
            data: &data,
            rows: 4,
            cols: 3,
            row_stride: 6,
            col_stride: 2,
        };
        let b_data = values(15, 5);
        let b = View::rows(&b_data, 3, 5);
        let mut out = vec![0.0; 20];
        matmul_on(
            Some(&blas),
            ViewMut::rows(&mut out, 4, 5),
            a,
            b,
            1.0,
            false,
            Threads::Single,
        )
        .unwrap();
        for (got, want) in out.iter().zip(naive(a, b)) {
            assert!((f64::from(*got) - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn a_library_that_is_not_there_is_an_error() {
        assert!(load("/nonexistent/libopenblas.so.0").is_err());
    }

    #[test]
    fn openblas_reports_its_kernels() {
        let Some(blas) = openblas() else { return };
        assert!(
            blas.name.starts_with("OpenBLAS (") && blas.name.len() > "OpenBLAS ()".len(),
            "{}",
            blas.name
        );
    }
}
