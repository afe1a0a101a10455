//! `sluice-broker`: runs one broker.

use std::path::PathBuf;

use clap::Parser;
use sluice_broker::config::{parse_peers, BrokerConfig};
use sluice_broker::replication::AckPolicy;
use sluice_broker::store::FlushMode;

// mimalloc: glibc's malloc/free with chunk consolidation was 9 % of a broker's CPU on plain
// sends and 15 % on transactions (allocations on the Raft thread freed on the write-behind's).
// Built with `no_thp`, it does not ask for transparent huge pages, whose fresh 2 MiB faults cost
// more than it saved; on a host whose THP mode is `always` (not `madvise`), the kernel gives them
// anyway: set `MIMALLOC_ALLOW_THP=0` there (docs/operations.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "sluice-broker", version, about = "Sluice message broker")]
struct Args {
    /// TOML configuration file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long)]
    listen: Option<String>,
    /// Address announced to nameservers and clients (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Comma-separated nameserver addresses.
    #[arg(long, value_delimiter = ',')]
    nameservers: Option<Vec<String>>,
    #[arg(long)]
    broker_name: Option<String>,
    #[arg(long = "cluster")]
    cluster_name: Option<String>,
    #[arg(long)]
    replica_id: Option<u64>,
    #[arg(long, value_enum)]
    flush: Option<FlushArg>,
    /// Replica group members, `ID=HOST:PORT,...` (this broker included); none: standalone.
    #[arg(long)]
    peers: Option<String>,
    /// Voting members (default: every peer that is not a learner).
    #[arg(long, value_delimiter = ',')]
    voters: Option<Vec<u64>>,
    /// Non-voting members.
    #[arg(long, value_delimiter = ',')]
    learners: Option<Vec<u64>>,
    /// When a replicated send is acknowledged: after a majority stored it (`quorum`, default)
    /// or after the local append (`leader`: a failover can lose acknowledged messages).
    #[arg(long, value_enum)]
    ack: Option<AckArg>,
    /// Raft tick length (100 ms default).
    #[arg(long)]
    raft_tick_ms: Option<u64>,
    /// A follower campaigns after a random [election-ticks, max-election-ticks) silent ticks
    /// (8..16 default, ~1 s failover); a leader steps down after election-ticks without a
    /// quorum.
    #[arg(long)]
    election_ticks: Option<usize>,
    #[arg(long)]
    max_election_ticks: Option<usize>,
    /// Enables the fault-injection RPC (tests only).
    #[arg(long)]
    enable_fault_injection: bool,
    /// Write the bound address to this file once serving.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum AckArg {
    Quorum,
    Leader,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FlushArg {
    Async,
    Sync,
}

fn load(args: &Args) -> Result<BrokerConfig, Box<dyn std::error::Error>> {
    let mut c = match &args.config {
        Some(p) => BrokerConfig::from_file(p)?,
        None => BrokerConfig::default(),
    };
    if let Some(v) = &args.listen {
        c.listen = v.clone();
    }
    if let Some(v) = &args.advertise {
        c.advertise = Some(v.clone());
    }
    if let Some(v) = &args.data_dir {
        c.data_dir = v.clone();
    }
    if let Some(v) = &args.nameservers {
        c.nameservers = v.iter().filter(|s| !s.is_empty()).cloned().collect();
    }
    if let Some(v) = &args.broker_name {
        c.broker_name = v.clone();
    }
    if let Some(v) = &args.cluster_name {
        c.cluster_name = v.clone();
    }
    if let Some(v) = args.replica_id {
        c.replica_id = v;
    }
    if let Some(f) = args.flush {
        c.flush = match f {
            FlushArg::Async => FlushMode::Async,
            FlushArg::Sync => FlushMode::Sync,
        };
    }
    if let Some(v) = &args.peers {
        c.peers = parse_peers(v)?;
    }
    if let Some(v) = &args.voters {
        c.voters = v.clone();
    }
    if let Some(v) = &args.learners {
        c.learners = v.clone();
    }
    if let Some(a) = args.ack {
        c.ack = match a {
            AckArg::Quorum => AckPolicy::Quorum,
            AckArg::Leader => AckPolicy::Leader,
        };
    }
    if let Some(v) = args.raft_tick_ms {
        c.raft_tick_ms = v;
    }
    if let Some(v) = args.election_ticks {
        c.election_ticks = v;
    }
    if let Some(v) = args.max_election_ticks {
        c.max_election_ticks = v;
    }
    if args.enable_fault_injection {
        c.enable_fault_injection = true;
    }
    c.validate()?;
    Ok(c)
}

/// Writes `text` to `path` through a temp file and a rename, so readers never see half of it.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-broker: {e}");
            std::process::exit(2);
        }
    };
    let ready_file = args.ready_file.clone();
    let result = sluice_broker::server::run(
        config,
        move |addr| {
            println!("sluice-broker listening on {addr}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            if let Some(p) = ready_file {
                if let Err(e) = write_atomically(&p, &addr.to_string()) {
                    tracing::error!("cannot write ready file {}: {e}", p.display());
                }
            }
        },
        shutdown_signal(),
    )
    .await;
    if let Err(e) = result {
        eprintln!("sluice-broker: {e}");
        std::process::exit(1);
    }
}
