//! Fault injection at the blob layer: an I/O error (e.g. `ENOSPC`, `EIO`) returned at the
//! next write, fsync or rename, exactly where the real one would surface. Tests and probes
//! arm it; in production it is never armed and costs one atomic load per operation.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// The point of a blob write where a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOp {
    /// Writing bytes into the tmp file (every chunk of a stream).
    Write,
    /// fsync of the tmp file.
    Sync,
    /// Renaming the tmp file into place.
    Rename,
    /// fsync of the directory after the rename (the file is in place by then).
    SyncDir,
}

/// Armed faults: each `op` fails with `errno` until `clear`; the free space reported for
/// the data dir can be pinned too (a disk that stays full after a failed write).
#[derive(Debug, Default)]
pub struct BlobFaults {
    armed: AtomicBool,
    failing: Mutex<Vec<(BlobOp, i32)>>,
    /// Read only while `free_space_pinned`.
    free_space: AtomicU64,
    free_space_pinned: AtomicBool,
}

impl BlobFaults {
    /// Makes every later `op` fail with the OS error `errno` (e.g. `libc::ENOSPC`).
    pub fn fail(&self, op: BlobOp, errno: i32) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing.retain(|(armed, _)| *armed != op);
        failing.push((op, errno));
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Makes the data dir report `bytes` of free space (instead of the filesystem's figure).
    pub fn pin_free_space(&self, bytes: u64) {
        self.free_space.store(bytes, Ordering::SeqCst);
        self.free_space_pinned.store(true, Ordering::SeqCst);
    }

    /// Removes every armed fault and the pinned free space.
    pub fn clear(&self) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing.clear();
        self.armed.store(false, Ordering::SeqCst);
        self.free_space_pinned.store(false, Ordering::SeqCst);
    }

    /// The pinned free space, if any.
    pub(super) fn free_space_override(&self) -> Option<u64> {
        self.free_space_pinned
            .load(Ordering::SeqCst)
            .then(|| self.free_space.load(Ordering::SeqCst))
    }

    /// The injected error for `op`, if one is armed.
    pub(super) fn check(&self, op: BlobOp) -> io::Result<()> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match failing.iter().find(|(armed, _)| *armed == op) {
            Some((_, errno)) => Err(io::Error::from_raw_os_error(*errno)),
            None => Ok(()),
        }
    }
}
