//! The client subcommands' arguments: `temper files|jobs|models|chat` talk to a running
//! server over HTTP (the code is in `crate::cli`). The connection options read the OpenAI
//! SDK's variables, so a shell set up for the SDK works unchanged.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use super::ApiKey;

/// `OPENAI_BASE_URL` when unset: `temper serve`'s default address.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:8080/v1";

/// Shown under every client subcommand's `--help`.
pub const CLIENT_AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  the request failed: the server's error message, or no server at the base URL
  2  bad arguments (including a hyperparameter given twice)
  3  `jobs watch`: the job failed
  4  `jobs watch`: the job was cancelled
  5  `jobs watch`: the job was paused (resume it, then watch again)";

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Upload, list and delete files on a running server.
    #[command(after_help = CLIENT_AFTER_HELP)]
    Files(FilesArgs),
    /// Create, inspect, watch, cancel, pause and resume fine-tuning jobs.
    #[command(after_help = CLIENT_AFTER_HELP)]
    Jobs(JobsArgs),
    /// List the models a running server serves.
    #[command(after_help = CLIENT_AFTER_HELP)]
    Models(ModelsArgs),
    /// Chat with a model: each line read from stdin is a user turn, the reply streams to
    /// stdout, the conversation is kept until EOF (Ctrl-D).
    #[command(after_help = CLIENT_AFTER_HELP)]
    Chat(ChatArgs),
}

