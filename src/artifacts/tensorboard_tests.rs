#![allow(clippy::unwrap_used)]

use prost::Message;
use serde_json::{json, Value};

use super::*;

/// The records of an event file, each length and data checked against its masked CRC32C.
fn read_records(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let (length_bytes, rest) = bytes.split_at(8);
        let (length_crc, rest) = rest.split_at(4);
        assert_eq!(
            u32::from_le_bytes(length_crc.try_into().unwrap()),
            masked_crc(length_bytes),
            "length checksum"
        );
        let length = u64::from_le_bytes(length_bytes.try_into().unwrap()) as usize;
        let (data, rest) = rest.split_at(length);
        let (data_crc, rest) = rest.split_at(4);
        assert_eq!(
            u32::from_le_bytes(data_crc.try_into().unwrap()),
            masked_crc(data),
            "data checksum"
        );
        records.push(data.to_vec());
        bytes = rest;
    }
    records
}

fn decode_events(file: &[u8]) -> Vec<Event> {
    read_records(file)
        .iter()
        .map(|record| Event::decode(record.as_slice()).unwrap())
        .collect()
}

/// `(step, wall_time, [(tag, value)…])` of one step event.
type StepScalars = (i64, f64, Vec<(String, f32)>);

/// The scalars of each step event (the version record excluded).
fn step_scalars(file: &[u8]) -> Vec<StepScalars> {
    decode_events(file)
        .into_iter()
        .skip(1)
        .map(|event| {
            let values = event
                .summary
                .unwrap()
                .value
                .into_iter()
                .map(|value| (value.tag, value.simple_value.unwrap()))
                .collect();
            (event.step, event.wall_time, values)
        })
        .collect()
}

fn events(data: &[(i64, Value)]) -> Vec<MetricsEvent<'_>> {
    data.iter()
        .map(|(created_at, data)| MetricsEvent {
            created_at: *created_at,
            data,
        })
        .collect()
}

#[test]
fn the_checksum_is_tensorflows_masked_crc32c() {
    // TensorBoard's own `masked_crc32c(b"123456789")` (its compat reader checks both
    // checksums of every record with it).
    assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
}

#[test]
fn a_job_without_metrics_gets_only_the_version_record() {
    let file = event_file(1_700_000_000, &[]);
    let version = Event {
        wall_time: 1_700_000_000.0,
        step: 0,
        file_version: Some("brain.Event:2".into()),
        summary: None,
    };
    // wall_time (1 + 8 bytes) and file_version (1 + 1 + 13 bytes).
    assert_eq!(version.encoded_len(), 24);
    assert_eq!(file.len(), 8 + 4 + 24 + 4);
    assert_eq!(decode_events(&file), vec![version]);
}

