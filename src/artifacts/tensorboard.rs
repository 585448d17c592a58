//! A job's training curves as a TensorBoard event file (`events.out.tfevents.*`): TFRecord
//! framing around `Event` protobufs, one scalar per metric per step.
//!
//! The file is built from the job's `metrics` events (what `jobs::progress` writes after
//! every optimizer step), not written beside them while training. Those events are already
//! the durable record of the metrics, fenced by the job's lease: deriving the file from them
//! needs no second writer to keep consistent, and it stays exact when a crash or a restart
//! resumes a job from a checkpoint (the steps the lost run reported past that checkpoint
//! are dropped, see [`latest_run`]). A job with no metrics yet gets a valid file holding
//! only the version record.
//!
//! # Tags
//! Every numeric field of an event's `data` except `step` becomes a scalar; `step` is the
//! `Event`'s step and the event's `created_at` its wall time. The tag is the field's name
//! with its split's prefix turned into a TensorBoard group ([`scalar_tag`]):
//! - `train_<name>` → `train/<name>` (`train_loss` → `train/loss`,
//!   `train_mean_token_accuracy` → `train/mean_token_accuracy`),
//! - `valid_<name>` → `valid/<name>` (`valid_loss` → `valid/loss`, `valid_entity_f1` →
//!   `valid/entity_f1`),
//! - `full_valid_<name>` → `full_valid/<name>` (SFT's evaluation of the whole validation set),
//! - any other field describes the training run and goes under `train/` (`learning_rate` →
//!   `train/learning_rate`, `total_steps` → `train/total_steps`).
//!
//! `null` fields (a metric not computed at that step, e.g. validation between evaluations)
//! are left out. Values are written as TensorBoard's `simple_value`, a 32-bit float.

use prost::Message;
use serde_json::Value;

/// The first record of every event file; TensorBoard's readers check it.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Added to the rotated CRC32C of every TFRecord field (TensorFlow's `kMaskDelta`).
const CRC_MASK_DELTA: u32 = 0xa282_ead8;

/// One `metrics` event of a job, as the store keeps it.
#[derive(Debug, Clone, Copy)]
pub struct MetricsEvent<'a> {
    /// Unix seconds: the scalars' wall time.
    pub created_at: i64,
    /// `{"step": N, "train_loss": …, …}`.
    pub data: &'a Value,
}

/// `events.out.tfevents.<job created_at>.temper`: TensorBoard finds event files in a log
/// directory by the `tfevents` in their name; the rest is TensorFlow's `<time>.<host>`.
pub fn event_file_name(job_created_at: i64) -> String {
    format!("events.out.tfevents.{job_created_at}.temper")
}

/// The whole event file: the version record at `job_created_at`, then one `Event` per step
/// of the job's latest run (see [`latest_run`]) carrying that step's scalars.
pub fn event_file(job_created_at: i64, events: &[MetricsEvent<'_>]) -> Vec<u8> {
    let version = Event {
        wall_time: job_created_at as f64,
        step: 0,
        file_version: Some(FILE_VERSION.to_string()),
        summary: None,
    };
    let mut out = Vec::new();
    append_record(&mut out, &version.encode_to_vec());
    for step in latest_run(events) {
        append_record(&mut out, &step.encode_to_vec());
    }
    out
}

/// The TensorBoard tag of an event data field (the module doc lists the rule).
pub fn scalar_tag(field: &str) -> String {
    for split in ["full_valid", "train", "valid"] {
        if let Some(name) = field
            .strip_prefix(split)
            .and_then(|rest| rest.strip_prefix('_'))
        {
            return format!("{split}/{name}");
        }
    }
    format!("train/{field}")
}

/// The events as TensorBoard `Event`s, with the steps a resumed job re-ran counted once.
///
/// Within one run the trainer reports strictly increasing steps. A job resumed from a
/// checkpoint at step k (after a crash or a restart) reports k+1, k+2… again, after the
/// lost run may have reported steps past k: an event whose step is not above the last kept
/// one starts a new run, and every kept step at or above it is dropped. This is what
/// TensorBoard itself does with a restarted run's orphaned steps, so the curves show each
/// step once, as the run that produced the model reported it. Events without a `step`
/// (none are written today) are skipped: they have no place on a curve.
fn latest_run(events: &[MetricsEvent<'_>]) -> Vec<Event> {
    let step_of = |event: &&MetricsEvent<'_>| event.data.get("step").and_then(Value::as_i64);
    crate::domain::metric_steps::latest_run(events, step_of)
        .into_iter()
        .map(|(step, event)| Event {
            wall_time: event.created_at as f64,
            step,
            file_version: None,
            summary: Some(Summary {
                value: scalars(event.data),
            }),
        })
        .collect()
}

/// Every numeric field of `data` but `step`, tagged.
fn scalars(data: &Value) -> Vec<SummaryValue> {
    let Some(fields) = data.as_object() else {
        return Vec::new();
    };
    fields
        .iter()
        .filter(|(field, _)| field.as_str() != "step")
        .filter_map(|(field, value)| {
            value.as_f64().map(|number| SummaryValue {
                tag: scalar_tag(field),
                simple_value: Some(number as f32),
            })
        })
        .collect()
}

/// One TFRecord: the length (u64 LE), its masked CRC32C, the data, the data's masked CRC32C.
fn append_record(out: &mut Vec<u8>, data: &[u8]) {
    let length = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// TFRecord's masked checksum: the CRC32C rotated right by 15 bits plus a constant, so a
/// checksum stored inside checksummed data does not weaken the outer one.
fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
        .rotate_right(15)
        .wrapping_add(CRC_MASK_DELTA)
}

/// TensorFlow's `tensorflow.Event` (`event.proto`), the fields an event file of scalars
/// uses. `file_version` and `summary` are members of the `what` oneof there; as optional
/// fields they encode the same bytes, and only one is ever set.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary` (`summary.proto`).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with a scalar. `simple_value` is a oneof member there, so it
/// is written even when it is 0.0 (an optional field here): a plain proto3 float would
/// drop a zero, and TensorBoard would then see a value that is not a scalar and skip it —
/// an accuracy of 0 at the first step would vanish from the curve.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

#[cfg(test)]
#[path = "tensorboard_tests.rs"]
mod tests;
