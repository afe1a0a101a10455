//! `sluice`: the Sluice command line tool. See `sluice --help`.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use cli::args::Cli;
use cli::CliError;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Usage errors exit with code 2 (clap's convention), help and version with 0.
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit(),
        Err(CliError::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