#[test]
fn each_metrics_event_becomes_one_event_of_tagged_scalars() {
    let data = [
        (
            1_700_000_010,
            json!({"step": 1, "train_loss": 0.6875, "train_accuracy": 0.0, "valid_loss": null,
                   "total_steps": 2, "learning_rate": 0.001}),
        ),
        (
            1_700_000_012,
            json!({"step": 2, "train_loss": 0.5, "train_accuracy": 0.75, "valid_loss": 0.625,
                   "valid_f1": 0.8, "total_steps": 2, "learning_rate": 0.0005}),
        ),
    ];
    let file = event_file(1_700_000_000, &events(&data));
    let mut steps = step_scalars(&file);
    for (_, _, values) in &mut steps {
        values.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let tagged = |pairs: &[(&str, f32)]| -> Vec<(String, f32)> {
        pairs.iter().map(|(t, v)| (t.to_string(), *v)).collect()
    };
    assert_eq!(
        steps,
        vec![
            (
                1,
                1_700_000_010.0,
                // `valid_loss` is null at step 1: no point.
                tagged(&[
                    ("train/accuracy", 0.0),
                    ("train/learning_rate", 0.001),
                    ("train/loss", 0.6875),
                    ("train/total_steps", 2.0),
                ])
            ),
            (
                2,
                1_700_000_012.0,
                tagged(&[
                    ("train/accuracy", 0.75),
                    ("train/learning_rate", 0.0005),
                    ("train/loss", 0.5),
                    ("train/total_steps", 2.0),
                    ("valid/f1", 0.8),
                    ("valid/loss", 0.625),
                ])
            ),
        ]
    );
}

#[test]
fn a_zero_is_written_as_a_scalar_not_dropped() {
    let data = [(5, json!({"step": 1, "train_accuracy": 0.0}))];
    let file = event_file(0, &events(&data));
    let record = &read_records(&file)[1];
    // Summary.Value field 2, wire type 5 (32-bit): tag byte 0x15, then four zero bytes.
    let zero_float = [0x15, 0, 0, 0, 0];
    assert!(
        record.windows(5).any(|bytes| bytes == zero_float),
        "{record:?}"
    );
    assert_eq!(
        step_scalars(&file),
        vec![(1, 5.0, vec![("train/accuracy".to_string(), 0.0)])]
    );
}

#[test]
fn steps_a_resumed_job_ran_again_are_taken_from_the_latest_run() {
    // Run 1 reported steps 1–3 and crashed; its last checkpoint was step 1, so run 2
    // reported 2 and 3 again, then 4.
    let data = [
        (10, json!({"step": 1, "train_loss": 1.0})),
        (11, json!({"step": 2, "train_loss": 0.9})),
        (12, json!({"step": 3, "train_loss": 0.8})),
        (20, json!({"step": 2, "train_loss": 0.875})),
        (21, json!({"step": 3, "train_loss": 0.75})),
        (22, json!({"step": 4, "train_loss": 0.5})),
    ];
    let steps: Vec<(i64, f64, f32)> = step_scalars(&event_file(1, &events(&data)))
        .into_iter()
        .map(|(step, wall_time, values)| (step, wall_time, values[0].1))
        .collect();
    assert_eq!(
        steps,
        vec![
            (1, 10.0, 1.0),
            (2, 20.0, 0.875),
            (3, 21.0, 0.75),
            (4, 22.0, 0.5)
        ]
    );
}

#[test]
fn events_without_a_step_and_fields_that_are_not_numbers_are_left_out() {
    let data = [
        (10, json!({"train_loss": 1.0})),
        (
            11,
            json!({"step": 1, "train_loss": 0.5, "note": "text", "flag": true}),
        ),
    ];
    assert_eq!(
        step_scalars(&event_file(1, &events(&data))),
        vec![(1, 11.0, vec![("train/loss".to_string(), 0.5)])]
    );
}

#[test]
fn tags_group_every_task_metric_by_split() {
    for (field, tag) in [
        ("train_loss", "train/loss"),
        ("train_mean_token_accuracy", "train/mean_token_accuracy"),
        ("train_token_accuracy", "train/token_accuracy"),
        ("train_rewards_chosen", "train/rewards_chosen"),
        ("valid_loss", "valid/loss"),
        ("valid_entity_f1", "valid/entity_f1"),
        ("valid_exact_match", "valid/exact_match"),
        ("valid_reward_margin", "valid/reward_margin"),
        ("full_valid_loss", "full_valid/loss"),
        (
            "full_valid_mean_token_accuracy",
            "full_valid/mean_token_accuracy",
        ),
        ("learning_rate", "train/learning_rate"),
        ("total_steps", "train/total_steps"),
        ("training", "train/training"),
    ] {
        assert_eq!(scalar_tag(field), tag, "{field}");
    }
}

#[test]
fn the_file_is_named_for_tensorboards_log_directory_scan() {
    assert_eq!(
        event_file_name(1_700_000_000),
        "events.out.tfevents.1700000000.temper"
    );
}
