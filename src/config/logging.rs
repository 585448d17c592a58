//! `--log-format`: text for people, JSON for log collectors (wired in `telemetry`).

use clap::Args;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The log output (`RUST_LOG` filters it; see `temper serve --help`).
#[derive(Debug, Clone, Default, Args)]
pub struct LoggingConfig {
    /// `text` (one line of text per event) or `json` (one JSON object per line, carrying
    /// the fields of the event's spans: `request_id`, `job_id`).
    #[arg(long, env = "TEMPER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_serve as parse, Cli};
    use clap::Parser;

    #[test]
    fn log_format_is_text_unless_json_is_asked_for() {
        assert_eq!(parse(&[]).logging.log_format, LogFormat::Text);
        let json = parse(&["--log-format", "json"]).logging.log_format;
        assert_eq!(json, LogFormat::Json);
        let refused = Cli::try_parse_from(["temper", "serve", "--log-format", "xml"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("possible values: text, json"), "{refused}");
    }
}
