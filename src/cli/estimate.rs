//! `temper jobs estimate`: the create's flags, answered with what the job would train on
//! and take (`POST /v1/fine_tuning/estimates`) instead of a job.

use serde_json::Value;

use super::client::ApiClient;
use super::error::CliError;
use super::jobs::create_body;
use super::output::{self, print};
use crate::config::client::CreateJobArgs;

pub async fn run(client: &ApiClient, args: &CreateJobArgs) -> Result<(), CliError> {
    let estimate: Value = client
        .post("/fine_tuning/estimates", &create_body(args)?)
        .await?;
    if args.output.json {
        return print(&output::json(&estimate));
    }
    print(&estimate_details(&estimate))
}

fn count(estimate: &Value, key: &str) -> u64 {
    estimate[key].as_u64().unwrap_or(0)
}

/// Bytes as GiB with two decimals.
fn gib(bytes: &Value) -> String {
    let bytes = bytes.as_f64().unwrap_or(0.0);
    format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
}

/// `12 s`, `3.5 min`, `2.1 h`.
fn span(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 5400.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

/// One line per device: its memory against what it has free, and its duration and basis.
fn device_line(device: &Value) -> String {
    if let Some(error) = device["error"].as_str() {
        return format!("not estimated: {error}");
    }
    let memory = &device["memory"];
    let mut line = format!("memory {}", gib(&memory["total_bytes"]));
    if memory["available_bytes"].is_u64() {
        let fits = match memory["fits"].as_bool() {
            Some(true) => "fits",
            _ => "does not fit",
        };
        line.push_str(&format!(
            " of {} free ({fits})",
            gib(&memory["available_bytes"])
        ));
    }
    let duration = &device["duration"];
    if let Some(seconds) = duration["seconds"].as_f64() {
        let basis = match duration["basis"].as_str() {
            Some("history") => format!(
                "at the pace of {} recent job(s)",
                duration["history_jobs"].as_u64().unwrap_or(0)
            ),
            _ => "FLOPs model".to_string(),
        };
        line.push_str(&format!(", about {} ({basis})", span(seconds)));
    }
    line
}

pub fn estimate_details(estimate: &Value) -> String {
    let mut rows = vec![
        (
            "task",
            estimate["task"].as_str().unwrap_or_default().to_string(),
        ),
        (
            "examples",
            format!(
                "{} training, {} validation",
                count(estimate, "training_examples"),
                count(estimate, "validation_examples")
            ),
        ),
        (
            "tokens",
            format!(
                "{} an epoch, {} in all",
                count(estimate, "tokens_per_epoch"),
                count(estimate, "trained_tokens")
            ),
        ),
        (
            "steps",
            format!(
                "{} an epoch, {} in all ({} epochs)",
                count(estimate, "steps_per_epoch"),
                count(estimate, "total_steps"),
                count(estimate, "n_epochs")
            ),
        ),
    ];
    let devices = estimate["devices"].as_array().cloned().unwrap_or_default();
    let lines: Vec<(String, String)> = devices
        .iter()
        .map(|d| {
            (
                d["device"].as_str().unwrap_or("?").to_string(),
                device_line(d),
            )
        })
        .collect();
    for (name, line) in &lines {
        rows.push((name.as_str(), line.clone()));
    }
    let warnings = estimate["warnings"].as_array().cloned().unwrap_or_default();
    for warning in &warnings {
        rows.push(("warning", warning.as_str().unwrap_or_default().to_string()));
    }
    output::key_values(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_estimate_reads_as_counts_and_one_line_per_device() {
        let estimate = json!({
            "task": "chat", "training_examples": 10, "validation_examples": 2,
            "tokens_per_epoch": 300, "trained_tokens": 600, "n_epochs": 2,
            "steps_per_epoch": 3, "total_steps": 6, "warnings": ["1 example was truncated"],
            "devices": [
                {"device": "cpu", "memory": {"total_bytes": 1u64 << 30,
                    "available_bytes": 4u64 << 30, "fits": true},
                 "duration": {"seconds": 150.0, "basis": "history", "history_jobs": 2}},
                {"device": "cuda:0", "error": "no NVIDIA driver", "memory": null, "duration": null},
            ],
        });
        let text = estimate_details(&estimate);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "task      chat",
                "examples  10 training, 2 validation",
                "tokens    300 an epoch, 600 in all",
                "steps     3 an epoch, 6 in all (2 epochs)",
                "cpu       memory 1.00 GiB of 4.00 GiB free (fits), about 2.5 min (at the pace of 2 recent job(s))",
                "cuda:0    not estimated: no NVIDIA driver",
                "warning   1 example was truncated",
            ]
        );
        assert_eq!(span(12.0), "12 s");
        assert_eq!(span(7200.0), "2.0 h");
    }
}
