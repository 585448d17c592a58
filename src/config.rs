//! Configuration: clap derive with `TEMPER_*` environment variables.
//!
//! `Config` is made of flattened sections so no function takes more than one config struct;
//! every section implements `Default`, which tests use as
//! `Config { storage: StorageConfig { data_dir, .. }, ..Config::default() }`. There are no
//! globals: `app::run` receives the whole `Config` and hands each part to its owner.
//! `client.rs` holds the client subcommands' arguments (`OPENAI_*` variables, like the SDK).

pub mod client;
mod logging;
mod serve_dtype;
mod webhooks;
pub use client::ClientCommand;
pub use logging::{LogFormat, LoggingConfig};
pub use serve_dtype::ServeDtype;
pub use webhooks::{WebhookConfig, WebhookSecret, WebhookUrl};

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};

/// OpenAI's per-file limit: 512 MB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 512 * 1024 * 1024;
/// 64 MiB held back in the data dir for working out of a full disk.
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 64 * 1024 * 1024;
/// 15 minutes untouched before a crash leftover is swept.
pub const DEFAULT_LEFTOVER_GRACE_SECS: u64 = 15 * 60;
/// 2 GiB of loaded inference engines before the least recently used is dropped.
pub const DEFAULT_INFER_CACHE_BYTES: usize = 2 * 1024 * 1024 * 1024;
/// `--max-batch-sequences`: sequences one language model decodes together (32: a decode
/// step reads every weight once whatever the batch, so more rows per step make more
/// tokens per weight read; the KV budget still bounds the memory).
pub const DEFAULT_MAX_BATCH_SEQUENCES: usize = 32;
/// `--prefill-chunk-tokens`: prompt tokens one decode step reads; it bounds how long a new
/// prompt holds back the streams already decoding (a step's time grows with its rows).
pub const DEFAULT_PREFILL_CHUNK_TOKENS: usize = 512;
/// `--adapter-cache-bytes`: LoRA adapters kept loaded beside their bases (512 MiB: about
/// fifty rank-8 adapters of every projection of SmolLM2-135M, 9.8 MB each in f32).
pub const DEFAULT_ADAPTER_CACHE_BYTES: usize = 512 * 1024 * 1024;
/// `--max-queued-sequences`: sequences one language model holds running or waiting.
pub const DEFAULT_MAX_QUEUED_SEQUENCES: usize = 256;

#[derive(Debug, Parser)]
#[command(
    name = "temper",
    version,
    about = "OpenAI-compatible fine-tuning and serving for open models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Shown under `temper serve --help`: what configures logging.
pub const SERVE_AFTER_HELP: &str = "\
Logging:
  Logs go to stderr, one line per event, without colours unless stderr is a terminal
  (NO_COLOR=1 turns them off there too). RUST_LOG filters them, with tracing's syntax
  (default `temper=info,tower_http=info`): `RUST_LOG=debug` for everything,
  `RUST_LOG=temper=debug,tower_http=warn` to quieten the per-request lines. A log line
  that cannot be written (a full disk) is dropped and counted; requests are still served.
  --log-format json (TEMPER_LOG_FORMAT=json) writes one JSON object per line instead, with
  the fields of its spans: `request_id` on every line of a request, `job_id` on every
  line of a job.

The service documents itself at GET /openapi.yaml.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service and its worker pool.
    #[command(after_help = SERVE_AFTER_HELP)]
    Serve(Config),
    /// `files`, `jobs`, `models`, `chat`: a client of a running server.
    #[command(flatten)]
    Client(ClientCommand),
}

/// Everything `temper serve` needs.
#[derive(Debug, Clone, Default, Args)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub storage: StorageConfig,
    #[command(flatten)]
    pub workers: WorkerConfig,
    #[command(flatten)]
    pub inference: InferenceConfig,
    #[command(flatten)]
    pub webhooks: WebhookConfig,
    #[command(flatten)]
    pub logging: LoggingConfig,
}

/// The HTTP listener and what it accepts.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address to listen on. Anything but loopback without --api-key logs a warning.
    #[arg(long, env = "TEMPER_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "TEMPER_PORT", default_value_t = 8080)]
    pub port: u16,
    /// API key clients must send as `Authorization: Bearer <key>`; repeat the flag (or
    /// comma-separate the variable) for several. No key means no authentication.
    #[arg(long = "api-key", env = "TEMPER_API_KEY", value_delimiter = ',')]
    pub api_keys: Vec<ApiKey>,
    /// Largest accepted upload, in bytes; larger ones get 413.
    #[arg(long, env = "TEMPER_MAX_UPLOAD_BYTES", default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
    pub max_upload_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".to_string(),
            port: 8080,
            api_keys: Vec::new(),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
        }
    }
}