/// Where the server is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The API's base URL, `/v1` included.
    #[arg(long, env = "OPENAI_BASE_URL", default_value = DEFAULT_BASE_URL, global = true)]
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` (the server's `--api-key`); none when unset
    /// or empty.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true, global = true, value_parser = any_key)]
    pub api_key: Option<ApiKey>,
}

/// How a command prints what the server returned.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct Output {
    /// Print the server's JSON objects instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FilesArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: FilesCommand,
}

#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Upload a JSONL or CSV file; the server checks it and reports its status.
    Upload {
        path: PathBuf,
        /// OpenAI's purpose: `fine-tune` for training and validation data.
        #[arg(long, default_value = "fine-tune")]
        purpose: String,
        #[command(flatten)]
        output: Output,
    },
    /// List the uploaded files.
    List {
        #[command(flatten)]
        output: Output,
    },
    /// Delete a file.
    Delete {
        id: String,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: JobsCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Create a fine-tuning job.
    Create(CreateJobArgs),
    /// What a job with these flags would train on and take (examples, tokens, steps,
    /// memory and duration per device), without creating it.
    Estimate(CreateJobArgs),
    /// List jobs, newest first.
    List {
        /// Jobs to show (the server's default is 20, its maximum 100).
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        output: Output,
    },
    /// Show one job.
    Get {
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Show a job's newest events, oldest of them first.
    Events {
        id: String,
        /// Events to show (the server's default is 20, its maximum 1000).
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        output: Output,
    },
    /// Follow a job until it ends: a progress bar on a terminal (plain lines otherwise),
    /// then the fine-tuned model's id as the last line.
    Watch { id: String },
    /// Cancel a job.
    Cancel {
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Pause a running job at its next step (it keeps its checkpoint).
    Pause {
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Resume a paused job.
    Resume {
        id: String,
        #[command(flatten)]
        output: Output,
    },
}

/// OpenAI's fine-tuning methods that temper runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TuningMethod {
    Supervised,
    Dpo,
}

impl TuningMethod {
    /// The name in `method.type`.
    pub fn wire_name(self) -> &'static str {
        match self {
            TuningMethod::Supervised => "supervised",
            TuningMethod::Dpo => "dpo",
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateJobArgs {
    /// Base model id (`temper models list`, or a model of the server's models dir).
    #[arg(long)]
    pub model: String,
    /// Id of an uploaded file with purpose `fine-tune`.
    #[arg(long)]
    pub training_file: String,
    #[arg(long)]
    pub validation_file: Option<String>,
    /// Part of the fine-tuned model's name: `ft:<base>:temper:<suffix>:<id>`.
    #[arg(long)]
    pub suffix: Option<String>,
    /// Passes over the training data (`n_epochs`); the server picks when unset.
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Any key of the method's hyperparameters (`batch_size=8`, `lora_rank=16`,
    /// `lr_scheduler=cosine`, `target_modules=["q_proj","v_proj"]`…); repeat the flag for
    /// several. The value is read as JSON when it parses as JSON, as a string otherwise.
    #[arg(long = "hyperparameter", value_name = "KEY=VALUE", value_parser = parse_hyperparameter)]
    pub hyperparameters: Vec<(String, Value)>,
    #[arg(long, value_enum, default_value_t = TuningMethod::Supervised)]
    pub method: TuningMethod,
    #[command(flatten)]
    pub output: Output,
}

/// Any text, an empty one included: an exported but empty `OPENAI_API_KEY` means no key
/// (the client drops it), not a refusal to run.
fn any_key(text: &str) -> Result<ApiKey, String> {
    Ok(ApiKey::new(text.trim()))
}

/// `key=value` → (`key`, JSON value, or the text as a string).
fn parse_hyperparameter(text: &str) -> Result<(String, Value), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("expected KEY=VALUE, got `{text}`"));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("the key is empty in `{text}`"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List base models, fine-tuned models and their checkpoints.
    List {
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// A chat model: a fine-tuned `ft:…` id or a base model.
    pub model: String,
    /// A system message opening the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens of each reply.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2 (0: always the likeliest token); the server's default
    /// when unset.
    #[arg(long)]
    pub temperature: Option<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::{CommandFactory, Parser};
    use serde_json::json;

    fn jobs(args: &[&str]) -> JobsArgs {
        let argv = [&["temper", "jobs"], args].concat();
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Client(ClientCommand::Jobs(jobs)) => jobs,
            other => panic!("not `jobs`: {other:?}"),
        }
    }

    #[test]
    fn connection_options_go_before_or_after_the_action() {
        let before = jobs(&[
            "--base-url",
            "http://a:1/v1",
            "--api-key",
            "sk-a",
            "get",
            "ftjob-1",
        ]);
        let after = jobs(&[
            "get",
            "ftjob-1",
            "--base-url",
            "http://a:1/v1",
            "--api-key",
            "sk-a",
        ]);
        for parsed in [before, after] {
            assert_eq!(parsed.connection.base_url, "http://a:1/v1");
            assert_eq!(
                parsed.connection.api_key.as_ref().map(ApiKey::expose),
                Some("sk-a")
            );
            assert!(
                matches!(parsed.command, JobsCommand::Get { ref id, output } if id == "ftjob-1" && !output.json)
            );
        }
        let text = format!("{:?}", jobs(&["--api-key", "sk-secret", "list"]));
        assert!(!text.contains("sk-secret"), "{text}");
    }

    #[test]
    fn the_connection_reads_the_sdks_variables_and_defaults_to_serves_address() {
        let command = Cli::command();
        let files = command.find_subcommand("files").expect("files");
        let argument = |id: &str| {
            files
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("no {id}"))
        };
        let base_url = argument("base_url");
        assert_eq!(
            base_url.get_env().and_then(|e| e.to_str()),
            Some("OPENAI_BASE_URL")
        );
        assert_eq!(base_url.get_default_values(), [DEFAULT_BASE_URL]);
        assert_eq!(DEFAULT_BASE_URL, "http://127.0.0.1:8080/v1");
        let api_key = argument("api_key");
        assert_eq!(
            api_key.get_env().and_then(|e| e.to_str()),
            Some("OPENAI_API_KEY")
        );
        assert_eq!(
            any_key(" ").map(|k| k.expose().to_string()),
            Ok(String::new())
        );
    }

    #[test]
    fn create_reads_every_flag_and_help_lists_the_exit_codes() {
        let parsed = jobs(&[
            "create",
            "--model",
            "org/m",
            "--training-file",
            "file-t",
            "--validation-file",
            "file-v",
            "--suffix",
            "s",
            "--epochs",
            "2",
            "--hyperparameter",
            "lora_rank=8",
            "--hyperparameter",
            "lr_scheduler=cosine",
            "--method",
            "dpo",
            "--json",
        ]);
        let JobsCommand::Create(create) = parsed.command else {
            panic!("not create");
        };
        assert_eq!(
            (create.model.as_str(), create.training_file.as_str()),
            ("org/m", "file-t")
        );
        assert_eq!(create.validation_file.as_deref(), Some("file-v"));
        assert_eq!(create.suffix.as_deref(), Some("s"));
        assert_eq!(create.epochs, Some(2));
        assert_eq!(
            create.hyperparameters,
            [
                ("lora_rank".to_string(), json!(8)),
                ("lr_scheduler".to_string(), json!("cosine"))
            ]
        );
        assert_eq!(create.method, TuningMethod::Dpo);
        assert!(create.output.json);
        let mut command = Cli::command();
        let help = command
            .find_subcommand_mut("jobs")
            .expect("jobs")
            .render_long_help()
            .to_string();
        assert!(help.contains("3  `jobs watch`: the job failed"), "{help}");
    }

    #[test]
    fn hyperparameters_read_json_values_and_fall_back_to_strings() {
        let parsed = |text| parse_hyperparameter(text).expect("valid");
        assert_eq!(parsed("batch_size=8"), ("batch_size".into(), json!(8)));
        assert_eq!(
            parsed("learning_rate=2e-4"),
            ("learning_rate".into(), json!(2e-4))
        );
        assert_eq!(
            parsed("full_finetune=true"),
            ("full_finetune".into(), json!(true))
        );
        assert_eq!(
            parsed(r#"target_modules=["q_proj","v_proj"]"#),
            ("target_modules".into(), json!(["q_proj", "v_proj"]))
        );
        assert_eq!(
            parsed("lr_scheduler=cosine"),
            ("lr_scheduler".into(), json!("cosine"))
        );
        assert_eq!(parsed("n_epochs=auto"), ("n_epochs".into(), json!("auto")));
        // Only the first `=` splits.
        assert_eq!(parsed("note=a=b"), ("note".into(), json!("a=b")));
        assert!(parse_hyperparameter("batch_size").is_err());
        assert!(parse_hyperparameter("=8").is_err());
    }
}
