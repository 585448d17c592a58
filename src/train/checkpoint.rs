//! Writing checkpoint directories (their layout and `meta.json` are `artifacts::checkpoint`'s):
//! `state.json` says where training stands, so a resumed job continues exactly.
//!
//! A checkpoint is written into `step-N.tmp/`, every file fsynced, then renamed: a crash
//! leaves either no `step-N/` or a complete one, so resume never picks half a checkpoint.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

pub use super::named_metrics::MetricsRow;
use super::TrainError;
use crate::artifacts::checkpoint::{
    checkpoints_root, parse_step, step_dir, CheckpointMeta, META_FILE, OPTIMIZER_FILE, STATE_FILE,
    TRAINABLE_FILE,
};

/// A checkpoint this job has written (kept in the state so a resumed job can list them all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub step: usize,
    pub epoch_end: bool,
}

/// Where training stands after `step` optimizer steps.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    /// The epoch to continue in and the index of its next batch (micro-batch).
    pub epoch: usize,
    pub batch_in_epoch: usize,
    pub best_metric: Option<f64>,
    pub best_step: Option<usize>,
    pub evals_without_improvement: usize,
    pub history: Vec<MetricsRow>,
    /// Non-padding tokens trained on so far.
    pub tokens_seen: u64,
    pub checkpoints: Vec<CheckpointRecord>,
    /// SFT: the full validation before the first step (the base model's numbers).
    #[serde(default)]
    pub initial_valid_loss: Option<f64>,
    #[serde(default)]
    pub initial_valid_accuracy: Option<f64>,
}

/// Everything a checkpoint stores.
pub struct CheckpointContents<'a> {
    pub trainable: &'a HashMap<String, Tensor>,
    pub optimizer: &'a HashMap<String, Tensor>,
    pub state: &'a TrainState,
    pub meta: &'a CheckpointMeta,
}

fn fsync_file(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.sync_all()
}

/// Directories can be fsynced on Unix (makes a rename durable); elsewhere this is a no-op.
fn fsync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    fs::File::open(path)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn write_json(path: &Path, value: &impl Serialize) -> io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(&serde_json::to_vec_pretty(value)?)?;
    file.sync_all()
}

/// The I/O error under a candle error (safetensors wraps the one it hit), so a full disk
/// stays recognisable as one.
fn io_error_of(error: candle_core::Error) -> io::Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<io::Error>() {
            return match io.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(io.kind(), io.to_string()),
            };
        }
        source = current.source();
    }
    io::Error::other(error.to_string())
}

fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> io::Result<()> {
    candle_core::safetensors::save(tensors, path).map_err(io_error_of)?;
    fsync_file(path)
}

/// An I/O error in plain words, without the `(os error N)` suffix.
pub fn plain_io_error(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Writes `step-N/` atomically and returns its path. Any I/O error is a
/// [`TrainError::Write`] naming `checkpoint step-N` (never the path).
pub fn write_checkpoint(
    work_dir: &Path,
    contents: &CheckpointContents,
) -> Result<PathBuf, TrainError> {
    let step = contents.state.step;
    write_step_dir(work_dir, contents).map_err(|source| TrainError::Write {
        what: format!("checkpoint step-{step}"),
        source,
    })
}

fn write_step_dir(work_dir: &Path, contents: &CheckpointContents) -> io::Result<PathBuf> {
    let root = checkpoints_root(work_dir);
    fs::create_dir_all(&root)?;
    let step = contents.state.step;
    let final_dir = step_dir(work_dir, step);
    let tmp_dir = root.join(format!("step-{step}.tmp"));
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir)?;
    }
    fs::create_dir_all(&tmp_dir)?;
    save_tensors(contents.trainable, &tmp_dir.join(TRAINABLE_FILE))?;
    #[cfg(test)]
    faults::check(work_dir)?;
    save_tensors(contents.optimizer, &tmp_dir.join(OPTIMIZER_FILE))?;
    write_json(&tmp_dir.join(META_FILE), contents.meta)?;
    write_json(&tmp_dir.join(STATE_FILE), contents.state)?;
    fsync_dir(&tmp_dir)?;
    // Re-saving a step (e.g. a pause right after an epoch-end save) replaces the old
    // directory; it is moved aside first so a complete `step-N/` exists at every moment
    // but the one between the two renames.
    let displaced = root.join(format!("step-{step}.old"));
    if final_dir.exists() {
        if displaced.exists() {
            fs::remove_dir_all(&displaced)?;
        }
        fs::rename(&final_dir, &displaced)?;
    }
    fs::rename(&tmp_dir, &final_dir)?;
    fsync_dir(&root)?;
    if displaced.exists() {
        fs::remove_dir_all(&displaced)?;
    }
    Ok(final_dir)
}

/// Fault injection for tests: every checkpoint written under a registered work dir fails
/// with the registered OS error after its first file, as on a disk that just filled up.
#[cfg(test)]
pub(crate) mod faults {
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static FAULTS: Mutex<Vec<(PathBuf, i32)>> = Mutex::new(Vec::new());

    /// From now on, checkpoint writes under `work_dir` fail with `os_error` (e.g. ENOSPC).
    pub fn fail_writes_in(work_dir: &Path, os_error: i32) {
        if let Ok(mut faults) = FAULTS.lock() {
            faults.push((work_dir.to_path_buf(), os_error));
        }
    }

    /// The disk has space again.
    pub fn clear(work_dir: &Path) {
        if let Ok(mut faults) = FAULTS.lock() {
            faults.retain(|(dir, _)| dir != work_dir);
        }
    }

    pub(super) fn check(work_dir: &Path) -> io::Result<()> {
        let faults = FAULTS
            .lock()
            .map_err(|_| io::Error::other("fault table poisoned"))?;
        match faults.iter().find(|(dir, _)| dir == work_dir) {
            Some((_, code)) => Err(io::Error::from_raw_os_error(*code)),
            None => Ok(()),
        }
    }
}

/// Drops optimizer state from every checkpoint but `keep` (once `keep` is durable): only
/// the newest one is needed to resume, and the moments double a full fine-tune's size.
/// Also clears `*.tmp`/`*.old` leftovers of an interrupted write.
pub fn prune_optimizer_states(work_dir: &Path, keep: &Path) -> Result<(), TrainError> {
    let root = checkpoints_root(work_dir);
    for entry in fs::read_dir(&root)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if name.ends_with(".tmp") || name.ends_with(".old") {
            fs::remove_dir_all(&path)?;
        } else if path != keep && parse_step(&name).is_some() {
            let optimizer = path.join(OPTIMIZER_FILE);
            if optimizer.exists() {
                fs::remove_file(optimizer)?;
            }
        }
    }
    Ok(())
}

pub fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    Ok(serde_json::from_slice(&fs::read(dir.join(STATE_FILE))?)?)
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