/// Where state lives on disk.
#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// Directory holding the SQLite database (`temper.db`) and every blob.
    #[arg(long, env = "TEMPER_DATA_DIR", default_value = "./temper-data")]
    pub data_dir: PathBuf,
    /// Directory of base models: Hugging Face directories at `<org>/<name>/` (model
    /// `<org>/<name>`) and GGUF files, `<name>.gguf` (model `<name>`) or `<org>/<name>.gguf`
    /// (model `<org>/<name>`). `serve` logs the models it finds here at start-up. Models in
    /// the hf-hub cache (HF_HOME) are found too.
    #[arg(long, env = "TEMPER_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,
    /// Bytes kept in a reserve file (`space-reserve`) in the data dir. When a write hits a
    /// full disk the reserve is released so deletes and the database can still proceed
    /// (uploads get 507 meanwhile); it is re-created once the disk has room for it twice.
    /// 0 disables it.
    #[arg(long, env = "TEMPER_DISK_RESERVE_BYTES", default_value_t = DEFAULT_DISK_RESERVE_BYTES)]
    pub disk_reserve_bytes: u64,
    /// Seconds a crash leftover (a partial upload in `tmp/`, a file blob without a row) must
    /// stay untouched before it is swept, at start-up and then at this interval.
    #[arg(long, env = "TEMPER_LEFTOVER_GRACE_SECS", default_value_t = DEFAULT_LEFTOVER_GRACE_SECS)]
    pub leftover_grace_secs: u64,
}

impl StorageConfig {
    pub fn leftover_grace(&self) -> Duration {
        Duration::from_secs(self.leftover_grace_secs)
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./temper-data"),
            models_dir: PathBuf::from("./models"),
            disk_reserve_bytes: DEFAULT_DISK_RESERVE_BYTES,
            leftover_grace_secs: DEFAULT_LEFTOVER_GRACE_SECS,
        }
    }
}

/// The training worker pool.
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// Device slots, one worker each: `cpu`, `cuda:0`, `cuda:1`… (comma-separated).
    #[arg(
        long,
        env = "TEMPER_DEVICES",
        value_delimiter = ',',
        default_value = "cpu"
    )]
    pub devices: Vec<String>,
    /// Seconds a claimed job stays leased without a heartbeat before it is requeued.
    #[arg(long, env = "TEMPER_WORKER_LEASE_SECS", default_value_t = 30)]
    pub worker_lease_secs: u64,
    /// Milliseconds an idle worker waits before looking for work again (a new job also
    /// wakes it at once).
    #[arg(long, env = "TEMPER_WORKER_POLL_MS", default_value_t = 2000)]
    pub worker_poll_ms: u64,
    /// Claims of one job (crashes, lost leases) before it is failed instead of requeued.
    #[arg(long, env = "TEMPER_WORKER_MAX_ATTEMPTS", default_value_t = 5)]
    pub worker_max_attempts: u32,
}

impl WorkerConfig {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.worker_lease_secs.max(1))
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.worker_poll_ms.max(10))
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            devices: vec!["cpu".to_string()],
            worker_lease_secs: 30,
            worker_poll_ms: 2000,
            worker_max_attempts: 5,
        }
    }
}

