//! Files on disk under the data dir: `files/<file-id>` for uploads and result files,
//! `jobs/<job-id>/` as a trainer's work dir, `tmp/` for writes in progress. Every write goes
//! to a tmp file on the same filesystem, is fsynced and then renamed into place (and the
//! directory fsynced), so readers never see a partial file, even after a crash.
//!
//! A full disk is survivable: a reserve file (`reserve`) is released when a write hits
//! `ENOSPC`, so deletes and the database can proceed, and uploads are refused until space
//! is back (see `reserve`). Crash leftovers (partial uploads, files without rows) are swept
//! (see `sweep`). `BlobFaults` injects I/O errors at the write, fsync and rename points.
//!
//! The interface is deliberately small (write, stream, read, open, remove) so an object
//! store can implement it later; paths handed out by `path`/`job_dir` are for the local
//! trainer and inference engines, which need real directories.

mod faults;
mod reserve;
mod sweep;

use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::fs;
use tokio::io::AsyncWriteExt;

use crate::domain::ids::random_base62;

pub use faults::{BlobFaults, BlobOp};
pub use reserve::SpaceReserve;
pub use sweep::SweepReport;

const FILES_DIR: &str = "files";
const JOBS_DIR: &str = "jobs";
const TMP_DIR: &str = "tmp";

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The stream carried more than `limit` bytes; nothing was kept.
    #[error("the content is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// A relative path that is absolute or leaves the data dir (`..`).
    #[error("invalid blob path `{0}`")]
    InvalidPath(String),
    #[error("blob I/O failed: {0}")]
    Io(#[from] io::Error),
}

impl BlobError {
    /// True when the disk is full (`ENOSPC`/`EDQUOT`, real or injected).
    pub fn is_storage_full(&self) -> bool {
        matches!(self, BlobError::Io(error) if is_storage_full(error))
    }

    /// The error a write refused up front on a full disk carries.
    fn storage_full() -> BlobError {
        BlobError::Io(io::Error::from(io::ErrorKind::StorageFull))
    }
}

/// True for an I/O error that means "no space left" (`ENOSPC`, or a quota's `EDQUOT`).
pub fn is_storage_full(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::StorageFull
        || error.kind() == io::ErrorKind::QuotaExceeded
        || error.raw_os_error() == Some(libc::ENOSPC)
}

/// The data directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Blobs {
    root: Arc<PathBuf>,
    reserve: Arc<SpaceReserve>,
    faults: Arc<BlobFaults>,
}

impl Blobs {
    /// Uses `root` as the data dir, creating it and `files/`, `jobs/`, `tmp/` if needed.
    /// No space reserve (see `with_reserve`) and no injected faults.
    pub fn new(root: impl Into<PathBuf>) -> Result<Blobs, BlobError> {
        let root = root.into();
        for dir in [FILES_DIR, JOBS_DIR, TMP_DIR] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        let faults = Arc::new(BlobFaults::default());
        Ok(Blobs {
            reserve: Arc::new(SpaceReserve::new(&root, 0, faults.clone())),
            root: Arc::new(root),
            faults,
        })
    }

    /// Keeps a reserve of `bytes` in the data dir (0: none). Call `arm_reserve` to create it.
    pub fn with_reserve(mut self, bytes: u64) -> Blobs {
        self.reserve = Arc::new(SpaceReserve::new(&self.root, bytes, self.faults.clone()));
        self
    }

    /// The fault injector every write, fsync and rename of these blobs consults.
    pub fn faults(&self) -> &BlobFaults {
        &self.faults
    }

    /// The full-disk reserve.
    pub fn reserve(&self) -> &SpaceReserve {
        &self.reserve
    }

    /// Refuses a new upload with a storage-full error while the reserve is released and
    /// space has not come back (re-creating the reserve when it has).
    pub async fn ensure_space(&self) -> Result<(), BlobError> {
        if self.reserve.arm().await {
            Ok(())
        } else {
            Err(BlobError::storage_full())
        }
    }

