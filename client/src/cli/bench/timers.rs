//! `sluice bench timers`: delayed messages measured beside plain ones in one run: produce
//! throughput of each, the lateness of timers due at a steady rate (delivery store time minus
//! due time), a burst due in one second, and broker memory with many timers pending.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use sluice_client::{Admin, ClientConfig, Message, Producer, PullConsumer, StartPosition};

use super::payload::STAMPED_MIN;
use super::stats::{Latencies, LatencySummary};
use crate::cli::output::print_json;

#[derive(Debug, Args)]
pub struct TimersArgs {
    /// Topic to use; created with --queues queues if it does not exist.
    #[arg(long, default_value = "bench-timers")]
    pub topic: String,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub queues: u32,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages in each produce phase (plain, then delayed); 0 skips both.
    #[arg(long, default_value_t = 200_000)]
    pub count: u64,
    /// Delayed messages of a produce round are due this many seconds after the round starts
    /// (late enough that firing does not compete with the round).
    #[arg(long, default_value_t = 20)]
    pub round_delay_secs: u64,
    /// Produce rounds (each plain then delayed); the report gives the medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Batches in flight and messages per batch in the produce phases.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Lateness phase: timers due per second (0 skips it) ...
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// ... for this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Burst phase: timers due in the same second (0 skips it).
    #[arg(long, default_value_t = 200_000)]
    pub burst: u64,
    /// Memory phase: hold this many timers pending (due in a day) and report how the broker's
    /// memory grew (0 skips it). They are delivered a day later.
    #[arg(long, default_value_t = 0)]
    pub pending: u64,
    /// Print one JSON report instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    plain_msgs_per_sec: Option<f64>,
    delayed_msgs_per_sec: Option<f64>,
    /// Delayed over plain produce throughput.
    delayed_ratio: Option<f64>,
    /// Delivery store time minus due time, microseconds.
    lateness: Option<LatencySummary>,
    lateness_rate: Option<u64>,
    burst: Option<u64>,
    /// Last delivery of the burst minus its due second, ms; and how many were delivered.
    burst_last_after_ms: Option<i64>,
    burst_delivered: Option<u64>,
    pending: Option<u64>,
    rss_before_bytes: Option<u64>,
    rss_after_bytes: Option<u64>,
    rss_growth_bytes: Option<i64>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn body(size: usize, tag: &str, i: u64) -> Vec<u8> {
    let mut b = format!("{tag}-{i} ").into_bytes();
    b.resize(size.max(STAMPED_MIN), b'x');
    b
}

/// Sends `count` messages made by `make` in batches of `batch` with `in_flight` batches at
/// once; returns the elapsed time.
async fn send_all(
    p: &Producer,
    count: u64,
    batch: usize,
    in_flight: usize,
    make: impl Fn(u64) -> Message,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut running = FuturesUnordered::new();
    let mut next = 0u64;
    let mut key = 0u64;
    while next < count || !running.is_empty() {
        while next < count && running.len() < in_flight.max(1) {
            let n = (batch as u64).min(count - next);
            let msgs: Vec<Message> = (next..next + n).map(&make).collect();
            next += n;
            key += 1;
            let p = p.clone();
            running.push(async move { p.send_batch_with_key(msgs, &format!("k{key}")).await });
        }
        if let Some(r) = running.next().await {
            r?;
        }
    }
    Ok(started.elapsed())
}

/// Pulls the topic from `since_ms` (store time) until `want` messages tagged `tag` arrived or
/// `timeout` passed; hands each to `seen`.
async fn collect(
    config: &ClientConfig,
    topic: &str,
    tag: &str,
    since_ms: i64,
    want: u64,
    timeout: Duration,
    mut seen: impl FnMut(&sluice_client::ReceivedMessage),
) -> anyhow::Result<u64> {
    let group = format!(
        "bench-timers-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let mut c = PullConsumer::builder(config.clone(), group)
        .subscribe(topic)
        .start_position(StartPosition::Timestamp(since_ms))
        .rebalance_interval(Duration::from_millis(500))
        .heartbeat_interval(Duration::from_millis(500))
        .pull_batch_size(256)
        .start_pull()
        .await?;
    let deadline = Instant::now() + timeout;
    let mut got = 0u64;
    while got < want && Instant::now() < deadline {
        for m in c.poll(4096, Duration::from_millis(500)).await? {
            if m.tag() == tag {
                got += 1;
                seen(&m);
            }
        }
    }
    c.shutdown().await;
    Ok(got)
}

async fn broker_rss(admin: &Admin) -> Option<u64> {
    let rows = admin.cluster_status().await.ok()?;
    Some(rows.iter().filter_map(|r| r.rss_bytes).sum())
}

pub async fn run(config: ClientConfig, a: TimersArgs) -> anyhow::Result<()> {
    let admin = Admin::new(config.clone())?;
    if admin.topic_route(&a.topic).await.is_err() {
        admin.create_topic(&a.topic, a.queues, None).await?;
    }
    let p = Producer::builder(config.clone()).build()?;
    p.prepare(&a.topic).await?;
    let mut r = Report::default();
    let size = a.size;
    let topic = a.topic.clone();

    if a.count > 0 {
        // Alternating rounds, so both kinds see the same phases of the machine; medians.
        let (mut plain_rates, mut delayed_rates) = (Vec::new(), Vec::new());
        for round in 0..a.rounds.max(1) {
            let plain = send_all(&p, a.count, a.batch, a.in_flight, |i| {
                Message::new(topic.clone(), body(size, "plain", i)).with_tag("plain")
            })
            .await?;
            // Due well after the round, so firing does not compete with it; then waited for.
            let due = SystemTime::now() + Duration::from_secs(a.round_delay_secs);
            let since = now_ms();
            let delayed = send_all(&p, a.count, a.batch, a.in_flight, |i| {
                Message::new(topic.clone(), body(size, "delayed", i))
                    .with_tag("delayed")
                    .deliver_at(due)
            })
            .await?;
            let (pr, dr) = (
                a.count as f64 / plain.as_secs_f64(),
                a.count as f64 / delayed.as_secs_f64(),
            );
            if !a.json {
                println!(
                    "produce round {}: plain {pr:.0} msgs/s, delayed {dr:.0} msgs/s ({:.1} %); waiting for the delayed ones ...",
                    round + 1,
                    100.0 * dr / pr
                );
            }
            plain_rates.push(pr);
            delayed_rates.push(dr);
            collect(
                &config,
                &a.topic,
                "delayed",
                since,
                a.count,
                Duration::from_secs(120),
                |_| {},
            )
            .await?;
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        // The ratio of each round (side by side in time), then the median.
        let mut ratios: Vec<f64> = plain_rates
            .iter()
            .zip(&delayed_rates)
            .map(|(p, d)| d / p)
            .collect();
        let ratio = median(&mut ratios);
        let (pr, dr) = (median(&mut plain_rates), median(&mut delayed_rates));
        r.plain_msgs_per_sec = Some(pr.round());
        r.delayed_msgs_per_sec = Some(dr.round());
        r.delayed_ratio = Some((ratio * 1000.0).round() / 1000.0);
        if !a.json {
            println!(
                "produce (medians of {} rounds): plain {pr:.0} msgs/s, delayed {dr:.0} msgs/s; delayed/plain per round, median {:.1} %",
                a.rounds.max(1),
                100.0 * ratio
            );
        }
    }

    if a.rate > 0 && a.seconds > 0.0 {
        let total = (a.rate as f64 * a.seconds) as u64;
        let since = now_ms();
        let tick = Duration::from_millis(10);
        let per_tick = (a.rate / 100).max(1);
        let started = Instant::now();
        let mut sent = 0u64;
        let mut sends = FuturesUnordered::new();
        while sent < total {
            // Paced: a batch every 10 ms, each due 2 s after it is stored.
            let n = per_tick.min(total - sent);
            let msgs: Vec<Message> = (sent..sent + n)
                .map(|i| {
                    Message::new(a.topic.clone(), body(size, "lateness", i))
                        .with_tag("lateness")
                        .with_delay(Duration::from_secs(2))
                })
                .collect();
            sent += n;
            let p = p.clone();
            let key = format!("k{}", sent % 64);
            sends.push(async move { p.send_batch_with_key(msgs, &key).await });
            while let Some(Some(res)) = futures::FutureExt::now_or_never(sends.next()) {
                res?;
            }
            let next = tick * ((sent / per_tick) as u32);
            if let Some(wait) = next.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        while let Some(res) = sends.next().await {
            res?;
        }
        let mut late = Latencies::default();
        let timeout = Duration::from_secs_f64(a.seconds + 60.0);
        collect(&config, &a.topic, "lateness", since, total, timeout, |m| {
            let due = m
                .message
                .properties
                .get("__DELIVER_AT")
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(m.message.store_timestamp_ms);
            let ms = (m.message.store_timestamp_ms - due).max(0) as u64;
            late.record_us(ms * 1000 + 1);
        })
        .await?;
        r.lateness = late.summary("delivery store time minus due time");
        r.lateness_rate = Some(a.rate);
        if let (false, Some(l)) = (a.json, &r.lateness) {
            println!(
                "lateness at {}/s: p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms ({} timers)",
                a.rate, l.p50 / 1000, l.p90 / 1000, l.p99 / 1000, l.p999 / 1000, l.max / 1000, l.samples
            );
        }
    }

    if a.burst > 0 {
        // Due at a whole second far enough ahead to send everything first.
        let lead = 3_000 + a.burst as i64 / 40;
        let due_ms = (now_ms() + lead) / 1000 * 1000 + 1000;
        let due = UNIX_EPOCH + Duration::from_millis(due_ms as u64);
        let since = now_ms();
        send_all(&p, a.burst, a.batch, a.in_flight, |i| {
            Message::new(topic.clone(), body(size, "burst", i))
                .with_tag("burst")
                .deliver_at(due)
        })
        .await?;
        if now_ms() > due_ms && !a.json {
            println!("warning: the burst was still being sent at its due time");
        }
        let mut last = 0i64;
        let got = collect(
            &config,
            &a.topic,
            "burst",
            since,
            a.burst,
            Duration::from_secs(120),
            |m| last = last.max(m.message.store_timestamp_ms),
        )
        .await?;
        r.burst = Some(a.burst);
        r.burst_delivered = Some(got);
        r.burst_last_after_ms = Some(last - due_ms);
        if !a.json {
            println!(
                "burst of {}: {got} delivered, the last {} ms after the due second",
                a.burst,
                last - due_ms
            );
        }
    }

    if a.pending > 0 {
        let before = broker_rss(&admin).await;
        let due = SystemTime::now() + Duration::from_secs(24 * 3600);
        send_all(&p, a.pending, a.batch, a.in_flight, |i| {
            Message::new(topic.clone(), body(size.min(256), "pending", i))
                .with_tag("pending")
                .deliver_at(due)
        })
        .await?;
        let after = broker_rss(&admin).await;
        r.pending = Some(a.pending);
        r.rss_before_bytes = before;
        r.rss_after_bytes = after;
        r.rss_growth_bytes = before.zip(after).map(|(b, a)| a as i64 - b as i64);
        if !a.json {
            println!(
                "{} timers pending: broker memory {} -> {} MiB",
                a.pending,
                before.unwrap_or(0) >> 20,
                after.unwrap_or(0) >> 20
            );
        }
    }
    p.shutdown().await;
    if a.json {
        return print_json(&r);
    }
    Ok(())
}
