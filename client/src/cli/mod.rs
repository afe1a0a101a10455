//! The `sluice` command line tool.

mod admin_cmds;
pub mod args;
mod bench;
mod consume;
mod dashboard;
mod group_cmds;
mod output;
mod produce;
mod trace_cmd;
mod tx;

use std::time::Duration;

use sluice_client::{Admin, ClientConfig};

use args::{Cli, Command};

/// How a command failed: bad usage (exit code 2) or a failed operation (exit code 1).
pub enum CliError {
    Usage(String),
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> std::convert::From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::Failed(e.into())
    }
}

fn client_config(cli: &Cli) -> Result<ClientConfig, CliError> {
    let list = cli.nameservers.as_deref().unwrap_or("").trim();
    if list.is_empty() {
        return Err(CliError::Usage(
            "no nameservers: pass --nameservers HOST:PORT[,...] or set SLUICE_NAMESERVERS".into(),
        ));
    }
    if cli.timeout_ms == 0 {
        return Err(CliError::Usage("--timeout-ms must be above zero".into()));
    }
    let config = ClientConfig::from_list(list)
        .map_err(|e| CliError::Usage(format!("--nameservers: {e}")))?;
    Ok(config
        .request_timeout(Duration::from_millis(cli.timeout_ms))
        .use_data_port(!cli.grpc_only))
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let config = client_config(&cli)?;
    match cli.command {
        Command::Produce(a) => produce::produce(config, a).await?,
        Command::Consume(a) => consume::consume(config, a).await?,
        Command::Topic(c) => admin_cmds::topic(&Admin::new(config)?, c).await?,
        Command::Cluster(c) => admin_cmds::cluster(&Admin::new(config)?, c).await?,
        Command::Group(c) => group_cmds::group(&Admin::new(config)?, c).await?,
        Command::Dlq(c) => admin_cmds::dlq(&Admin::new(config)?, c).await?,
        Command::Tx(c) => tx::run(config, c).await?,
        Command::Dashboard(a) => dashboard::run(config, a).await?,
        Command::Message(args::MessageCommand::Cancel { handle, out }) => {
            produce::cancel(config, &handle, out.json).await?
        }
        Command::Message(c) => admin_cmds::message(&Admin::new(config)?, c).await?,
        Command::Bench(bench::args::BenchCommand::Timers(a)) => {
            bench::timers::run(config, a).await?
        }
        Command::Bench(bench::args::BenchCommand::Modes(a)) => bench::modes::run(config, a).await?,
        Command::Bench(c) => {
            let plan = bench::args::Plan::new(c).map_err(CliError::Usage)?;
            bench::bench(config, plan).await?
        }
    }
    Ok(())
}
