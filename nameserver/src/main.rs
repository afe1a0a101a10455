//! `sluice-nameserver`: see [`sluice_nameserver::Cli`] for the options.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;
use sluice_nameserver::Cli;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Logs usually go to a file (cluster.sh): colour codes only for a terminal.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let config = match cli.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-nameserver: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice-nameserver: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sluice_nameserver::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "nameserver failed");
            eprintln!("sluice-nameserver: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = ctrl_c() => {}
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot install the SIGTERM handler"),
        }
    }
    ctrl_c().await;
}

async fn ctrl_c() {
    match tokio::signal::ctrl_c().await {
        Ok(()) => tracing::info!("Ctrl-C received"),
        Err(e) => {
            // Without this handler the process can still be stopped by SIGTERM or SIGKILL.
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
