//! Allocator tuning for training on CPU.
//!
//! Every training step allocates (and frees) tensors of tens of megabytes: gradients of the
//! embedding matrix, optimizer outputs, activations. glibc serves blocks above its mmap
//! threshold with fresh `mmap`s and returns them with `munmap`, so each step pays for page
//! faults and kernel zeroing of memory it just gave back. Measured on MiniLM-L6 full
//! fine-tuning (2 cores): 4–6 s of system time per 8 steps, and 20–40 % lower throughput.
//! Keeping freed memory in the heap removes that cost.

/// Raises glibc's mmap threshold to its maximum and stops it from trimming the heap, so
/// large blocks are reused between steps. A no-op on other platforms. Call once, early.
pub fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Values from glibc's malloc.h; the libc crate does not export them all.
        const M_TRIM_THRESHOLD: libc::c_int = -1;
        const M_TOP_PAD: libc::c_int = -2;
        const M_MMAP_THRESHOLD: libc::c_int = -3;
        const MMAP_THRESHOLD_MAX: libc::c_int = 32 * 1024 * 1024;
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX);
            libc::mallopt(M_TRIM_THRESHOLD, libc::c_int::MAX);
            libc::mallopt(M_TOP_PAD, 512 * 1024 * 1024);
        }
    }
}
