//! The client subcommands, `temper files|jobs|models|chat`: a client of a running server
//! over HTTP, configured like the OpenAI SDK (`OPENAI_BASE_URL`, `OPENAI_API_KEY`).
//!
//! # Layout
//! - `client.rs`: `ApiClient` (base URL, key, the requests); every non-2xx reply becomes
//!   the server's error message, a refused connection names the base URL.
//! - `error.rs`: `CliError`, one line each, and the exit codes.
//! - `output.rs`: tables, key/value lists, times, JSON.
//! - `files.rs`, `jobs.rs` (+ `estimate.rs`), `models.rs`: one function per subcommand.
//! - `watch/`: `jobs watch` (polling, bar or plain lines); `watch/state.rs` holds what it
//!   knows between polls, without IO.
//! - `chat.rs`: the interactive chat over the SSE stream.
//!
//! The CLI reads replies into the server's own wire types (`api::objects`) and knows no
//! other part of the server (checked by `architecture_tests.rs`).

mod chat;
mod client;
mod error;
mod estimate;
mod files;
mod jobs;
mod models;
mod output;
mod watch;

use std::io::Write;
use std::process::ExitCode;

pub use error::{
    CliError, EXIT_JOB_CANCELLED, EXIT_JOB_FAILED, EXIT_JOB_PAUSED, EXIT_REQUEST_FAILED, EXIT_USAGE,
};

use crate::config::ClientCommand;
use client::ApiClient;

/// Runs one client subcommand to its exit code; errors print as one `error: …` line on
/// stderr.
pub fn main(command: ClientCommand) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
        .and_then(|runtime| runtime.block_on(run(command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`temper jobs list | head -1`): nothing left to say.
        Err(CliError::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "error: {error}");
            error.exit_code()
        }
    }
}

async fn run(command: ClientCommand) -> Result<(), CliError> {
    match command {
        ClientCommand::Files(args) => {
            files::run(&ApiClient::new(&args.connection)?, args.command).await
        }
        ClientCommand::Jobs(args) => {
            jobs::run(&ApiClient::new(&args.connection)?, args.command).await
        }
        ClientCommand::Models(args) => {
            models::run(&ApiClient::new(&args.connection)?, args.command).await
        }
        ClientCommand::Chat(args) => {
            let client = ApiClient::new(&args.connection)?;
            chat::run(&client, args).await
        }
    }
}
