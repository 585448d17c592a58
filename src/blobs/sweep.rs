//! The sweep of crash leftovers: everything in `tmp/` (partial uploads, unfinished
//! exports) and every `files/<id>` blob whose row does not exist (a process killed between
//! the blob's rename and its row's commit, e.g. while validating a large upload). Only
//! entries untouched for a grace period go, so a write in flight (whose file keeps being
//! written, or was just renamed into place) is never removed.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{BlobError, Blobs, FILES_DIR, TMP_DIR};

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Entries removed from `tmp/` (files or directories).
    pub partial_writes: u64,
    /// `files/<id>` blobs removed because no row names them.
    pub orphan_files: u64,
    /// Bytes freed by both.
    pub bytes: u64,
}

impl Blobs {
    /// Removes leftovers older than `grace`: any entry of `tmp/`, and any `files/<id>` whose
    /// id is not in `known_files`. An entry that cannot be removed is logged and skipped.
    pub async fn sweep_leftovers(
        &self,
        known_files: HashSet<String>,
        grace: Duration,
    ) -> Result<SweepReport, BlobError> {
        let root = self.root.clone();
        let report = tokio::task::spawn_blocking(move || sweep(&root, &known_files, grace))
            .await
            .map_err(io::Error::other)??;
        Ok(report)
    }
}

fn sweep(root: &Path, known_files: &HashSet<String>, grace: Duration) -> io::Result<SweepReport> {
    let now = SystemTime::now();
    let mut report = SweepReport::default();
    for entry in std::fs::read_dir(root.join(TMP_DIR))? {
        if let Some(bytes) = remove_if_stale(&entry?.path(), now, grace) {
            report.partial_writes += 1;
            report.bytes += bytes;
        }
    }
    for entry in std::fs::read_dir(root.join(FILES_DIR))? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|id| known_files.contains(id)) {
            continue;
        }
        if let Some(bytes) = remove_if_stale(&entry.path(), now, grace) {
            report.orphan_files += 1;
            report.bytes += bytes;
        }
    }
    Ok(report)
}

/// Removes `path` (file or directory) when it was last modified at least `grace` ago;
/// the bytes it held, or `None` when it was kept or could not be removed.
fn remove_if_stale(path: &Path, now: SystemTime, grace: Duration) -> Option<u64> {
    match try_remove_if_stale(path, now, grace) {
        Ok(Some(bytes)) => {
            tracing::debug!(path = %path.display(), bytes, "removed a crash leftover");
            Some(bytes)
        }
        Ok(None) => None,
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "could not remove a crash leftover");
            None
        }
    }
}

fn try_remove_if_stale(path: &Path, now: SystemTime, grace: Duration) -> io::Result<Option<u64>> {
    let meta = std::fs::symlink_metadata(path)?;
    let age = now
        .duration_since(meta.modified()?)
        .unwrap_or(Duration::ZERO);
    if age < grace {
        return Ok(None);
    }
    if meta.is_dir() {
        let bytes = dir_bytes(path)?;
        std::fs::remove_dir_all(path)?;
        Ok(Some(bytes))
    } else {
        std::fs::remove_file(path)?;
        Ok(Some(meta.len()))
    }
}

fn dir_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
