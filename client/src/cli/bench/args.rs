//! `sluice bench` syntax, and its check into a [`Plan`].

use std::time::Duration;

use clap::{Args, Subcommand};

use super::payload::STAMPED_MIN;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Send messages as fast as the window allows (or at --rate) and time every ack.
    Produce {
        #[command(flatten)]
        common: CommonOpts,
        #[command(flatten)]
        send: SendOpts,
    },
    /// Consume what a topic holds (a backlog, or what arrives) and time the deliveries.
    Consume {
        #[command(flatten)]
        common: CommonOpts,
        #[command(flatten)]
        receive: ReceiveOpts,
        /// Where a new group starts.
        #[arg(long, default_value = "earliest", value_parser = ["earliest", "latest"])]
        from: String,
    },
    /// Delayed messages: produce throughput beside plain produce, lateness at a steady rate,
    /// a burst due in one second, memory with many pending.
    Timers(super::timers::TimersArgs),
    /// Produce guarantees side by side in one run: plain and idempotent pipelined produce,
    /// each round's ratio and their median.
    Modes(super::modes::ModesArgs),
    /// Produce and consume at once; latency from send to delivery.
    E2e {
        #[command(flatten)]
        common: CommonOpts,
        #[command(flatten)]
        send: SendOpts,
        #[command(flatten)]
        receive: ReceiveOpts,
    },
}

#[derive(Debug, Args)]
pub struct CommonOpts {
    /// Topic to use; created with --queues queues if it does not exist.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Queues per broker group when the topic is created.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub queues: u32,
    /// Body size in bytes (at least 16 to carry the send time).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages in total (produce and e2e default: 100000).
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,
    /// Run this many seconds instead of a count.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Print one JSON report instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SendOpts {
    /// Producer instances, each with its own connections.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Sends in flight per producer; 1 waits for each ack before the next send.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    /// Most messages per batch request.
    #[arg(long, default_value_t = 1024)]
    pub batch_size: usize,
    /// Most bytes per batch request.
    #[arg(long, default_value_t = 1 << 20)]
    pub batch_bytes: usize,
    /// How long a message may wait for its batch to fill, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    pub linger_ms: f64,
    /// One request per message (no batching).
    #[arg(long)]
    pub no_batching: bool,
    /// Send explicit batches of this many messages, one `send_batch` call each (RocketMQ's
    /// batch send, stored whole in one queue); --in-flight then counts batches and latency is
    /// per batch.
    #[arg(long, value_name = "MESSAGES")]
    pub send_batch: Option<usize>,
    /// Send at most this many messages per second over all producers; latency then counts
    /// from each message's scheduled send time.
    #[arg(long, value_name = "MSGS_PER_SEC")]
    pub rate: Option<u64>,
    /// Retries of a failed send (retryable errors only).
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// Producers without idempotence (the client's default is on: the broker stores a
    /// retried batch once).
    #[arg(long)]
    pub no_idempotence: bool,
    /// Tag messages with this tag (all of them, or one in --tag-one-in), e.g. to measure a
    /// consumer's filter; the others carry no tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// With --tag: only every Nth message carries it (10: a tenth).
    #[arg(long, default_value_t = 1, requires = "tag", value_parser = clap::value_parser!(u64).range(1..))]
    pub tag_one_in: u64,
}

#[derive(Debug, Args)]
pub struct ReceiveOpts {
    /// Consumer instances in one group.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Consumer group (default: a new one per run).
    #[arg(long)]
    pub group: Option<String>,
    /// Messages per pull request.
    #[arg(long, default_value_t = 1024)]
    pub pull_batch: u32,
    /// Stop after this many seconds without a message (once sending is over, for e2e).
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub idle_timeout: f64,
    /// Subscribe with this tag expression (filtered on the broker): `a || b`.
    #[arg(
        long = "filter-tag",
        value_name = "TAGS",
        conflicts_with = "filter_sql"
    )]
    pub filter_tag: Option<String>,
    /// Subscribe with this SQL92 condition (filtered on the broker).
    #[arg(long = "filter-sql", value_name = "CONDITION")]
    pub filter_sql: Option<String>,
    /// pull (a pull consumer polling), push (a push consumer's concurrent handlers) or orderly
    /// (a push consumer's ordered consumption: one message at a time per queue, queues locked).
    #[arg(long, value_enum, default_value = "pull")]
    pub mode: ConsumeMode,
    /// push / orderly: each handler call takes this long (simulated work), in microseconds.
    #[arg(long, default_value_t = 0, value_name = "MICROSECONDS")]
    pub handler_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsumeMode {
    Pull,
    Push,
    Orderly,
}

impl ConsumeMode {
    pub fn name(self) -> &'static str {
        match self {
            ConsumeMode::Pull => "pull",
            ConsumeMode::Push => "push",
            ConsumeMode::Orderly => "orderly",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Produce,
    Consume,
    E2e,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Produce => "produce",
            Workload::Consume => "consume",
            Workload::E2e => "e2e",
        }
    }
}

