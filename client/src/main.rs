//! `sluice`: the Sluice command line tool. See `sluice --help`.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use cli::args::Cli;
use cli::CliError;
use tracing_subscriber::EnvFilter;

// mimalloc: glibc's malloc/free (with chunk consolidation) was ~10 % of the machine in
// pipelined produce profiles; per-thread free lists keep the hot path off shared arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        // A reader that went away (`sluice ... | head`) is not an error worth reporting.
        Err(CliError::Failed(e)) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(CliError::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                .is_some_and(|k| k == std::io::ErrorKind::BrokenPipe)
    })
}
