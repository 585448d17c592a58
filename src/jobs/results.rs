//! What a completed job leaves behind: the results CSV (stored base64-encoded, as OpenAI
//! serves `fine-tune-results` files), the classification report (or the chat training report)
//! and the final model row.

use std::time::Instant;

use super::fine_tune::write_failure;
use super::progress::{model_row, relative_to_root, ProgressTarget};
use super::{unix_now, JobFailure};
use crate::blobs::{BlobError, Blobs};
use crate::domain::ids::new_file_id;
use crate::domain::task::Task;
use crate::store::{FileRow, StoreError, ThroughputRow};
use crate::train::TrainSummary;

pub const RESULTS_PURPOSE: &str = "fine-tune-results";
pub const RESULTS_CSV_FILENAME: &str = "step_metrics.csv";
pub const REPORT_FILENAME: &str = "classification_report.json";
/// Question answering: the official SQuAD script's scores of the best checkpoint.
pub const QA_REPORT_FILENAME: &str = "squad_report.json";
/// Chat / completion jobs: token counts, truncation and the best step's metrics.
pub const LM_REPORT_FILENAME: &str = "training_report.json";

/// The name of a task's report file.
pub fn report_filename(task: Task) -> &'static str {
    match task {
        Task::SequenceClassification | Task::TokenClassification | Task::ImageClassification => {
            REPORT_FILENAME
        }
        Task::QuestionAnswering => QA_REPORT_FILENAME,
        Task::ChatSft | Task::CompletionSft | Task::Dpo => LM_REPORT_FILENAME,
    }
}

/// How a run that went start to finish in one session used its time, for estimates of
/// later jobs (`store::ThroughputRow`).
pub struct MeasuredRun {
    pub device: String,
    /// From the claim (files not yet read) to the trained model.
    pub started: Instant,
    pub ended: Instant,
    /// When the first step ended, and the tokens trained by then (`progress::FirstStep`).
    pub first_step: Option<(Instant, u64)>,
    /// Examples an optimizer step takes (batch size × accumulation).
    pub examples_per_step: usize,
    /// Examples of a whole run (every epoch).
    pub examples_in_run: usize,
}

/// The run's setup (reading and tokenizing files, loading the model, the first evaluation):
/// the time to the end of its first step less that step's share of the work at the pace of
/// the steps after it. 0 for a run of one step, which has no later pace to take it from.
pub fn setup_seconds(total: f64, first_step_done: f64, work: u64, work_by_first_step: u64) -> f64 {
    let after = total - first_step_done;
    let rest = work.saturating_sub(work_by_first_step);
    if rest == 0 || after <= 0.0 {
        return 0.0;
    }
    let per_unit = after / rest as f64;
    (first_step_done - work_by_first_step as f64 * per_unit).clamp(0.0, total)
}

/// Records the run's speed; a failure to is logged, never the job's: the model is made.
pub async fn record_throughput(target: &ProgressTarget, summary: &TrainSummary, run: MeasuredRun) {
    let last_step = summary
        .checkpoints
        .iter()
        .map(|c| c.step)
        .max()
        .unwrap_or(0);
    let samples = (last_step * run.examples_per_step).min(run.examples_in_run) as u64;
    let seconds = run.ended.duration_since(run.started).as_secs_f64();
    let setup = run.first_step.map_or(0.0, |(at, tokens_then)| {
        let first_done = at.duration_since(run.started).as_secs_f64();
        // The work estimates pace: tokens, or for images (no tokens) examples.
        let (work, by_first) = if summary.trained_tokens > 0 {
            (summary.trained_tokens, tokens_then)
        } else {
            (samples, (run.examples_per_step as u64).min(samples))
        };
        setup_seconds(seconds, first_done, work, by_first)
    });
    let row = ThroughputRow {
        job_id: target.job_id.clone(),
        model: target.base_model.clone(),
        task: target.task.stored_name().to_string(),
        device: run.device,
        seconds,
        setup_seconds: setup,
        tokens: i64::try_from(summary.trained_tokens).unwrap_or(i64::MAX),
        samples: i64::try_from(samples).unwrap_or(i64::MAX),
        finished_at: unix_now(),
    };
    if let Err(error) = target.store.record_throughput(&row).await {
        tracing::warn!(%error, "recording the job's throughput failed");
    }
}

/// Writes both result files and the final model row; returns the result file ids
/// (CSV first, as OpenAI lists it).
pub async fn record_completion(
    target: &ProgressTarget,
    summary: &TrainSummary,
) -> Result<Vec<String>, JobFailure> {
    let csv = base64_encode(summary.results_csv.as_bytes());
    let csv_id = write_result_file(target, RESULTS_CSV_FILENAME, csv.as_bytes()).await?;
    let report = serde_json::to_vec_pretty(&summary.report)
        .map_err(|e| JobFailure::internal(format!("encoding the report failed: {e}")))?;
    let report_name = report_filename(target.task);
    let report_id = write_result_file(target, report_name, &report).await?;
    let artifact_dir = relative_to_root(&target.blobs, &summary.best_checkpoint);
    let step = i64::try_from(summary.best_step).unwrap_or(i64::MAX);
    let model = model_row(
        target,
        target.final_model.clone(),
        artifact_dir,
        step,
        false,
    );
    match target
        .store
        .leased_checkpoint(&target.lease, None, &model)
        .await
    {
        // A resumed job that had already written its model row before stopping.
        Ok(true) | Err(StoreError::Conflict(_)) => {}
        Ok(false) => return Err(JobFailure::Superseded),
        Err(error) => return Err(error.into()),
    }
    Ok(vec![csv_id, report_id])
}

async fn write_result_file(
    target: &ProgressTarget,
    filename: &str,
    bytes: &[u8],
) -> Result<String, JobFailure> {
    let id = new_file_id();
    target
        .blobs
        .write_atomic(&Blobs::file_rel(&id), bytes)
        .await
        .map_err(|e| match e {
            BlobError::Io(io) => write_failure(&format!("result file {filename}"), &io),
            other => JobFailure::Retryable(format!("writing {filename} failed: {other}")),
        })?;
    let row = FileRow {
        id: id.clone(),
        bytes: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
        created_at: unix_now(),
        filename: filename.to_string(),
        purpose: RESULTS_PURPOSE.to_string(),
        status: "processed".to_string(),
        status_details: None,
        format: None,
        n_examples: None,
    };
    if !target.store.leased_file(&target.lease, &row).await? {
        // The lease lapsed (or the job was cancelled): the file is no one's.
        if let Err(error) = target.blobs.remove(&Blobs::file_rel(&id)).await {
            tracing::warn!(%error, file_id = %id, "could not remove an unrecorded result file");
        }
        return Err(JobFailure::Superseded);
    }
    Ok(id)
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648), what `base64.b64decode` reads.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(BASE64_ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| BASE64_ALPHABET.iter().position(|&a| a == c);
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let digits: Vec<usize> = chunk
            .iter()
            .take_while(|&&c| c != b'=')
            .map(|&c| value(c))
            .collect::<Option<_>>()?;
        let n = digits
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | ((d as u32) << (18 - 6 * i)));
        for i in 0..digits.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).as_deref(), Some(plain.as_bytes()));
        }
    }
}