/// How many messages, or for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Count(u64),
    Duration(Duration),
    /// Consume until idle.
    UntilIdle,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SendPlan {
    pub producers: usize,
    pub in_flight: usize,
    pub batching: bool,
    pub batch_size: usize,
    pub batch_bytes: usize,
    pub linger: Duration,
    pub rate: Option<u64>,
    pub retries: u32,
    pub idempotence: bool,
    /// Messages per explicit `send_batch` call, if the run sends explicit batches.
    pub send_batch: Option<usize>,
    /// A tag, on one message in N.
    pub tag: Option<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReceivePlan {
    pub consumers: usize,
    pub group: Option<String>,
    pub pull_batch: u32,
    pub idle_timeout: Duration,
    pub from_earliest: bool,
    pub selector: Option<sluice_client::Selector>,
    pub mode: ConsumeMode,
    pub handler_work: Duration,
}

/// A checked benchmark run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub workload: Workload,
    pub topic: String,
    pub queues: u32,
    pub size: usize,
    pub amount: Amount,
    pub json: bool,
    pub send: Option<SendPlan>,
    pub receive: Option<ReceivePlan>,
}

const DEFAULT_COUNT: u64 = 100_000;

fn seconds(what: &str, s: f64) -> Result<Duration, String> {
    if !s.is_finite() || s <= 0.0 || s > 1e7 {
        return Err(format!(
            "{what} must be a positive number of seconds, not {s}"
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

fn send_plan(o: SendOpts) -> Result<SendPlan, String> {
    if !(1..=1024).contains(&o.producers) {
        return Err("--producers must be within 1..=1024".into());
    }
    if !(1..=1_000_000).contains(&o.in_flight) {
        return Err("--in-flight must be within 1..=1000000".into());
    }
    if !(1..=10_000).contains(&o.batch_size) {
        return Err("--batch-size must be within 1..=10000 (the broker's limit)".into());
    }
    if o.batch_bytes == 0 {
        return Err("--batch-bytes must be above zero".into());
    }
    if !o.linger_ms.is_finite() || !(0.0..=60_000.0).contains(&o.linger_ms) {
        return Err("--linger-ms must be within 0..=60000".into());
    }
    if o.rate == Some(0) {
        return Err("--rate must be above zero".into());
    }
    if let Some(n) = o.send_batch {
        if !(1..=10_000).contains(&n) {
            return Err("--send-batch must be within 1..=10000 (the broker's limit)".into());
        }
        if o.rate.is_some() {
            return Err("--send-batch and --rate cannot be combined".into());
        }
    }
    Ok(SendPlan {
        producers: o.producers,
        in_flight: o.in_flight,
        batching: !o.no_batching,
        batch_size: o.batch_size,
        batch_bytes: o.batch_bytes,
        linger: Duration::from_secs_f64(o.linger_ms / 1000.0),
        rate: o.rate,
        retries: o.retries,
        idempotence: !o.no_idempotence,
        send_batch: o.send_batch,
        tag: o.tag.map(|t| (t, o.tag_one_in)),
    })
}

fn receive_plan(o: ReceiveOpts, from_earliest: bool) -> Result<ReceivePlan, String> {
    if !(1..=1024).contains(&o.consumers) {
        return Err("--consumers must be within 1..=1024".into());
    }
    if !(1..=4096).contains(&o.pull_batch) {
        return Err("--pull-batch must be within 1..=4096 (the broker's limit)".into());
    }
    if let Some(g) = &o.group {
        sluice_proto::names::validate_group_name(g).map_err(|e| format!("--group: {e}"))?;
    }
    Ok(ReceivePlan {
        consumers: o.consumers,
        group: o.group,
        pull_batch: o.pull_batch,
        idle_timeout: seconds("--idle-timeout", o.idle_timeout)?,
        from_earliest,
        selector: match (o.filter_tag, o.filter_sql) {
            (Some(t), _) => Some(sluice_client::Selector::tag(t)),
            (None, Some(q)) => Some(sluice_client::Selector::sql(q)),
            (None, None) => None,
        },
        mode: o.mode,
        handler_work: match (o.mode, o.handler_us) {
            (_, 0) => Duration::ZERO,
            (ConsumeMode::Pull, _) => {
                return Err("--handler-us needs --mode push or orderly".into())
            }
            (_, us) if us > 10_000_000 => return Err("--handler-us is at most 10 s".into()),
            (_, us) => Duration::from_micros(us),
        },
    })
}

impl Plan {
    /// Checks the options; the error is a usage message.
    pub fn new(cmd: BenchCommand) -> Result<Plan, String> {
        let (workload, common, send, receive) = match cmd {
            BenchCommand::Timers(_) | BenchCommand::Modes(_) => {
                return Err("bench timers and modes have plans of their own".into())
            }
            BenchCommand::Produce { common, send } => (Workload::Produce, common, Some(send), None),
            BenchCommand::Consume {
                common,
                receive,
                from,
            } => (
                Workload::Consume,
                common,
                None,
                Some(receive_plan(receive, from == "earliest")),
            ),
            BenchCommand::E2e {
                common,
                send,
                receive,
            } => (
                Workload::E2e,
                common,
                Some(send),
                Some(receive_plan(receive, false)),
            ),
        };
        sluice_proto::names::validate_topic_name(&common.topic)
            .map_err(|e| format!("--topic: {e}"))?;
        if common.size > 4 << 20 {
            return Err("--size must be at most 4 MiB (the broker's message limit)".into());
        }
        if workload == Workload::E2e && common.size < STAMPED_MIN {
            return Err(format!(
                "e2e needs --size of at least {STAMPED_MIN} bytes to carry the send time"
            ));
        }
        let amount = match (common.count, common.duration) {
            (Some(0), _) => return Err("--count must be above zero".into()),
            (Some(n), _) => Amount::Count(n),
            (None, Some(s)) => Amount::Duration(seconds("--duration", s)?),
            (None, None) if workload == Workload::Consume => Amount::UntilIdle,
            (None, None) => Amount::Count(DEFAULT_COUNT),
        };
        Ok(Plan {
            workload,
            topic: common.topic,
            queues: common.queues,
            size: common.size,
            amount,
            json: common.json,
            send: send.map(send_plan).transpose()?,
            receive: receive.transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{Cli, Command};
    use clap::Parser;

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let mut full = vec!["sluice", "--nameservers", "ns:1", "bench"];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Bench(b) => Plan::new(b),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let p = plan(&["produce"]).unwrap();
        assert_eq!(p.workload, Workload::Produce);
        assert_eq!(p.topic, "bench");
        assert_eq!(p.size, 1024);
        assert_eq!(p.amount, Amount::Count(100_000));
        let s = p.send.unwrap();
        assert_eq!((s.producers, s.in_flight, s.batch_size), (1, 256, 1024));
        assert!(s.batching);
        assert_eq!(s.linger, Duration::ZERO);
        assert!(p.receive.is_none());

        let c = plan(&["consume", "--topic", "t1"]).unwrap();
        assert_eq!(c.amount, Amount::UntilIdle);
        let r = c.receive.unwrap();
        assert!(r.from_earliest);
        assert_eq!((r.consumers, r.pull_batch), (1, 1024));
        assert!(c.send.is_none());

        let e = plan(&["e2e", "--duration", "2.5", "--rate", "1000", "--json"]).unwrap();
        assert_eq!(e.amount, Amount::Duration(Duration::from_millis(2500)));
        assert!(e.json);
        assert_eq!(e.send.unwrap().rate, Some(1000));
        assert!(!e.receive.unwrap().from_earliest);
    }

    #[test]
    fn options_reach_the_plan() {
        let p = plan(&[
            "produce",
            "--size",
            "100",
            "--count",
            "5",
            "--producers",
            "4",
            "--in-flight",
            "1",
            "--batch-size",
            "64",
            "--batch-bytes",
            "65536",
            "--linger-ms",
            "2.5",
            "--no-batching",
            "--retries",
            "7",
            "--no-idempotence",
        ])
        .unwrap();
        assert_eq!(p.amount, Amount::Count(5));
        assert_eq!(p.size, 100);
        let s = p.send.unwrap();
        assert_eq!(
            (
                s.producers,
                s.in_flight,
                s.batch_size,
                s.batch_bytes,
                s.retries
            ),
            (4, 1, 64, 65536, 7)
        );
        assert_eq!(s.linger, Duration::from_micros(2500));
        assert!(!s.batching && !s.idempotence);
        let c = plan(&[
            "consume",
            "--consumers",
            "3",
            "--group",
            "g1",
            "--pull-batch",
            "4096",
            "--from",
            "latest",
            "--idle-timeout",
            "0.5",
        ])
        .unwrap();
        let r = c.receive.unwrap();
        assert_eq!((r.consumers, r.pull_batch), (3, 4096));
        assert_eq!(r.group.as_deref(), Some("g1"));
        assert!(!r.from_earliest);
        assert_eq!(r.idle_timeout, Duration::from_millis(500));
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            &["produce", "--count", "0"][..],
            &["produce", "--count", "5", "--duration", "1"],
            &["produce", "--duration", "-1"],
            &["produce", "--duration", "nan"],
            &["produce", "--producers", "0"],
            &["produce", "--in-flight", "0"],
            &["produce", "--batch-size", "10001"],
            &["produce", "--batch-bytes", "0"],
            &["produce", "--linger-ms", "-3"],
            &["produce", "--rate", "0"],
            &["produce", "--send-batch", "0"],
            &["produce", "--send-batch", "10001"],
            &["produce", "--send-batch", "8", "--rate", "100"],
            &["produce", "--topic", "no spaces"],
            &["produce", "--size", "5000000"],
            &["produce", "--queues", "0"],
            &["consume", "--pull-batch", "0"],
            &["consume", "--consumers", "0"],
            &["consume", "--group", "bad/group"],
            &["consume", "--from", "yesterday"],
            &["consume", "--idle-timeout", "0"],
            &["consume", "--in-flight", "3"],
            &["e2e", "--size", "8"],
            &["produce", "--pull-batch", "8"],
            &["fly"],
        ] {
            assert!(plan(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