/// The inference engine cache.
#[derive(Debug, Clone, Args)]
pub struct InferenceConfig {
    /// Bytes of model weights kept loaded for inference on each serving device (least
    /// recently used evicted first).
    #[arg(long, env = "TEMPER_INFER_CACHE_BYTES", default_value_t = DEFAULT_INFER_CACHE_BYTES)]
    pub infer_cache_bytes: usize,
    /// Bytes of LoRA adapters kept loaded (least recently used evicted first), beside
    /// `--infer-cache-bytes`. A LoRA fine-tune of a base decoder is served as that base
    /// (loaded once, shared by all its fine-tunes) plus its adapter, unmerged.
    #[arg(long, env = "TEMPER_ADAPTER_CACHE_BYTES", default_value_t = DEFAULT_ADAPTER_CACHE_BYTES)]
    pub adapter_cache_bytes: usize,
    /// Bytes of KV cache each served language model may hold for its running sequences.
    /// A request reserves its worst case (prompt + `max_tokens` tokens for every choice)
    /// when it starts; one that does not fit waits in the model's queue (429 once that is
    /// full), one that can never fit is a 400. Default: 1 GiB per model, but at least one
    /// sequence of the model's whole context and at most `--max-batch-sequences` of them.
    #[arg(long, env = "TEMPER_KV_CACHE_BYTES")]
    pub kv_cache_bytes: Option<usize>,
    /// Most sequences each served language model advances together in one decode step;
    /// more wait for room (within the KV-cache budget too).
    #[arg(long, env = "TEMPER_MAX_BATCH_SEQUENCES", default_value_t = DEFAULT_MAX_BATCH_SEQUENCES, value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub max_batch_sequences: usize,
    /// Most sequences each served language model holds running or waiting; beyond it a
    /// request is refused with 429 and `Retry-After`.
    #[arg(long, env = "TEMPER_MAX_QUEUED_SEQUENCES", default_value_t = DEFAULT_MAX_QUEUED_SEQUENCES, value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_queued_sequences: usize,
    /// Most prompt tokens each served language model reads in one decode step; a longer
    /// prompt, or several new ones, is read over several steps while the sequences already
    /// running keep producing a token every step (chunked prefill).
    #[arg(long, env = "TEMPER_PREFILL_CHUNK_TOKENS", default_value_t = DEFAULT_PREFILL_CHUNK_TOKENS, value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub prefill_chunk_tokens: usize,
    /// Where fine-tuned models are served: `cpu`, `cuda:N`, or several (`cuda:0,cuda:1`),
    /// each with its own `--infer-cache-bytes` budget; a model is loaded onto the device
    /// with the most budget free. Default: the first of `--devices`.
    #[arg(long, env = "TEMPER_SERVE_DEVICES", value_delimiter = ',')]
    pub serve_devices: Vec<String>,
    /// How served language models store their layers' projections: `auto` (bf16 on a GPU,
    /// f32 on the CPU), `bf16` (on the CPU too: every matrix, half f32's bytes), `q8_0` /
    /// `q4_0` / `q4_1` blocks multiplied by quantized matmuls (a
    /// quarter / an eighth / a fifth of f32's bytes, some quality lost; embeddings, norms
    /// and the output layer stay as they are), or `gguf`: a base made from a GGUF file in
    /// the blocks the file stores (nothing requantized), any other model as `auto`.
    #[arg(long, env = "TEMPER_SERVE_DTYPE", value_enum, default_value_t = ServeDtype::Auto)]
    pub serve_dtype: ServeDtype,
}

impl InferenceConfig {
    /// The devices models are served on: `--serve-devices`, else the first training
    /// device, else the CPU. A device named twice is refused.
    pub fn serve_devices<'a>(&'a self, workers: &'a WorkerConfig) -> Result<Vec<&'a str>, String> {
        if self.serve_devices.is_empty() {
            return Ok(vec![workers.devices.first().map_or("cpu", String::as_str)]);
        }
        let mut seen: Vec<&str> = Vec::new();
        for name in &self.serve_devices {
            if seen.contains(&name.as_str()) {
                return Err(format!("`--serve-devices` names `{name}` twice"));
            }
            seen.push(name);
        }
        Ok(seen)
    }
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            infer_cache_bytes: DEFAULT_INFER_CACHE_BYTES,
            adapter_cache_bytes: DEFAULT_ADAPTER_CACHE_BYTES,
            kv_cache_bytes: None,
            max_batch_sequences: DEFAULT_MAX_BATCH_SEQUENCES,
            max_queued_sequences: DEFAULT_MAX_QUEUED_SEQUENCES,
            prefill_chunk_tokens: DEFAULT_PREFILL_CHUNK_TOKENS,
            serve_devices: Vec::new(),
            serve_dtype: ServeDtype::Auto,
        }
    }
}

/// A client API key. `Debug` never prints it, so configs can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl FromStr for ApiKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let key = text.trim();
        if key.is_empty() {
            return Err("an API key cannot be empty".to_string());
        }
        Ok(ApiKey(key.to_string()))
    }
}

impl Config {
    /// The SQLite database inside the data dir.
    pub fn database_path(&self) -> PathBuf {
        self.storage.data_dir.join("temper.db")
    }
}

