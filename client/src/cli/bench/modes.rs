//! `sluice bench modes`: produce guarantees measured side by side in one run, in alternating
//! rounds so all see the same phases of the machine; the report gives each round's ratios and
//! their medians:
//! - pipelined produce without idempotence (plain) and with it (the client's default);
//! - with `--transactions`: one message per transaction and ten per transaction, against plain
//!   sends (no idempotence) of one message per request with the same number of senders (a
//!   transaction is a send per message and a commit, each acknowledged before the next); the
//!   three in reverse order in odd rounds; the idempotent producer's `send()` rate from the same
//!   senders (its sends meeting on a queue share a request) is measured after them; and, as the
//!   reference a transaction's two round trips allow, two plain sends per message, each
//!   acknowledged before the next (the rate counts one message per pair);
//! - with `--trace`: pipelined produce with message trace on (the client's default producer
//!   plus a trace event per message sent and stored) against the same producer without it,
//!   before the others in odd rounds and after them in even ones.

use std::time::{Duration, Instant};

use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use sluice_client::{Admin, ClientConfig, Message, Producer};

use super::payload::STAMPED_MIN;
use crate::cli::output::print_json;

#[derive(Debug, Args)]
pub struct ModesArgs {
    /// Topic to use; created with --queues queues if it does not exist.
    #[arg(long, default_value = "bench-modes")]
    pub topic: String,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub queues: u32,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per pipelined mode and round.
    #[arg(long, default_value_t = 200_000)]
    pub count: u64,
    /// Messages per transactional mode (and its baseline) and round.
    #[arg(long, default_value_t = 20_000)]
    pub tx_count: u64,
    /// Rounds (each runs every mode once); the report gives medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Sends in flight (pipelined through the producer's batching).
    #[arg(long, default_value_t = 1024)]
    pub in_flight: usize,
    /// Also transactional produce (1 and 10 messages per transaction) beside plain sends of
    /// one message per request.
    #[arg(long)]
    pub transactions: bool,
    /// Also pipelined produce with message trace on, beside the idempotent producer.
    #[arg(long)]
    pub trace: bool,
    /// Senders at once for the transactional rounds and their plain baseline.
    #[arg(long, default_value_t = 64)]
    pub senders: usize,
    /// Check-back storm: leave this many transactions open, then measure pipelined produce
    /// for --storm-secs while the broker checks them (with a producer that rolls each back),
    /// beside produce measured as long just before (0 skips it).
    #[arg(long, default_value_t = 0)]
    pub storm: u64,
    #[arg(long, default_value_t = 10)]
    pub storm_secs: u64,
    /// Print one JSON report instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    rounds: u32,
    plain_msgs_per_sec: Vec<f64>,
    idempotent_msgs_per_sec: Vec<f64>,
    /// Idempotent over plain throughput, per round.
    idempotent_ratios: Vec<f64>,
    idempotent_ratio_median: f64,
    /// Traced (idempotent, trace on) over idempotent throughput, per round.
    traced_msgs_per_sec: Vec<f64>,
    traced_ratios: Vec<f64>,
    traced_ratio_median: Option<f64>,
    /// Trace events the traced producer wrote and dropped over the whole run.
    trace_written: Option<u64>,
    trace_dropped: Option<u64>,
    /// `send()` from `senders` tasks at once: without idempotence one message per request (the
    /// transactions' baseline), with it sends meeting on a queue share a request.
    plain_sync_msgs_per_sec: Vec<f64>,
    idempotent_sync_msgs_per_sec: Vec<f64>,
    tx1_msgs_per_sec: Vec<f64>,
    tx10_msgs_per_sec: Vec<f64>,
    tx1_ratios: Vec<f64>,
    tx10_ratios: Vec<f64>,
    tx1_ratio_median: Option<f64>,
    tx10_ratio_median: Option<f64>,
    /// Two plain sends per message, one after the other, over one per request.
    two_sends_msgs_per_sec: Vec<f64>,
    two_sends_ratios: Vec<f64>,
    two_sends_ratio_median: Option<f64>,
    storm_transactions: Option<u64>,
    storm_before_msgs_per_sec: Option<f64>,
    storm_during_msgs_per_sec: Option<f64>,
    /// During over before.
    storm_ratio: Option<f64>,
    /// Checks answered while produce was measured, per second.
    storm_checks_per_sec: Option<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// Sends `count` messages with `send_async` (at most `in_flight` pending); the elapsed time.
async fn pipelined(
    p: &Producer,
    topic: &str,
    size: usize,
    count: u64,
    in_flight: usize,
) -> anyhow::Result<Duration> {
    let body = vec![b'x'; size.max(STAMPED_MIN)];
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    for _ in 0..count {
        if pending.len() >= in_flight.max(1) {
            if let Some(r) = pending.next().await {
                r?;
            }
        }
        pending.push(p.send_async(Message::new(topic, body.clone())).await?);
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(started.elapsed())
}

/// The traced producer's pipelined rate, once its trace writes are done (None without one).
async fn traced_run(p: Option<&Producer>, a: &ModesArgs) -> anyhow::Result<Option<f64>> {
    let Some(p) = p else { return Ok(None) };
    let took = pipelined(p, &a.topic, a.size, a.count, a.in_flight).await?;
    p.flush_trace().await;
    Ok(Some(a.count as f64 / took.as_secs_f64().max(1e-9)))
}

/// Pipelined produce in rounds of `--count / 10` messages until `window` has passed: the rate
/// and the time taken.
async fn pipelined_for(
    p: &Producer,
    a: &ModesArgs,
    window: Duration,
) -> anyhow::Result<(f64, Duration)> {
    let chunk = (a.count / 10).max(1);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < window {
        pipelined(p, &a.topic, a.size, chunk, a.in_flight).await?;
        sent += chunk;
    }
    let took = started.elapsed();
    Ok((sent as f64 / took.as_secs_f64().max(1e-9), took))
}

/// What each sender does per message (or per transaction).
#[derive(Clone, Copy)]
enum Cycle {
    /// One send, acknowledged.
    Send,
    /// Two sends, each acknowledged before the next: a message's share of two round trips.
    TwoSends,
    /// A transaction of this many sends and its commit.
    Tx(u64),
}

/// `senders` tasks each running `cycle` until `count` messages are counted; the elapsed time.
async fn transactional(
    p: &Producer,
    topic: &str,
    size: usize,
    count: u64,
    senders: usize,
    cycle: Cycle,
) -> anyhow::Result<Duration> {
    let body = vec![b'x'; size.max(STAMPED_MIN)];
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..senders.max(1) {
        let (p, next, body, topic) = (p.clone(), next.clone(), body.clone(), topic.to_string());
        tasks.push(tokio::spawn(async move {
            let step = match cycle {
                Cycle::Tx(n) => n.max(1),
                Cycle::Send | Cycle::TwoSends => 1,
            };
            while next.fetch_add(step, std::sync::atomic::Ordering::Relaxed) < count {
                let per_tx = match cycle {
                    Cycle::Tx(n) => n.max(1),
                    Cycle::Send | Cycle::TwoSends => {
                        p.send(Message::new(topic.clone(), body.clone())).await?;
                        if matches!(cycle, Cycle::TwoSends) {
                            p.send(Message::new(topic.clone(), body.clone())).await?;
                        }
                        continue;
                    }
                };
                let mut tx = p.begin_transaction()?;
                for _ in 0..per_tx {
                    tx.send(Message::new(topic.clone(), body.clone())).await?;
                }
                tx.commit().await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

/// The check-back storm (see [`ModesArgs::storm`]).
async fn storm(
    config: &ClientConfig,
    a: &ModesArgs,
    producer: &Producer,
    r: &mut Report,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let window = Duration::from_secs(a.storm_secs.max(1));
    let group = format!("bench-storm-{:08x}", rand::random::<u32>());
    let (before, _) = pipelined_for(producer, a, window).await?;
    // Open transactions nobody ends: one message each.
    let abandoner = Producer::builder(config.clone())
        .producer_group(&group)
        .build()?;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..a.senders.max(1) {
        let (p, next, topic, n) = (abandoner.clone(), next.clone(), a.topic.clone(), a.storm);
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let mut tx = p.begin_transaction()?;
                tx.send(Message::new(topic.clone(), "abandoned")).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    abandoner.shutdown().await;
    // A producer of the group rolls each back when asked; measure once the checks run.
    let checks = Arc::new(AtomicU64::new(0));
    let counted = checks.clone();
    let checker = Producer::builder(config.clone())
        .producer_group(&group)
        .transaction_checker(Arc::new(move |_: &sluice_client::CheckedTransaction| {
            counted.fetch_add(1, Ordering::Relaxed);
            sluice_client::Resolution::Rollback
        }))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while checks.load(Ordering::Relaxed) == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no transaction check within 120 s"
        );
        // Polling a counter the checker moves.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c0 = checks.load(Ordering::Relaxed);
    let (during, took) = pipelined_for(producer, a, window).await?;
    let answered = checks.load(Ordering::Relaxed) - c0;
    checker.shutdown().await;
    r.storm_transactions = Some(a.storm);
    r.storm_before_msgs_per_sec = Some(before.round());
    r.storm_during_msgs_per_sec = Some(during.round());
    r.storm_ratio = Some((during / before * 1000.0).round() / 1000.0);
    r.storm_checks_per_sec = Some((answered as f64 / took.as_secs_f64().max(1e-9)).round());
    if !a.json {
        println!(
            "check-back storm of {}: produce {before:.0} msgs/s before, {during:.0} msgs/s during ({:.1} %), {} checks answered meanwhile",
            a.storm,
            100.0 * during / before,
            answered
        );
    }
    Ok(())
}

pub async fn run(config: ClientConfig, a: ModesArgs) -> anyhow::Result<()> {
    let admin = Admin::new(config.clone())?;
    if admin.topic_route(&a.topic).await.is_err() {
        admin.create_topic(&a.topic, a.queues, None).await?;
    }
    let build = |idempotence: bool, trace: bool| {
        Producer::builder(config.clone())
            .idempotence(idempotence)
            .trace(trace)
            .producer_group("bench-modes")
            .max_in_flight(a.in_flight.max(1))
            .build()
    };
    let (plain, idempotent) = (build(false, false)?, build(true, false)?);
    let traced = match a.trace {
        true => Some(build(true, true)?),
        false => None,
    };
    plain.prepare(&a.topic).await?;
    idempotent.prepare(&a.topic).await?;
    if let Some(t) = &traced {
        t.prepare(&a.topic).await?;
    }
    let mut r = Report {
        rounds: a.rounds,
        ..Report::default()
    };
    for round in 0..a.rounds {
        let rate = |d: Duration| a.count as f64 / d.as_secs_f64().max(1e-9);
        // Alternating which goes first, so neither gains from the other's warm-up.
        let run = |p| pipelined(p, &a.topic, a.size, a.count, a.in_flight);
        // The traced producer runs before the others in odd rounds and after them in even
        // ones; its trace writes finish before anything else is measured.
        let traced_first = round % 2 == 1;
        let mut traced_rate = match traced_first {
            true => traced_run(traced.as_ref(), &a).await?,
            false => None,
        };
        let (p, i) = if round % 2 == 0 {
            let p = rate(run(&plain).await?);
            (p, rate(run(&idempotent).await?))
        } else {
            let i = rate(run(&idempotent).await?);
            (rate(run(&plain).await?), i)
        };
        if !a.json {
            println!(
                "round {}: plain {p:.0} msgs/s, idempotent {i:.0} msgs/s ({:.1} %)",
                round + 1,
                100.0 * i / p
            );
        }
        r.plain_msgs_per_sec.push(p.round());
        r.idempotent_msgs_per_sec.push(i.round());
        r.idempotent_ratios.push((i / p * 1000.0).round() / 1000.0);
        if !traced_first {
            traced_rate = traced_run(traced.as_ref(), &a).await?;
        }
        if let Some(t) = traced_rate {
            if !a.json {
                println!(
                    "round {}: traced {t:.0} msgs/s ({:.1} % of idempotent)",
                    round + 1,
                    100.0 * t / i
                );
            }
            r.traced_msgs_per_sec.push(t.round());
            r.traced_ratios.push((t / i * 1000.0).round() / 1000.0);
        }
        if a.transactions {
            let t = |p, cycle| transactional(p, &a.topic, a.size, a.tx_count, a.senders, cycle);
            let tx_rate = |d: Duration| a.tx_count as f64 / d.as_secs_f64().max(1e-9);
            // The baseline is plain: one message per request (an idempotent producer's sends
            // meeting on a queue share one); transactions use the client's default producer.
            // The three in reverse order in odd rounds, so that no mode always runs at the same
            // point of the machine's phases (the page cache costs this VM more some seconds
            // into a burst of writes than at its start); the idempotent `send()` after them.
            // Two sends per message run next to the baseline.
            let (sync, two, tx1, tx10) = if round % 2 == 0 {
                let sync = tx_rate(t(&plain, Cycle::Send).await?);
                let two = tx_rate(t(&plain, Cycle::TwoSends).await?);
                let tx1 = tx_rate(t(&idempotent, Cycle::Tx(1)).await?);
                (
                    sync,
                    two,
                    tx1,
                    tx_rate(t(&idempotent, Cycle::Tx(10)).await?),
                )
            } else {
                let tx10 = tx_rate(t(&idempotent, Cycle::Tx(10)).await?);
                let tx1 = tx_rate(t(&idempotent, Cycle::Tx(1)).await?);
                let two = tx_rate(t(&plain, Cycle::TwoSends).await?);
                (tx_rate(t(&plain, Cycle::Send).await?), two, tx1, tx10)
            };
            let sync_idem = tx_rate(t(&idempotent, Cycle::Send).await?);
            if !a.json {
                println!(
                    "round {}: one per request {sync:.0} msgs/s (idempotent send() {sync_idem:.0}), two sends per message {two:.0} ({:.1} %), 1 per transaction {tx1:.0} msgs/s ({:.1} %), 10 per transaction {tx10:.0} msgs/s ({:.1} %)",
                    round + 1,
                    100.0 * two / sync,
                    100.0 * tx1 / sync,
                    100.0 * tx10 / sync
                );
            }
            r.plain_sync_msgs_per_sec.push(sync.round());
            r.idempotent_sync_msgs_per_sec.push(sync_idem.round());
            r.tx1_msgs_per_sec.push(tx1.round());
            r.tx10_msgs_per_sec.push(tx10.round());
            r.tx1_ratios.push((tx1 / sync * 1000.0).round() / 1000.0);
            r.tx10_ratios.push((tx10 / sync * 1000.0).round() / 1000.0);
            r.two_sends_msgs_per_sec.push(two.round());
            r.two_sends_ratios
                .push((two / sync * 1000.0).round() / 1000.0);
        }
    }
    r.idempotent_ratio_median = median(&r.idempotent_ratios);
    if a.transactions {
        r.tx1_ratio_median = Some(median(&r.tx1_ratios));
        r.tx10_ratio_median = Some(median(&r.tx10_ratios));
        r.two_sends_ratio_median = Some(median(&r.two_sends_ratios));
    }
    if a.storm > 0 {
        storm(&config, &a, &idempotent, &mut r).await?;
    }
    plain.shutdown().await;
    idempotent.shutdown().await;
    if let Some(t) = &traced {
        t.shutdown().await;
        let stats = t.trace_stats().unwrap_or_default();
        r.trace_written = Some(stats.written);
        r.trace_dropped = Some(stats.dropped());
        r.traced_ratio_median = Some(median(&r.traced_ratios));
    }
    if a.json {
        return print_json(&r);
    }
    println!(
        "idempotent / plain, median of {} rounds: {:.1} %",
        a.rounds,
        100.0 * r.idempotent_ratio_median
    );
    if let (Some(m), Some(w), Some(d)) = (r.traced_ratio_median, r.trace_written, r.trace_dropped) {
        println!(
            "traced / idempotent, median: {:.1} % ({w} trace events written, {d} dropped)",
            100.0 * m
        );
    }
    if let (Some(t1), Some(t10), Some(two)) = (
        r.tx1_ratio_median,
        r.tx10_ratio_median,
        r.two_sends_ratio_median,
    ) {
        println!(
            "transactions / one per request, medians: 1 per transaction {:.1} %, 10 per transaction {:.1} % (two sends per message: {:.1} %)",
            100.0 * t1,
            100.0 * t10,
            100.0 * two
        );
    }
    Ok(())
}
