//! What the subcommands print: borderless tables with a header (like `docker ps`), key and
//! value lists, RFC 3339 times in UTC, pretty JSON, all written to stdout.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use comfy_table::{presets, Table};
use serde::Serialize;

use super::error::CliError;

/// What an absent value shows as.
pub const NONE: &str = "-";

/// Columns under a header, two spaces apart, no trailing spaces.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table.trim_fmt()
}

/// `key  value` lines, the values aligned.
pub fn key_values(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(key, value)| format!("{key:<width$}  {value}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A Unix time as `2026-01-05T12:34:56Z`.
pub fn time(unix_seconds: i64) -> String {
    match u64::try_from(unix_seconds) {
        Ok(seconds) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string()
        }
        Err(_) => unix_seconds.to_string(),
    }
}

pub fn optional<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| NONE.to_string(), |v| v.to_string())
}

/// Indented JSON, as the server sent it.
pub fn json(value: &impl Serialize) -> String {
    serde_json::to_string_pretty(value)
        .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
}

/// `text` and a newline to stdout. A reader that went away (`| head`) ends the command
/// through `CliError::Output`, which `cli::main` treats as success.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_borders_or_trailing_spaces() {
        let text = table(
            &["ID", "STATUS"],
            vec![
                vec!["file-1".into(), "processed".into()],
                vec!["file-22222".into(), "error".into()],
            ],
        );
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "ID          STATUS",
                "file-1      processed",
                "file-22222  error",
            ],
            "{text}"
        );
    }

    #[test]
    fn key_values_align_the_values() {
        assert_eq!(
            key_values(&[("id", "ftjob-1".into()), ("status", "running".into())]),
            "id      ftjob-1\nstatus  running"
        );
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(1_767_616_496), "2026-01-05T12:34:56Z");
        assert_eq!(time(-5), "-5");
        assert_eq!(optional(None::<i64>), "-");
        assert_eq!(optional(Some(12)), "12");
    }
}
