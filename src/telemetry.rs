//! Logging setup, the service's metrics ([`metrics`]), and span and metric names in one
//! place.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default [`DEFAULT_LOG_FILTER`]), as text
//! with ANSI colours only when stderr is a terminal (and `NO_COLOR` is unset), or as one
//! JSON object per line (`--log-format json`) that carries the fields of every span the
//! event is in, outermost first: `request_id` on each line of a request (the `http` span),
//! `job_id` on each line of a job (the worker's [`JOB_SPAN`], entered by every task and
//! thread that works for the job). Logging must never
//! take the service down: a log line that cannot be written (stderr redirected to a file
//! on a full disk, a closed pipe) is dropped and counted in [`LogStats`], and the count is
//! written as a line of its own as soon as writing works again. tracing-subscriber's own
//! report of a failed write is switched off: it goes through `eprintln!`, which panics when
//! stderr itself fails — inside whichever request was logging.

pub mod metrics;
#[cfg(test)]
pub(crate) mod testing;

use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::basemodels::{self, BaseModel, BaseModelKind};
use crate::config::{Config, LogFormat};

/// Filter used when `RUST_LOG` is unset.
pub const DEFAULT_LOG_FILTER: &str = "temper=info,tower_http=info";

/// Span field carrying the request id (`x-request-id`) on every HTTP span.
pub const REQUEST_ID_FIELD: &str = "request_id";

/// The span around one claimed job's whole run, with its [`JOB_ID_FIELD`].
pub const JOB_SPAN: &str = "job";
/// Span field carrying the job id on the job span.
pub const JOB_ID_FIELD: &str = "job_id";

/// Log lines that could not be written. Cheap to clone; every clone shares the counts.
#[derive(Debug, Clone, Default)]
pub struct LogStats {
    /// Every line dropped since start-up.
    dropped: Arc<AtomicU64>,
    /// Dropped lines not yet reported in the log.
    unreported: Arc<AtomicU64>,
    /// The format of the report of dropped lines: the log's own.
    format: LogFormat,
}

impl LogStats {
    fn new(format: LogFormat) -> LogStats {
        LogStats {
            format,
            ..LogStats::default()
        }
    }