/// `temper serve ARGS` parsed as the command line would be (the sections' tests).
#[cfg(test)]
pub(crate) fn parse_serve(args: &[&str]) -> Config {
    let mut argv = vec!["temper", "serve"];
    argv.extend_from_slice(args);
    match Cli::try_parse_from(argv).expect("valid arguments").command {
        Command::Serve(config) => config,
        other => panic!("not `serve`: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        parse_serve(args)
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let config = parse(&[]);
        assert_eq!(config.server.host, "127.0.0.1");
        assert_eq!(config.server.port, 8080);
        assert_eq!(config.server.max_upload_bytes, 512 * 1024 * 1024);
        assert_eq!(config.storage.data_dir, PathBuf::from("./temper-data"));
        assert_eq!(config.storage.disk_reserve_bytes, 64 * 1024 * 1024);
        assert_eq!(config.storage.leftover_grace(), Duration::from_secs(900));
        assert_eq!(config.workers.devices, vec!["cpu".to_string()]);
        assert!(config.server.api_keys.is_empty());
        assert_eq!(config.inference.kv_cache_bytes, None);
        assert_eq!(
            config.database_path(),
            PathBuf::from("./temper-data/temper.db")
        );
    }

    #[test]
    fn repeated_and_comma_separated_values_are_collected() {
        let config = parse(&[
            "--api-key",
            "sk-one",
            "--api-key",
            "sk-two,sk-three",
            "--devices",
            "cuda:0,cuda:1",
            "--port",
            "0",
            "--kv-cache-bytes",
            "1048576",
        ]);
        let keys: Vec<&str> = config.server.api_keys.iter().map(ApiKey::expose).collect();
        assert_eq!(keys, ["sk-one", "sk-two", "sk-three"]);
        assert_eq!(config.workers.devices, ["cuda:0", "cuda:1"]);
        // Serving defaults to the first training device; one or several may be named.
        let serve = |i: &InferenceConfig, w| i.serve_devices(w).map(|d| d.join(","));
        assert_eq!(
            serve(&config.inference, &config.workers).as_deref(),
            Ok("cuda:0")
        );
        let mut inference = config.inference.clone();
        inference.serve_devices = vec!["cpu".into()];
        assert_eq!(serve(&inference, &config.workers).as_deref(), Ok("cpu"));
        inference.serve_devices = vec!["cuda:0".into(), "cuda:1".into()];
        assert_eq!(
            serve(&inference, &config.workers).as_deref(),
            Ok("cuda:0,cuda:1")
        );
        inference.serve_devices = vec!["cuda:1".into(), "cuda:1".into()];
        let refused = serve(&inference, &config.workers).expect_err("a device named twice");
        assert!(refused.contains("twice"), "{refused}");
        let named = parse(&["--serve-devices", "cuda:1,cuda:0"]);
        assert_eq!(named.inference.serve_devices, ["cuda:1", "cuda:0"]);
        assert_eq!(
            serve(&named.inference, &named.workers).as_deref(),
            Ok("cuda:1,cuda:0")
        );
        assert_eq!(config.server.port, 0);
        assert_eq!(config.inference.kv_cache_bytes, Some(1 << 20));
    }

    #[test]
    fn debug_output_redacts_api_keys() {
        let config = parse(&["--api-key", "sk-secret-value"]);
        let text = format!("{config:?}");
        assert!(!text.contains("sk-secret-value"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn serve_help_documents_rust_log_and_gguf_models() {
        use clap::CommandFactory;
        let mut command = Cli::command();
        let serve = command
            .find_subcommand_mut("serve")
            .expect("serve subcommand");
        let help = serve.render_long_help().to_string();
        for needle in [
            "RUST_LOG",
            "NO_COLOR",
            "<name>.gguf",
            "<org>/<name>.gguf",
            "stderr",
            "--log-format",
            "request_id",
        ] {
            assert!(help.contains(needle), "`{needle}` missing from:\n{help}");
        }
    }

    #[test]
    fn serve_dtype_takes_auto_the_block_formats_and_gguf_only() {
        assert_eq!(parse(&[]).inference.serve_dtype, ServeDtype::Auto);
        assert_eq!(
            parse(&["--serve-dtype", "q8_0"]).inference.serve_dtype,
            ServeDtype::Q8_0
        );
        assert_eq!(
            parse(&["--serve-dtype", "q4_0"]).inference.serve_dtype,
            ServeDtype::Q4_0
        );
        let refused = Cli::try_parse_from(["temper", "serve", "--serve-dtype", "int3"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("possible values: auto, bf16, q8_0, q4_0, q4_1, gguf"),
            "{refused}"
        );
        assert_eq!(
            parse(&["--serve-dtype", "gguf"]).inference.serve_dtype,
            ServeDtype::Gguf
        );
        assert_eq!(
            parse(&["--serve-dtype", "bf16"]).inference.serve_dtype,
            ServeDtype::Bf16
        );
    }

    #[test]
    fn the_generation_limits_are_settings_of_at_least_one() {
        let defaults = parse(&[]).inference;
        assert_eq!(defaults.max_batch_sequences, 32);
        assert_eq!(defaults.max_queued_sequences, 256);
        assert_eq!(defaults.prefill_chunk_tokens, 512);
        let set = parse(&[
            "--max-batch-sequences",
            "4",
            "--max-queued-sequences",
            "9",
            "--prefill-chunk-tokens",
            "64",
        ])
        .inference;
        assert_eq!(
            (
                set.max_batch_sequences,
                set.max_queued_sequences,
                set.prefill_chunk_tokens
            ),
            (4, 9, 64)
        );
        for flag in [
            "--max-batch-sequences",
            "--max-queued-sequences",
            "--prefill-chunk-tokens",
        ] {
            assert!(
                Cli::try_parse_from(["temper", "serve", flag, "0"]).is_err(),
                "{flag}"
            );
        }
    }

    #[test]
    fn empty_api_key_is_rejected() {
        let result = Cli::try_parse_from(["temper", "serve", "--api-key", " "]);
        assert!(result.is_err());
    }
}
