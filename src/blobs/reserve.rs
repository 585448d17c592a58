//! The full-disk reserve: a file of zeros (`space-reserve` in the data dir) that holds
//! space back while the disk has room, so that a full disk can still be worked out of.
//!
//! When a write hits `ENOSPC` (a blob, or the database's `SQLITE_FULL`) the reserve is
//! removed: its space lets `DELETE /v1/files/{id}` commit its row deletion and the
//! database write its WAL, so a user can free space through the API. While it is released,
//! new uploads are refused up front with 507, so they cannot eat that space again. It is
//! re-created as soon as the disk has room for it plus as much again (so re-arming never
//! brings the disk straight back to full); every upload and delete checks, so recovery
//! needs no restart.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::fs;
use tokio::io::AsyncWriteExt;

use super::faults::{BlobFaults, BlobOp};

/// The reserve's file name in the data dir.
pub const RESERVE_FILE: &str = "space-reserve";
/// Written in chunks of this size (the reserve must be real blocks, not a sparse file).
const CHUNK: usize = 1 << 20;

#[derive(Debug)]
pub struct SpaceReserve {
    path: PathBuf,
    bytes: u64,
    faults: Arc<BlobFaults>,
    /// True while the reserve file exists at full size.
    armed: AtomicBool,
    /// Serialises creation and removal.
    lock: tokio::sync::Mutex<()>,
}

impl SpaceReserve {
    /// A reserve of `bytes` (0: none) in `root`, not yet created (see `arm`).
    pub(super) fn new(root: &Path, bytes: u64, faults: Arc<BlobFaults>) -> SpaceReserve {
        SpaceReserve {
            path: root.join(RESERVE_FILE),
            bytes,
            faults,
            armed: AtomicBool::new(false),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Size of the reserve in bytes (0: disabled).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// True while the reserve is in place (always true when disabled).
    pub fn is_armed(&self) -> bool {
        self.bytes == 0 || self.armed.load(Ordering::SeqCst)
    }

    /// Makes sure the reserve exists: true when it does (or is disabled), false when the
    /// disk has no room for it plus as much again.
    pub async fn arm(&self) -> bool {
        if self.is_armed() {
            return true;
        }
        let _guard = self.lock.lock().await;
        if self.is_armed() {
            return true;
        }
        if fs::metadata(&self.path)
            .await
            .is_ok_and(|meta| meta.len() == self.bytes)
        {
            self.armed.store(true, Ordering::SeqCst);
            return true;
        }
        let room = match self.available_bytes() {
            Ok(room) => room,
            Err(error) => {
                tracing::warn!(%error, "could not read the data dir's free space");
                return false;
            }
        };
        if room < self.bytes.saturating_mul(2) {
            return false;
        }
        match self.write().await {
            Ok(()) => {
                self.armed.store(true, Ordering::SeqCst);
                tracing::info!(bytes = self.bytes, "disk space reserve in place");
                true
            }
            Err(error) => {
                tracing::warn!(%error, bytes = self.bytes, "could not create the disk space reserve");
                if let Err(error) = fs::remove_file(&self.path).await {
                    if error.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(%error, "could not remove a partial disk space reserve");
                    }
                }
                false
            }
        }
    }

    /// Removes the reserve so its space can be used; true when it was in place.
    pub async fn release(&self) -> bool {
        if self.bytes == 0 {
            return false;
        }
        let _guard = self.lock.lock().await;
        let was_armed = self.armed.swap(false, Ordering::SeqCst);
        match fs::remove_file(&self.path).await {
            Ok(()) => {
                tracing::warn!(
                    bytes = self.bytes,
                    "the data disk is full: released the disk space reserve so deletes and \
                     the database can proceed; uploads get 507 until space is back"
                );
                true
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => was_armed,
            Err(error) => {
                tracing::error!(%error, "could not release the disk space reserve");
                false
            }
        }
    }

    async fn write(&self) -> io::Result<()> {
        let mut file = fs::File::create(&self.path).await?;
        let zeros = vec![0u8; CHUNK];
        let mut left = self.bytes;
        while left > 0 {
            let n = usize::try_from(left).map_or(CHUNK, |left| left.min(CHUNK));
            self.faults.check(BlobOp::Write)?;
            file.write_all(&zeros[..n]).await?;
            left -= n as u64;
        }
        self.faults.check(BlobOp::Sync)?;
        file.sync_all().await
    }

    /// Bytes an unprivileged process may still write in the data dir's filesystem.
    fn available_bytes(&self) -> io::Result<u64> {
        if let Some(pinned) = self.faults.free_space_override() {
            return Ok(pinned);
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let stats = rustix::fs::statvfs(dir)?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }
}