    /// Lines dropped since start-up because the log output failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes `line` to `out`, first reporting lines dropped earlier; a failed write is
    /// counted, never returned.
    fn write_line(&self, out: &mut impl Write, line: &[u8]) {
        let unreported = self.unreported.swap(0, Ordering::Relaxed);
        if unreported > 0 {
            let note = dropped_note(self.format, unreported);
            if out.write_all(note.as_bytes()).is_err() {
                self.unreported.fetch_add(unreported, Ordering::Relaxed);
            }
        }
        if out.write_all(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.unreported.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The line reporting `dropped` lost lines, in the log's `format`.
fn dropped_note(format: LogFormat, dropped: u64) -> String {
    let message = format!(
        "{dropped} log lines could not be written (the log output failed) and were dropped"
    );
    match format {
        LogFormat::Text => format!("WARN temper::telemetry: {message}\n"),
        LogFormat::Json => {
            // The shape of the JSON formatter's own lines (it has no way to write this one).
            let note = serde_json::json!({
                "level": "WARN",
                "fields": {"message": message, "dropped_lines": dropped},
                "target": "temper::telemetry",
            });
            format!("{note}\n")
        }
    }
}

/// A `MakeWriter` whose writers never fail: see the module doc.
#[derive(Debug, Clone)]
pub struct NeverFailingWriter<M> {
    inner: M,
    stats: LogStats,
}

impl<M> NeverFailingWriter<M> {
    pub fn new(inner: M, stats: LogStats) -> Self {
        NeverFailingWriter { inner, stats }
    }
}

/// One log line's writer (the fmt layer formats a whole line, then writes it at once).
pub struct LineWriter<W> {
    inner: W,
    stats: LogStats,
}

impl<W: Write> Write for LineWriter<W> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.stats.write_line(&mut self.inner, line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Same rule as a line: a failed flush loses nothing we could still save.
        let _ = self.inner.flush();
        Ok(())
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for NeverFailingWriter<M> {
    type Writer = LineWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            inner: self.inner.make_writer(),
            stats: self.stats.clone(),
        }
    }
}

/// Whether log lines get ANSI colours: only on a terminal, and never with `NO_COLOR` set
/// (<https://no-color.org>).
pub fn colours_wanted(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// The subscriber `temper serve` installs, writing `format` lines through `writer` (stderr
/// in the binary; tests inject failing or capturing writers here). `ansi` colours text
/// lines; JSON lines never have colours.
pub fn subscriber<M>(
    writer: M,
    filter: EnvFilter,
    format: LogFormat,
    ansi: bool,
) -> (impl Subscriber + Send + Sync + 'static, LogStats)
where
    M: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let stats = LogStats::new(format);
    let writer = NeverFailingWriter::new(writer, stats.clone());
    let lines = tracing_subscriber::fmt::layer()
        .log_internal_errors(false)
        .with_writer(writer);
    let lines = match format {
        LogFormat::Text => lines.with_ansi(ansi).boxed(),
        LogFormat::Json => lines
            .json()
            .with_ansi(false)
            // Every span's fields, outermost first: the request id and the job id sit in
            // the outer spans, under whatever span the event is in.
            .with_span_list(true)
            .with_current_span(false)
            // The engine's and the trainer's threads say who wrote the line.
            .with_thread_names(true)
            .boxed(),
    };
    let subscriber = tracing_subscriber::registry().with(filter).with(lines);
    (subscriber, stats)
}

/// `RUST_LOG`, or [`DEFAULT_LOG_FILTER`] when it is unset or invalid.
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER))
}

/// Installs the global `tracing` subscriber on stderr writing `format` lines, honouring
/// `RUST_LOG` and `NO_COLOR`. Safe to call twice (the second call changes nothing).
pub fn init_tracing(format: LogFormat) -> LogStats {
    let no_color = std::env::var("NO_COLOR").ok();
    let ansi = colours_wanted(io::stderr().is_terminal(), no_color.as_deref());
    let (subscriber, stats) = subscriber(io::stderr, env_filter(), format, ansi);
    // An error only means a subscriber is already installed.
    let _ = subscriber.try_init();
    stats
}

/// What `serve` says once it listens on `address`: the base models it found (or a warning
/// that there are none), and a warning when it is reachable beyond this machine without an
/// API key.
pub fn log_startup(config: &Config, address: SocketAddr) {
    tracing::info!("listening on http://{address}");
    tracing::info!(
        "CPU matrix products on {}",
        crate::zoo::cpu::blas::describe()
    );
    log_base_models(&config.storage.models_dir);
    if exposed_without_key(address, config.server.api_keys.is_empty()) {
        tracing::warn!(
            %address,
            "listening beyond loopback without an API key: anyone who can reach this address \
             can upload files, start jobs and download models; set --api-key (TEMPER_API_KEY)"
        );
    }
}

/// Listening on a non-loopback address (`0.0.0.0` included) with no key configured.
pub fn exposed_without_key(address: SocketAddr, no_keys: bool) -> bool {
    no_keys && !address.ip().is_loopback()
}

/// `decoder (GGUF)`, `encoder`…: what a base model can be trained as, and its file type.
pub fn base_model_summary(model: &BaseModel) -> String {
    let kind = match model.kind {
        BaseModelKind::Encoder => "encoder",
        BaseModelKind::Decoder => "decoder",
        BaseModelKind::Vision => "image",
    };
    match model.gguf {
        Some(_) => format!("{} ({kind}, GGUF)", model.id),
        None => format!("{} ({kind})", model.id),
    }
}

