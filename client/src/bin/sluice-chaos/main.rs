//! `sluice-chaos`: attacks a Sluice cluster under load and checks every message.
//!
//! `sluice-chaos run [options] -- CONTROL...` drives a cluster through its control script
//! (`scripts/cluster.sh --dir DIR` or `scripts/deploy.sh --inventory FILE`): producers send
//! uniquely numbered messages and record every ack, a consumer group records every delivery,
//! and meanwhile each cycle kills, pauses or partitions the master of a replica group, measures
//! the failover, undoes the fault and waits for the group to be whole again. At the end it
//! drains the consumers and reports acked, consumed, lost, duplicated and out-of-order
//! messages; it exits with 1 when anything acknowledged was lost, moved or reordered.
//!
//! With `--orderly` each producer sends under its own key and the group's members are orderly
//! push consumers; the run then also fails when a message was processed before an older
//! acknowledged message of its key (in its queue), or when two consumers processed one queue
//! at the same time.
//!
//! Helpers for the scripts: `sluice-chaos fault --addr A isolate 2 3` / `heal` (the
//! `InjectFault` RPC) and `sluice-chaos free-ports N`.

mod auth;
mod campaign;
mod churn;
mod control;
mod features;
mod ledger;
mod load;
mod orderly;
mod probe;
mod report;
mod txmix;
mod verify;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use sluice_proto::v1::fault_request::Fault;
use sluice_proto::v1::{Heal, Isolate};
use tracing_subscriber::EnvFilter;

use campaign::FaultKind;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-chaos",
    version,
    about = "Attack a Sluice cluster under load and check every message"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    auth: auth::AuthArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the chaos loop against the cluster the control command (after `--`) manages.
    Run(RunArgs),
    /// Fault injection on one broker (needs `enable_fault_injection = true`).
    Fault {
        /// Broker address, HOST:PORT.
        #[arg(long)]
        addr: String,
        #[command(subcommand)]
        what: FaultCommand,
    },
    /// Print N distinct free TCP ports on HOST, one a line (free when asked: bind soon).
    FreePorts {
        count: usize,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
    },
}

#[derive(Subcommand, Debug)]
enum FaultCommand {
    /// Drop Raft traffic to and from these replica ids.
    Isolate {
        #[arg(required = true)]
        peers: Vec<u64>,
    },
    /// Undo every isolation.
    Heal,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Fault cycles to run.
    #[arg(long, default_value_t = 10)]
    cycles: u32,
    /// Faults to use, in turn.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kill,pause,partition"
    )]
    faults: Vec<FaultKind>,
    /// Nameservers (default: asked from the control command).
    #[arg(long)]
    nameservers: Option<String>,
    /// Concurrent producers (each sends one message at a time).
    #[arg(long, default_value_t = 8)]
    producers: u32,
    /// Members of the consumer group.
    #[arg(long, default_value_t = 2)]
    consumers: u32,
    /// Queues of the test topic per broker group.
    #[arg(long, default_value_t = 4)]
    queues: u32,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 128)]
    body_size: usize,
    /// Topic to create and use (default: chaos-RUNID).
    #[arg(long)]
    topic: Option<String>,
    /// Timeout of one send attempt, in ms.
    #[arg(long, default_value_t = 1000)]
    send_timeout_ms: u64,
    /// Acks per group before the first fault.
    #[arg(long, default_value_t = 200)]
    warmup_acks: u64,
    /// Acks on the new master before the fault is undone.
    #[arg(long, default_value_t = 200)]
    hold_acks: u64,
    /// Longest wait for a new master and its first ack, in seconds.
    #[arg(long, default_value_t = 30)]
    failover_timeout: u64,
    /// Longest wait for a group to be healthy again, in seconds.
    #[arg(long, default_value_t = 120)]
    heal_timeout: u64,
    /// Longest the final drain may go without progress, in seconds.
    #[arg(long, default_value_t = 60)]
    drain_timeout: u64,
    /// Share of messages sent delayed (random due times up to --max-delay-secs).
    #[arg(long, default_value_t = 0.0)]
    delayed_share: f64,
    /// Share of messages the consumer fails N times (N random in 1..=max-retries+2).
    #[arg(long, default_value_t = 0.0)]
    fail_share: f64,
    #[arg(long, default_value_t = 60)]
    max_delay_secs: u64,
    /// The consumer group's retry budget for failing messages.
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
    /// Share of messages sent in transactions: half committed by the producer, a fifth rolled
    /// back, the rest abandoned for the checker (which commits or rolls back by the message).
    #[arg(long, default_value_t = 0.0)]
    tx_share: f64,
    /// Ordered consumption: producer i sends with the key `k{i}`, the consumers are orderly
    /// push consumers (one queue, one consumer at a time, in queue order), and the report
    /// checks per-key order and that no two consumers processed a queue at once. Not with
    /// --delayed-share, --fail-share or --tx-share (their messages are ordered differently).
    #[arg(long)]
    orderly: bool,
    /// Producers without idempotence: a retried send may then store a message twice, which
    /// is reported but not a violation (with idempotence, the default, it is one).
    #[arg(long)]
    no_idempotence: bool,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The control command and its arguments, e.g. `scripts/cluster.sh --dir .cluster`.
    #[arg(last = true, required = true)]
    control: Vec<String>,
}

