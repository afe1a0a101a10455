//! `sluice bench modes`: produce guarantees measured side by side in one run: pipelined
//! produce without idempotence (plain) and with it (the client's default), in alternating
//! rounds so both see the same phases of the machine; the report gives each round's ratio and
//! their median.

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
    /// Messages per mode and round.
    #[arg(long, default_value_t = 200_000)]
    pub count: u64,
    /// Rounds (each runs every mode once); the report gives medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Sends in flight (pipelined through the producer's batching).
    #[arg(long, default_value_t = 1024)]
    pub in_flight: usize,
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

pub async fn run(config: ClientConfig, a: ModesArgs) -> anyhow::Result<()> {
    let admin = Admin::new(config.clone())?;
    if admin.topic_route(&a.topic).await.is_err() {
        admin.create_topic(&a.topic, a.queues, None).await?;
    }
    let build = |idempotence: bool| {
        Producer::builder(config.clone())
            .idempotence(idempotence)
            .max_in_flight(a.in_flight.max(1))
            .build()
    };
    let (plain, idempotent) = (build(false)?, build(true)?);
    plain.prepare(&a.topic).await?;
    idempotent.prepare(&a.topic).await?;
    let mut r = Report {
        rounds: a.rounds,
        ..Report::default()
    };
    for round in 0..a.rounds {
        let rate = |d: Duration| a.count as f64 / d.as_secs_f64().max(1e-9);
        let p = rate(pipelined(&plain, &a.topic, a.size, a.count, a.in_flight).await?);
        let i = rate(pipelined(&idempotent, &a.topic, a.size, a.count, a.in_flight).await?);
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
    }
    r.idempotent_ratio_median = median(&r.idempotent_ratios);
    plain.shutdown().await;
    idempotent.shutdown().await;
    if a.json {
        return print_json(&r);
    }
    println!(
        "idempotent / plain, median of {} rounds: {:.1} %",
        a.rounds,
        100.0 * r.idempotent_ratio_median
    );
    Ok(())
}
