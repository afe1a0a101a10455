//! The `sluice` command line tool.

mod acl;
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
    let config = config
        .request_timeout(Duration::from_millis(cli.timeout_ms))
        .use_data_port(!cli.grpc_only);
    let config = match &cli.tls_ca_file {
        Some(ca) => {
            let client = cli
                .tls_cert_file
                .as_deref()
                .zip(cli.tls_key_file.as_deref());
            config
                .tls(ca, client)
                .map_err(|e| CliError::Usage(format!("--tls-ca-file: {e}")))?
        }
        None => config,
    };
    match credentials(cli)? {
        Some(c) => Ok(config.credentials(c)),
        None => Ok(config),
    }
}

/// `sluice certs`: a CA and one certificate signed by it, for every node of a local cluster.
fn certs(a: &args::CertsArgs) -> Result<(), CliError> {
    use sluice_proto::tls::gen::{write_pem, Ca};
    std::fs::create_dir_all(&a.dir)?;
    let ca = Ca::new("sluice local CA")?;
    let node = ca.issue(&a.hosts, None)?;
    write_pem(&a.dir.join("ca.crt"), &ca.cert_pem(), false)?;
    write_pem(&a.dir.join("node.crt"), &node.cert_pem, false)?;
    write_pem(&a.dir.join("node.key"), &node.key_pem, true)?;
    println!("wrote ca.crt, node.crt, node.key to {}", a.dir.display());
    Ok(())
}

/// `--access-key` with its secret from `SLUICE_SECRET_KEY` or `--secret-key-file`.
fn credentials(cli: &Cli) -> Result<Option<sluice_client::Credentials>, CliError> {
    let Some(key) = cli.access_key.as_deref().filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    sluice_proto::names::validate_access_key(key)
        .map_err(|e| CliError::Usage(format!("--access-key: {}", e.message)))?;
    let secret =
        match (&cli.secret_key_file, std::env::var("SLUICE_SECRET_KEY")) {
            (Some(f), _) => sluice_proto::auth::read_secret_file(f).map_err(CliError::Usage)?,
            (None, Ok(s)) if !s.is_empty() => s.into_bytes(),
            _ => return Err(CliError::Usage(
                "--access-key needs its secret: set SLUICE_SECRET_KEY or pass --secret-key-file"
                    .into(),
            )),
        };
    Ok(Some(sluice_client::Credentials {
        access_key: key.to_string(),
        secret,
    }))
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Certs(a) = &cli.command {
        return certs(a);
    }
    let config = client_config(&cli)?;
    match cli.command {
        Command::Produce(a) => produce::produce(config, a).await?,
        Command::Consume(a) => consume::consume(config, a).await?,
        Command::Topic(c) => admin_cmds::topic(&Admin::new(config)?, c).await?,
        Command::Cluster(c) => admin_cmds::cluster(&Admin::new(config)?, c).await?,
        Command::Group(c) => group_cmds::group(&Admin::new(config)?, c).await?,
        Command::Dlq(c) => admin_cmds::dlq(&Admin::new(config)?, c).await?,
        Command::Tx(c) => tx::run(config, c).await?,
        Command::Certs(_) => {}
        Command::Acl(c) => acl::run(&Admin::new(config)?, c).await?,
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