fn log_base_models(models_dir: &Path) {
    let dir = models_dir.display();
    if !models_dir.is_dir() {
        tracing::warn!(
            "the models dir {dir} does not exist: no local base models (only the hf-hub \
             cache, HF_HOME, is searched); create it or pass --models-dir"
        );
        return;
    }
    let found = basemodels::list(models_dir);
    if found.is_empty() {
        tracing::warn!(
            "no base models in the models dir {dir}: put Hugging Face directories at \
             <org>/<name>/ or GGUF files at <name>.gguf or <org>/<name>.gguf"
        );
        return;
    }
    let summary: Vec<String> = found.iter().map(base_model_summary).collect();
    tracing::info!(
        "{} base models in {dir}: {}",
        found.len(),
        summary.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Fails every write while `full` is set, else records the bytes.
    #[derive(Clone, Default)]
    struct FlakyDisk {
        full: Arc<Mutex<bool>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for FlakyDisk {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if *self.full.lock().expect("lock") {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.written.lock().expect("lock").extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for FlakyDisk {
        type Writer = FlakyDisk;

        fn make_writer(&'a self) -> FlakyDisk {
            self.clone()
        }
    }

    #[test]
    fn failed_lines_are_counted_and_reported_once_writing_works_again() {
        let disk = FlakyDisk::default();
        let (subscriber, stats) =
            subscriber(disk.clone(), EnvFilter::new("info"), LogFormat::Text, false);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before");
            *disk.full.lock().expect("lock") = true;
            for i in 0..3 {
                tracing::info!(i, "lost");
            }
            assert_eq!(stats.dropped(), 3);
            *disk.full.lock().expect("lock") = false;
            tracing::info!("after");
        });
        let text = String::from_utf8(disk.written.lock().expect("lock").clone()).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].ends_with("before"), "{text}");
        assert!(
            lines[1].contains("3 log lines could not be written"),
            "{text}"
        );
        assert!(lines[2].ends_with("after"), "{text}");
        assert!(!text.contains("lost"), "{text}");
        assert_eq!(stats.dropped(), 3);
        assert!(!text.contains('\u{1b}'), "no ANSI escapes: {text:?}");
    }

    #[test]
    fn json_lines_carry_their_spans_fields_and_the_dropped_lines_report_is_json_too() {
        let disk = FlakyDisk::default();
        let (subscriber, stats) =
            subscriber(disk.clone(), EnvFilter::new("info"), LogFormat::Json, false);
        tracing::subscriber::with_default(subscriber, || {
            let http = tracing::info_span!("http", request_id = "req_1");
            let _http = http.enter();
            let inner = tracing::info_span!("load_model", model = "m");
            let _inner = inner.enter();
            tracing::info!(bytes = 12, "loaded");
            *disk.full.lock().expect("lock") = true;
            tracing::info!("lost");
            tracing::info!("lost");
            *disk.full.lock().expect("lock") = false;
            tracing::warn!("after");
        });
        assert_eq!(stats.dropped(), 2);
        let text = String::from_utf8(disk.written.lock().expect("lock").clone()).expect("utf8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["fields"]["message"], "loaded");
        assert_eq!(lines[0]["fields"]["bytes"], 12);
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["spans"][0]["name"], "http");
        assert_eq!(lines[0]["spans"][0][REQUEST_ID_FIELD], "req_1");
        assert_eq!(lines[0]["spans"][1]["model"], "m");
        assert!(lines[0]["threadName"].is_string(), "{text}");
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["fields"]["dropped_lines"], 2);
        assert_eq!(lines[2]["fields"]["message"], "after");
        assert_eq!(lines[2]["spans"][0][REQUEST_ID_FIELD], "req_1");
    }

    /// What `log_startup` writes for `config` listening on `address`.
    fn startup_log(config: &Config, address: &str) -> String {
        let disk = FlakyDisk::default();
        let (subscriber, _) =
            subscriber(disk.clone(), EnvFilter::new("info"), LogFormat::Text, false);
        let address: SocketAddr = address.parse().expect("address");
        tracing::subscriber::with_default(subscriber, || log_startup(config, address));
        let bytes = disk.written.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("utf8")
    }

    fn config_with_models_dir(models_dir: &Path) -> Config {
        Config {
            storage: crate::config::StorageConfig {
                models_dir: models_dir.to_path_buf(),
                ..crate::config::StorageConfig::default()
            },
            ..Config::default()
        }
    }

    #[test]
    fn startup_lists_base_models_with_their_kinds() {
        let dir = tempfile::tempdir().expect("tmp");
        let bert = dir.path().join("org/bert");
        std::fs::create_dir_all(&bert).expect("mkdir");
        std::fs::write(bert.join("config.json"), r#"{"model_type":"bert"}"#).expect("config");
        std::fs::write(bert.join("model.safetensors"), b"x").expect("weights");
        std::fs::write(bert.join("tokenizer.json"), b"{}").expect("tokenizer");
        std::fs::write(dir.path().join("Smol.gguf"), b"GGUF").expect("gguf");
        let log = startup_log(&config_with_models_dir(dir.path()), "127.0.0.1:8080");
        assert!(log.contains("listening on http://127.0.0.1:8080"), "{log}");
        assert!(
            log.contains("2 base models in")
                && log.contains("Smol (decoder, GGUF), org/bert (encoder)"),
            "{log}"
        );
        assert!(!log.contains("WARN"), "{log}");
    }

    #[test]
    fn startup_warns_about_a_missing_or_empty_models_dir_and_an_open_listener() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = startup_log(
            &config_with_models_dir(&dir.path().join("nope")),
            "127.0.0.1:1",
        );
        assert!(
            missing.contains("WARN") && missing.contains("does not exist"),
            "{missing}"
        );
        let empty = startup_log(&config_with_models_dir(dir.path()), "0.0.0.0:8080");
        assert!(
            empty.contains("no base models in the models dir"),
            "{empty}"
        );
        assert!(empty.contains("<name>.gguf"), "{empty}");
        assert!(
            empty.contains("listening beyond loopback without an API key"),
            "{empty}"
        );
        let mut keyed = config_with_models_dir(dir.path());
        keyed.server.api_keys = vec![crate::config::ApiKey::new("sk-1")];
        let keyed = startup_log(&keyed, "0.0.0.0:8080");
        assert!(!keyed.contains("without an API key"), "{keyed}");
    }

    #[test]
    fn only_non_loopback_addresses_without_keys_are_exposed() {
        let cases = [
            ("127.0.0.1:8080", true, false),
            ("[::1]:8080", true, false),
            ("0.0.0.0:8080", true, true),
            ("[::]:8080", true, true),
            ("192.168.1.5:8080", true, true),
            ("0.0.0.0:8080", false, false),
        ];
        for (address, no_keys, exposed) in cases {
            let address: SocketAddr = address.parse().expect("address");
            assert_eq!(exposed_without_key(address, no_keys), exposed, "{address}");
        }
    }

    #[test]
    fn base_models_are_summarised_with_kind_and_format() {
        let model = |id: &str, kind, gguf: Option<&str>| BaseModel {
            id: id.to_string(),
            dir: "/m".into(),
            kind,
            gguf: gguf.map(Into::into),
        };
        assert_eq!(
            base_model_summary(&model("org/bert", BaseModelKind::Encoder, None)),
            "org/bert (encoder)"
        );
        assert_eq!(
            base_model_summary(&model("Smol", BaseModelKind::Decoder, Some("/m/Smol.gguf"))),
            "Smol (decoder, GGUF)"
        );
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours_wanted(true, None));
        assert!(colours_wanted(true, Some("")));
        assert!(!colours_wanted(true, Some("1")));
        assert!(!colours_wanted(false, None));
    }
}
