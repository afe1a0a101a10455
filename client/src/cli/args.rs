//! Command line syntax of `sluice`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sluice_client::time::parse_time;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Command line tool for the Sluice message broker",
    propagate_version = true
)]
pub struct Cli {
    /// Nameserver addresses, comma-separated.
    #[arg(
        long,
        env = "SLUICE_NAMESERVERS",
        global = true,
        value_name = "HOST:PORT[,...]"
    )]
    pub nameservers: Option<String>,

    /// Timeout of each request to a server, in milliseconds.
    #[arg(long, global = true, default_value_t = 5000, value_name = "MS")]
    pub timeout_ms: u64,

    /// Send over gRPC even to brokers that have a data port (framed TCP).
    #[arg(long, global = true, env = "SLUICE_GRPC_ONLY")]
    pub grpc_only: bool,

    /// Sign requests as this user; the secret comes from SLUICE_SECRET_KEY or
    /// --secret-key-file, never from a flag.
    #[arg(long, global = true, env = "SLUICE_ACCESS_KEY", value_name = "KEY")]
    pub access_key: Option<String>,

    /// A file holding the secret of --access-key.
    #[arg(
        long,
        global = true,
        env = "SLUICE_SECRET_KEY_FILE",
        value_name = "PATH"
    )]
    pub secret_key_file: Option<PathBuf>,

    /// Reach the servers over TLS, trusting the certificates this CA file (PEM) issued.
    #[arg(long, global = true, env = "SLUICE_TLS_CA_FILE", value_name = "PATH")]
    pub tls_ca_file: Option<PathBuf>,

    /// A client certificate and key (PEM) for servers that ask for one.
    #[arg(
        long,
        global = true,
        env = "SLUICE_TLS_CERT_FILE",
        value_name = "PATH",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(
        long,
        global = true,
        env = "SLUICE_TLS_KEY_FILE",
        value_name = "PATH",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list and inspect topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Cluster-wide information.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Send messages: lines from stdin, or --count generated ones.
    Produce(ProduceArgs),
    /// Consume messages in a consumer group and print them.
    Consume(ConsumeArgs),
    /// Consumer groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Look messages up.
    #[command(subcommand)]
    Message(MessageCommand),
    /// A consumer group's dead letters: list them, send them back to their topics.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Transactions: list open and parked ones, commit or roll one back by hand.
    #[command(subcommand)]
    Tx(super::tx::TxCommand),
    /// Write a throwaway CA and a certificate for local TLS clusters and tests (not for
    /// production: the CA's key is not kept).
    Certs(CertsArgs),
    /// Users and permissions (when brokers have authentication on).
    #[command(subcommand)]
    Acl(super::acl::AclCommand),
    /// Measure throughput and latency: produce, consume, or both end to end.
    #[command(subcommand)]
    Bench(super::bench::args::BenchCommand),
    /// Serve a web dashboard: cluster, topics, groups with lag charts, message search with
    /// trace, dead letters with redrive, transactions.
    Dashboard(super::dashboard::DashboardArgs),
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory for ca.crt, node.crt and node.key (created).
    #[arg(long)]
    pub dir: PathBuf,
    /// Host names and IP addresses the certificate is for (repeat the flag).
    #[arg(long = "host", required = true)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic on every master broker (of one cluster) and wait until it is routable.
    Create {
        name: String,
        /// Read and write queues per broker group.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
        queues: u32,
        /// Only brokers of this cluster.
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// All topics known to the nameservers.
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// A topic's queues on every broker group, with their offsets.
    Describe {
        name: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Which brokers serve a topic.
    Route {
        name: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Change a topic's queues or permission on every broker group that serves it (through
    /// each group's log, so every replica has it).
    Update {
        name: String,
        /// Write queues per broker group; read queues follow when they grow and stay when they
        /// shrink (the queues taken out of writing are read until drained).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
        queues: Option<u32>,
        /// Read queues per broker group (lower them once the removed write queues are drained).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
        read_queues: Option<u32>,
        /// r (read only), w (write only) or rw.
        #[arg(long, value_parser = parse_perm, value_name = "r|w|rw")]
        perm: Option<u32>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Delete a topic from every broker group that serves it (its messages are left to
    /// retention).
    Delete {
        name: String,
        #[command(flatten)]
        out: JsonFlag,
    },
}

fn parse_perm(s: &str) -> Result<u32, String> {
    match s {
        "r" => Ok(sluice_proto::perm::READ),
        "w" => Ok(sluice_proto::perm::WRITE),
        "rw" | "wr" => Ok(sluice_proto::perm::READ_WRITE),
        other => Err(format!("expected r, w or rw, got {other:?}")),
    }
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every broker: cluster, name, replica id, role, address, offsets.
    Status {
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Send this many generated messages instead of reading stdin.
    #[arg(long)]
    pub count: Option<u64>,
    /// Body size of generated messages, in bytes.
    #[arg(long, default_value_t = 128, requires = "count")]
    pub size: usize,
    /// Key of every message (indexed: `message find --key`).
    #[arg(long)]
    pub key: Option<String>,
    /// Tag of every message.
    #[arg(long)]
    pub tag: Option<String>,
    /// A property of every message (repeatable): what SQL92 subscriptions select on.
    #[arg(long = "property", value_parser = parse_property, value_name = "NAME=VALUE")]
    pub properties: Vec<(String, String)>,
    /// Sends in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub in_flight: u32,
    /// Deliver every message this long after it is stored (e.g. 1500ms, 30s, 30m, 2h, 7d).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", conflicts_with_all = ["deliver_at", "delay_level"])]
    pub delay: Option<std::time::Duration>,
    /// Deliver every message at this time (RFC 3339 or ms since the epoch).
    #[arg(long, value_parser = parse_time, value_name = "TIME", conflicts_with = "delay_level")]
    pub deliver_at: Option<i64>,
    /// Deliver after the broker's delay level N (1-18 by default: 1s 5s 10s 30s 1m ... 2h).
    #[arg(long, value_name = "N")]
    pub delay_level: Option<u32>,
    /// Read the message bodies from this file (one per line) instead of stdin.
    #[arg(long, conflicts_with = "count")]
    pub file: Option<PathBuf>,
    /// Record a trace of each message (`sluice message trace ID`).
    #[arg(long)]
    pub trace: bool,
    #[command(flatten)]
    pub out: JsonFlag,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// Where a group with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Earliest,
    Latest,
    /// Milliseconds since the epoch.
    Time(i64),
}

fn parse_from(s: &str) -> Result<From, String> {
    match s {
        "earliest" => Ok(From::Earliest),
        "latest" => Ok(From::Latest),
        other => parse_time(other).map(From::Time),
    }
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Consumer group.
    #[arg(long)]
    pub group: String,
    /// Start of queues the group has no offset for: earliest, latest or a TIME (RFC 3339 or ms).
    #[arg(long, default_value = "latest", value_parser = parse_from, value_name = "earliest|latest|TIME")]
    pub from: From,
    /// Exit after this many messages.
    #[arg(long)]
    pub max: Option<u64>,
    /// Exit when nothing arrived for this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout: Option<f64>,
    /// Only messages with one of these tags (filtered on the broker): `a || b`.
    #[arg(long, value_name = "TAGS", conflicts_with = "sql")]
    pub tag: Option<String>,
    /// Only messages whose properties satisfy this SQL92 condition (filtered on the broker;
    /// the tag is the property TAGS): "region = 'eu' AND amount > 100".
    #[arg(long, value_name = "CONDITION")]
    pub sql: Option<String>,
    /// Broadcast: this instance gets every message of the group's topics, with offsets of its
    /// own on the broker (under GROUP|INSTANCE).
    #[arg(long)]
    pub broadcast: bool,
    /// The broadcast instance's id, the same across restarts (default: the host name).
    #[arg(long, requires = "broadcast", value_name = "ID")]
    pub instance: Option<String>,
    /// Ordered consumption: each queue's messages in queue order, one at a time, while this
    /// consumer holds the queue's lock on the broker.
    #[arg(long)]
    pub orderly: bool,
    /// Record a trace of each delivery (`sluice message trace ID`).
    #[arg(long)]
    pub trace: bool,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead letters of a group: id, original topic, attempts, last failure.
    List {
        #[arg(long)]
        group: String,
        /// Most dead letters to show.
        #[arg(long, default_value_t = 1000)]
        max: usize,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Send dead letters back to their original topic with a fresh retry budget.
    Redrive {
        #[arg(long)]
        group: String,
        /// A dead letter's message id (repeat for more).
        #[arg(long = "id", required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter not redriven yet.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Show or set a group's retry policy (max retries before the dead-letter queue, backoff).
    Config {
        group: String,
        /// Attempts after the first before a message goes to the dead-letter queue (1-1000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        max_retries: Option<u32>,
        /// Delays before attempts 2, 3, ... (the last repeats), e.g. "10s 30s 1m 5m".
        #[arg(long, value_parser = parse_backoff)]
        backoff: Option<Vec<std::time::Duration>>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Per queue: broker max offset, committed offset and lag.
    Lag {
        group: String,
        /// Only this topic (default: every topic the group committed offsets for).
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Every group the brokers know: mode, live members, topics.
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// A group's members, which queue each holds, committed offsets and lag.
    Describe {
        group: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Forget a group's offsets and retry policy on every broker group.
    Delete {
        group: String,
        /// Also while it has live members (they start again from their start position).
        #[arg(long)]
        force: bool,
    },
    /// Move a group's offsets; live consumers resume from them within a heartbeat.
    Reset {
        group: String,
        /// earliest, latest, a time (RFC 3339, e.g. 2026-12-06T10:00:00Z) or an offset (a
        /// number, clamped to each queue's range).
        #[arg(long, value_parser = parse_reset, value_name = "earliest|latest|TIME|OFFSET")]
        to: sluice_client::ResetPosition,
        /// Only this topic (default: every topic the group has offsets for, but its retry
        /// topic).
        #[arg(long)]
        topic: Option<String>,
        /// Print what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
}

fn parse_reset(s: &str) -> Result<sluice_client::ResetPosition, String> {
    use sluice_client::ResetPosition;
    match s {
        "earliest" => Ok(ResetPosition::Earliest),
        "latest" => Ok(ResetPosition::Latest),
        n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n
            .parse()
            .map(ResetPosition::Offset)
            .map_err(|e| format!("offset {n}: {e}")),
        t => parse_time(t).map(ResetPosition::Time),
    }
}

fn parse_backoff(s: &str) -> Result<Vec<std::time::Duration>, String> {
    let steps: Vec<_> = s
        .split([' ', ','])
        .filter(|p| !p.is_empty())
        .map(parse_duration)
        .collect::<Result<_, _>>()?;
    if steps.is_empty() {
        return Err("give at least one delay".into());
    }
    Ok(steps)
}

/// `1500ms`, `30s`, `30m`, `2h`, `7d`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    sluice_proto::duration::parse(s)
}

#[derive(Debug, Subcommand)]
pub enum MessageCommand {
    /// Stop a delayed message before it is due (HANDLE from its send receipt).
    Cancel {
        handle: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// What happened to a message (sent, stored, delivered, consumed), from the events
    /// tracing clients wrote, and where it is now.
    Trace {
        id: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// A message by its id.
    Get {
        id: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Messages of a topic by key, or by store-time range.
    Find {
        #[arg(long)]
        topic: String,
        #[arg(long, required_unless_present = "from", conflicts_with_all = ["from", "to"])]
        key: Option<String>,
        /// Start of the time range (RFC 3339 or ms since the epoch).
        #[arg(long, value_parser = parse_time, requires = "to", value_name = "TIME")]
        from: Option<i64>,
        /// End of the time range, inclusive.
        #[arg(long, value_parser = parse_time, requires = "from", value_name = "TIME")]
        to: Option<i64>,
        /// Most messages to return.
        #[arg(long, default_value_t = 64)]
        max: u32,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn syntax_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_commands() {
        let cli = Cli::try_parse_from([
            "sluice",
            "--nameservers",
            "a:1,b:2",
            "consume",
            "t",
            "--group",
            "g",
            "--from",
            "2024-05-01T12:00:00Z",
            "--max",
            "3",
        ])
        .unwrap();
        assert_eq!(cli.nameservers.as_deref(), Some("a:1,b:2"));
        match cli.command {
            Command::Consume(c) => {
                assert_eq!(c.from, From::Time(1_714_564_800_000));
                assert_eq!(c.max, Some(3));
            }
            other => panic!("{other:?}"),
        }
        // Global flags may follow the subcommand.
        let cli =
            Cli::try_parse_from(["sluice", "topic", "list", "--json", "--nameservers", "x:1"])
                .unwrap();
        assert_eq!(cli.nameservers.as_deref(), Some("x:1"));
    }

    #[test]
    fn rejects_bad_usage() {
        for bad in [
            vec!["sluice", "topic", "create", "t"],
            vec!["sluice", "topic", "create", "t", "--queues", "0"],
            vec!["sluice", "consume", "t"],
            vec![
                "sluice",
                "consume",
                "t",
                "--group",
                "g",
                "--from",
                "yesterday",
            ],
            vec!["sluice", "message", "find", "--topic", "t"],
            vec![
                "sluice", "message", "find", "--topic", "t", "--key", "k", "--from", "0", "--to",
                "1",
            ],
            vec!["sluice", "message", "find", "--topic", "t", "--from", "0"],
            vec!["sluice", "produce", "t", "--size", "10"],
            vec!["sluice", "produce", "t", "--delay", "10"],
            vec![
                "sluice",
                "produce",
                "t",
                "--delay",
                "1s",
                "--delay-level",
                "2",
            ],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?} was accepted");
        }
    }
}
