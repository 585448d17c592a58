//! Measuring a training run's memory from inside the process (Linux): `VmRSS` before it,
//! `VmHWM` (the peak) after, the peak reset by writing `/proc/self/clear_refs`; and an
//! observer that only passes the job's events on to stderr.

use anyhow::Context;
use temper::train::{Control, EventLevel, SavedCheckpoint, StepMetrics, TrainObserver};

/// A `/proc/self/status` field in bytes.
pub fn status_bytes(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} missing"))?;
    let kib: u64 = line[field.len()..]
        .split_whitespace()
        .next()
        .context("no value")?
        .parse()?;
    Ok(kib * 1024)
}

/// Starts the peak (`VmHWM`) over from the current RSS; returns that RSS.
pub fn reset_peak() -> anyhow::Result<u64> {
    std::fs::write("/proc/self/clear_refs", "5").context("resetting VmHWM")?;
    status_bytes("VmRSS:")
}

/// Events to stderr, everything else ignored.
pub struct Quiet;

impl TrainObserver for Quiet {
    fn on_event(&mut self, _: EventLevel, message: String) {
        eprintln!("{message}");
    }
    fn on_step(&mut self, _: &StepMetrics) {}
    fn on_checkpoint(&mut self, _: &SavedCheckpoint) {}
    fn control(&mut self) -> Control {
        Control::Continue
    }
}

/// Runs a training job as the service does, on a rayon pool of its own; with `generic`,
/// every op on the composed candle ops a GPU runs (`zoo::fused::with_generic_ops`).
pub fn train_on_own_pool<R: Send>(generic: bool, job: impl FnOnce() -> R + Send) -> R {
    temper::runtime::on_own_pool(|| {
        if generic {
            temper::zoo::fused::with_generic_ops(job)
        } else {
            job()
        }
    })
}

/// Bytes as MiB with one decimal, for the JSON lines.
pub fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1u64 << 20) as f64 * 10.0).round() / 10.0
}