    /// Passes `error` through, releasing the reserve first when it says the disk is full,
    /// so that deletes and the database can still write.
    async fn note<T>(&self, result: Result<T, BlobError>) -> Result<T, BlobError> {
        if let Err(error) = &result {
            if error.is_storage_full() {
                self.reserve.release().await;
            }
        }
        result
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Absolute path of `rel` under the data dir (not checked; write helpers check).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Relative path of an uploaded file's content.
    pub fn file_rel(file_id: &str) -> String {
        format!("{FILES_DIR}/{file_id}")
    }

    /// Absolute path of an uploaded file's content.
    pub fn file_path(&self, file_id: &str) -> PathBuf {
        self.path(&Blobs::file_rel(file_id))
    }

    /// Relative path of a job's work dir.
    pub fn job_rel(job_id: &str) -> String {
        format!("{JOBS_DIR}/{job_id}")
    }

    /// Absolute path of a job's work dir (not created here).
    pub fn job_dir(&self, job_id: &str) -> PathBuf {
        self.path(&Blobs::job_rel(job_id))
    }

    /// Writes `bytes` to `rel` atomically: tmp file, fsync, rename, fsync of the directory.
    pub async fn write_atomic(&self, rel: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let result = self.write_atomic_inner(rel, bytes).await;
        self.note(result).await
    }

    async fn write_atomic_inner(&self, rel: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let target = self.checked(rel)?;
        let tmp = self.tmp_path();
        let written = async {
            let mut file = fs::File::create(&tmp).await?;
            self.faults.check(BlobOp::Write)?;
            file.write_all(bytes).await?;
            self.faults.check(BlobOp::Sync)?;
            file.sync_all().await?;
            Ok::<(), io::Error>(())
        }
        .await;
        if let Err(error) = written {
            discard(&tmp).await;
            return Err(error.into());
        }
        self.publish(&tmp, &target).await
    }

    /// Streams `chunks` into `rel` without holding more than one chunk in memory and returns
    /// the byte count. Past `limit` bytes it stops with `TooLarge`; on any error the tmp
    /// file is removed and `rel` is untouched. On success the file appears atomically.
    pub async fn stream_to_file<S, E>(
        &self,
        rel: &str,
        chunks: S,
        limit: u64,
    ) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::error::Error + Send + Sync + 'static,
    {
        let result = self.stream_to_file_inner(rel, chunks, limit).await;
        self.note(result).await
    }

    async fn stream_to_file_inner<S, E>(
        &self,
        rel: &str,
        mut chunks: S,
        limit: u64,
    ) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::error::Error + Send + Sync + 'static,
    {
        let target = self.checked(rel)?;
        let tmp = self.tmp_path();
        let written = async {
            let mut file = fs::File::create(&tmp).await?;
            let mut total: u64 = 0;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(io::Error::other)?;
                total = total.saturating_add(chunk.len() as u64);
                if total > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                self.faults.check(BlobOp::Write)?;
                file.write_all(&chunk).await?;
            }
            self.faults.check(BlobOp::Sync)?;
            file.sync_all().await?;
            Ok::<u64, BlobError>(total)
        }
        .await;
        match written {
            Ok(total) => {
                self.publish(&tmp, &target).await?;
                Ok(total)
            }
            Err(error) => {
                discard(&tmp).await;
                Err(error)
            }
        }
    }

    /// The whole content of `rel`.
    pub async fn read(&self, rel: &str) -> Result<Vec<u8>, BlobError> {
        Ok(fs::read(self.checked(rel)?).await?)
    }

    /// Opens `rel` for streaming reads (downloads).
    pub async fn open(&self, rel: &str) -> Result<fs::File, BlobError> {
        Ok(fs::File::open(self.checked(rel)?).await?)
    }