impl RunArgs {
    fn options(self) -> Result<(campaign::Options, bool, Option<PathBuf>)> {
        if self.faults.is_empty() {
            bail!("--faults needs at least one of kill, pause, partition");
        }
        if self.producers == 0 || self.consumers == 0 || self.consumers > 64 {
            bail!("--producers must be >= 1 and --consumers within 1..=64");
        }
        if self.queues == 0 || self.queues > 1024 {
            bail!("--queues must be within 1..=1024");
        }
        let shares = self.delayed_share + self.fail_share + self.tx_share;
        if !(0.0..=1.0).contains(&self.delayed_share)
            || !(0.0..=1.0).contains(&self.fail_share)
            || !(0.0..=1.0).contains(&self.tx_share)
            || shares > 1.0
        {
            bail!(
                "--delayed-share, --fail-share and --tx-share are shares within 0..=1 that add up to at most 1"
            );
        }
        if self.orderly && shares > 0.0 {
            bail!(
                "--orderly cannot be combined with --delayed-share, --fail-share or --tx-share: \
                 delayed, failing and transactional messages are not delivered in send order"
            );
        }
        if !(1..=100).contains(&self.max_retries) {
            bail!("--max-retries must be within 1..=100");
        }
        if self.send_timeout_ms == 0 {
            bail!("--send-timeout-ms must be > 0");
        }
        let secs = Duration::from_secs;
        Ok((
            campaign::Options {
                control: self.control,
                nameservers: self.nameservers,
                cycles: self.cycles,
                faults: self.faults,
                producers: self.producers,
                consumers: self.consumers,
                queues: self.queues,
                body_size: self.body_size,
                topic: self.topic,
                send_timeout: Duration::from_millis(self.send_timeout_ms),
                idempotence: !self.no_idempotence,
                warmup_acks: self.warmup_acks,
                hold_acks: self.hold_acks,
                failover_timeout: secs(self.failover_timeout),
                heal_timeout: secs(self.heal_timeout),
                drain_timeout: secs(self.drain_timeout),
                mix: features::Mix {
                    delayed_share: self.delayed_share,
                    fail_share: self.fail_share,
                    tx_share: self.tx_share,
                    max_delay: secs(self.max_delay_secs),
                    max_retries: self.max_retries,
                },
                orderly: self.orderly,
            },
            self.json,
            self.report,
        ))
    }
}

fn free_ports(count: usize, host: &str) -> Result<Vec<u16>> {
    if count == 0 || count > 1000 {
        bail!("count must be within 1..=1000");
    }
    // All bound at once, so they differ; released on return.
    let listeners = (0..count)
        .map(|_| TcpListener::bind((host, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot bind on {host}"))?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

async fn execute(cli: Cli) -> Result<bool> {
    auth::init(&cli.auth)?;
    match cli.command {
        Command::FreePorts { count, host } => {
            for p in free_ports(count, &host)? {
                println!("{p}");
            }
            Ok(true)
        }
        Command::Fault { addr, what } => {
            let fault = match what {
                FaultCommand::Isolate { peers } => Fault::Isolate(Isolate { peer_ids: peers }),
                FaultCommand::Heal => Fault::Heal(Heal {}),
            };
            let isolated = probe::inject_fault(&addr, fault).await?;
            println!(
                "{addr}: isolated peers [{}]",
                isolated
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
            Ok(true)
        }
        Command::Run(args) => {
            let (opts, json, path) = args.options()?;
            let report = campaign::run(opts).await?;
            let doc = serde_json::to_string_pretty(&report)?;
            if let Some(p) = path {
                std::fs::write(&p, format!("{doc}\n"))
                    .with_context(|| format!("cannot write {}", p.display()))?;
            }
            if json {
                println!("{doc}");
            } else {
                print!("{}", report.text());
            }
            Ok(report.ok)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("warn,sluice_client=error")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice-chaos: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        // The report says what failed.
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sluice-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let p = free_ports(5, "127.0.0.1").unwrap();
        let set: std::collections::HashSet<_> = p.iter().collect();
        assert_eq!(set.len(), 5);
        assert!(free_ports(0, "127.0.0.1").is_err());
    }

    #[test]
    fn run_args_parse_and_validate() {
        let cli = Cli::try_parse_from([
            "sluice-chaos",
            "run",
            "--cycles",
            "3",
            "--faults",
            "kill,partition",
            "--",
            "scripts/cluster.sh",
            "--dir",
            "x",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let (opts, json, _) = args.options().unwrap();
        assert_eq!(opts.faults, vec![FaultKind::Kill, FaultKind::Partition]);
        assert_eq!(opts.control, vec!["scripts/cluster.sh", "--dir", "x"]);
        assert!(!json);
        assert!(
            Cli::try_parse_from(["sluice-chaos", "run", "--faults", "boom", "--", "x"]).is_err()
        );
        assert!(Cli::try_parse_from(["sluice-chaos", "run"]).is_err());
    }

    #[test]
    fn orderly_refuses_the_feature_mixes() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["sluice-chaos", "run", "--orderly"];
            argv.extend_from_slice(extra);
            argv.extend(["--", "x"]);
            let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not run")
            };
            args.options()
        };
        assert!(parse(&[]).unwrap().0.orderly);
        for share in ["--delayed-share", "--fail-share", "--tx-share"] {
            let e = parse(&[share, "0.1"]).unwrap_err().to_string();
            assert!(e.contains("--orderly cannot be combined"), "{e}");
        }
    }
}
