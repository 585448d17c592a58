//! `temper serve`: parse the configuration, bind, run until SIGINT/SIGTERM. The client
//! subcommands (`files`, `jobs`, `models`, `chat`) are `temper::cli`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use temper::config::{Cli, Command};

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    match command {
        Command::Serve(config) => match run_server(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                // What `main() -> anyhow::Result<()>` printed: the chain of causes.
                eprintln!("Error: {error:?}");
                ExitCode::FAILURE
            }
        },
        Command::Client(command) => temper::cli::main(command),
    }
}

fn run_server(config: temper::config::Config) -> anyhow::Result<()> {
    // Sets process-wide allocator and thread-pool knobs: must run before any other thread
    // (the tokio runtime's included) exists.
    temper::runtime::tune_for_cpu_training();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(config))
}

async fn serve(config: temper::config::Config) -> anyhow::Result<()> {
    let log_stats = temper::telemetry::init_tracing(config.logging.log_format);
    let address = format!("{}:{}", config.server.host, config.server.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("binding {address}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    temper::telemetry::log_startup(&config, local);
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let served = temper::app::run(config, listener, shutdown).await;
    if log_stats.dropped() > 0 {
        tracing::warn!(
            dropped = log_stats.dropped(),
            "log lines were dropped because the log output failed"
        );
    }
    served
}

/// Cancels `shutdown` on SIGINT or SIGTERM; running jobs then checkpoint and requeue.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
    shutdown.cancel();
}