    /// Removes the file `rel`; false when it did not exist.
    pub async fn remove(&self, rel: &str) -> Result<bool, BlobError> {
        match fs::remove_file(self.checked(rel)?).await {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Removes the directory `rel` and everything in it; false when it did not exist.
    pub async fn remove_dir_all(&self, rel: &str) -> Result<bool, BlobError> {
        match fs::remove_dir_all(self.checked(rel)?).await {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// `rel` under the root, refusing absolute paths, `..` and the empty path.
    fn checked(&self, rel: &str) -> Result<PathBuf, BlobError> {
        let path = Path::new(rel);
        let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
        if rel.is_empty() || !plain {
            return Err(BlobError::InvalidPath(rel.to_string()));
        }
        Ok(self.root.join(path))
    }

    fn tmp_path(&self) -> PathBuf {
        self.root
            .join(TMP_DIR)
            .join(format!("{}.part", random_base62(16)))
    }

    /// Renames a complete, fsynced tmp file onto `target` and makes the rename durable. When
    /// the directory cannot be fsynced after the rename, `target` is removed again: a write
    /// reported as failed leaves no bytes behind.
    async fn publish(&self, tmp: &Path, target: &Path) -> Result<(), BlobError> {
        let renamed = async {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).await?;
            }
            self.faults.check(BlobOp::Rename)?;
            fs::rename(tmp, target).await
        }
        .await;
        if let Err(error) = renamed {
            discard(tmp).await;
            return Err(error.into());
        }
        let synced = async {
            if let Some(parent) = target.parent() {
                self.faults.check(BlobOp::SyncDir)?;
                sync_dir(parent).await?;
            }
            Ok::<(), io::Error>(())
        }
        .await;
        if let Err(error) = synced {
            discard(target).await;
            return Err(error.into());
        }
        Ok(())
    }
}

/// fsync on a directory makes a rename inside it durable (POSIX); elsewhere it is a no-op.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir).await?.sync_all().await?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Best-effort removal of a file after a failure (the original error matters more).
async fn discard(tmp: &Path) {
    if let Err(error) = fs::remove_file(tmp).await {
        if error.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %tmp.display(), %error, "could not remove a temporary file");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fault_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn blobs() -> (tempfile::TempDir, Blobs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::new(dir.path().join("data")).expect("blobs");
        (dir, blobs)
    }

    fn chunks(parts: &[&[u8]]) -> impl Stream<Item = Result<Bytes, io::Error>> + Unpin {
        let owned: Vec<Result<Bytes, io::Error>> = parts
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        futures::stream::iter(owned)
    }

    fn tmp_entries(blobs: &Blobs) -> usize {
        std::fs::read_dir(blobs.path(TMP_DIR)).unwrap().count()
    }

    #[tokio::test]
    async fn new_creates_the_layout_and_paths_point_into_it() {
        let (_dir, blobs) = blobs();
        for sub in [FILES_DIR, JOBS_DIR, TMP_DIR] {
            assert!(blobs.path(sub).is_dir(), "{sub}");
        }
        assert_eq!(blobs.file_path("file-a"), blobs.root().join("files/file-a"));
        assert_eq!(blobs.job_dir("ftjob-a"), blobs.root().join("jobs/ftjob-a"));
        assert_eq!(Blobs::file_rel("file-a"), "files/file-a");
    }

    #[tokio::test]
    async fn write_atomic_replaces_content_and_leaves_no_tmp() {
        let (_dir, blobs) = blobs();
        blobs
            .write_atomic("jobs/j/result.csv", b"step,loss\n1,0.5\n")
            .await
            .unwrap();
        blobs
            .write_atomic("jobs/j/result.csv", b"v2")
            .await
            .unwrap();
        assert_eq!(blobs.read("jobs/j/result.csv").await.unwrap(), b"v2");
        assert_eq!(tmp_entries(&blobs), 0);
    }

    #[tokio::test]
    async fn stream_to_file_reads_back_byte_identical() {
        let (_dir, blobs) = blobs();
        let first: Vec<u8> = (0..=255u8).collect();
        let second = vec![7u8; 1000];
        let total = blobs
            .stream_to_file("files/file-a", chunks(&[&first, &second]), 1256)
            .await
            .unwrap();
        assert_eq!(total, 1256);
        let mut expected = first.clone();
        expected.extend_from_slice(&second);
        assert_eq!(blobs.read("files/file-a").await.unwrap(), expected);
        assert_eq!(tmp_entries(&blobs), 0);
    }

    #[tokio::test]
    async fn stream_past_the_limit_keeps_nothing() {
        let (_dir, blobs) = blobs();
        let result = blobs
            .stream_to_file("files/file-big", chunks(&[&[1u8; 600], &[2u8; 600]]), 1000)
            .await;
        assert!(
            matches!(result, Err(BlobError::TooLarge { limit: 1000 })),
            "{result:?}"
        );
        assert!(!blobs.file_path("file-big").exists());
        assert_eq!(tmp_entries(&blobs), 0);
    }

    #[tokio::test]
    async fn stream_error_keeps_nothing() {
        let (_dir, blobs) = blobs();
        let parts: Vec<Result<Bytes, io::Error>> = vec![
            Ok(Bytes::from_static(b"partial")),
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "client left",
            )),
        ];
        let result = blobs
            .stream_to_file("files/file-a", futures::stream::iter(parts), 1000)
            .await;
        assert!(matches!(result, Err(BlobError::Io(_))), "{result:?}");
        assert!(!blobs.file_path("file-a").exists());
        assert_eq!(tmp_entries(&blobs), 0);
    }

    #[tokio::test]
    async fn remove_reports_existence_and_paths_stay_inside() {
        let (_dir, blobs) = blobs();
        blobs.write_atomic("files/file-a", b"x").await.unwrap();
        blobs.write_atomic("jobs/j/ckpt/a.bin", b"y").await.unwrap();
        assert!(blobs.remove("files/file-a").await.unwrap());
        assert!(!blobs.remove("files/file-a").await.unwrap());
        assert!(blobs.remove_dir_all("jobs/j").await.unwrap());
        assert!(!blobs.job_dir("j").exists());
        assert!(!blobs.remove_dir_all("jobs/j").await.unwrap());
        for bad in ["", "../escape", "/etc/passwd", "files/../../x"] {
            let result = blobs.write_atomic(bad, b"z").await;
            assert!(
                matches!(result, Err(BlobError::InvalidPath(_))),
                "{bad}: {result:?}"
            );
        }
    }
}
