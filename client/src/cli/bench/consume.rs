//! Consumer workers: pull or push (concurrent or orderly) consumers of one group, timing each
//! delivery against the send time its body carries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{
    ClientConfig, ConsumerBuilder, MessageQueue, OrderlyFailure, PullConsumer, PushConsumer,
    ReceivedMessage, StartPosition,
};
use tokio::time::Instant;

use super::args::{Amount, ConsumeMode, ReceivePlan};
use super::gaps::GapClock;
use super::payload;
use super::progress::Counters;
use super::stats::Latencies;

/// Longest single wait in `poll`, so stop conditions are noticed promptly.
const POLL_SLICE: Duration = Duration::from_millis(100);

pub struct ReceiveShared {
    pub plan: ReceivePlan,
    pub amount: Amount,
    pub counters: Arc<Counters>,
    pub gaps: GapClock,
    /// e2e: set once every producer finished; consumers then stop when they have received
    /// everything acknowledged, or after the idle timeout.
    pub sending_over: Option<AtomicBool>,
}

#[derive(Default)]
pub struct ReceiveOutcome {
    pub latencies: Latencies,
    pub messages: u64,
    pub bytes: u64,
    /// Messages without a send time in their body (not sent by `sluice bench`).
    pub unstamped: u64,
    pub error: Option<String>,
}

impl ReceiveOutcome {
    pub fn merge(&mut self, other: ReceiveOutcome) {
        self.latencies.merge(&other.latencies);
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.unstamped += other.unstamped;
        if self.error.is_none() {
            self.error = other.error;
        }
    }
}

/// A consumer of the run: a pull consumer polled by [`run`], or a push consumer whose handler
/// counts into a tally.
pub enum BenchConsumer {
    Pull(PullConsumer),
    Push(PushConsumer, Arc<Tally>),
}

/// What push handlers counted.
#[derive(Default)]
pub struct Tally {
    outcome: Mutex<ReceiveOutcome>,
}

impl BenchConsumer {
    pub fn assignment(&self) -> Vec<MessageQueue> {
        match self {
            BenchConsumer::Pull(c) => c.assignment(),
            BenchConsumer::Push(c, _) => c.assignment(),
        }
    }

    pub async fn shutdown(self) {
        match self {
            BenchConsumer::Pull(c) => c.shutdown().await,
            BenchConsumer::Push(c, _) => c.shutdown().await,
        }
    }
}

/// Counts one delivery (its bytes and latency) into `out`.
fn count(out: &mut ReceiveOutcome, body: &[u8], now_us: u64) {
    out.bytes += body.len() as u64;
    match payload::sent_us(body) {
        Some(sent) => out.latencies.record_us(now_us.saturating_sub(sent)),
        None => out.unstamped += 1,
    }
    out.messages += 1;
}

pub async fn consumer(
    config: &ClientConfig,
    topic: &str,
    group: &str,
    shared: &Arc<ReceiveShared>,
) -> sluice_client::Result<BenchConsumer> {
    let plan = &shared.plan;
    let batch = plan.pull_batch;
    let builder = ConsumerBuilder::new(config.clone(), group);
    let builder = match &plan.selector {
        Some(sel) => builder.subscribe_with(topic, sel.clone()),
        None => builder.subscribe(topic),
    };
    let builder = builder
        .start_position(if plan.from_earliest {
            StartPosition::Earliest
        } else {
            StartPosition::Latest
        })
        .pull_batch_size(batch)
        // Room for a few pulls per queue ahead of `poll`.
        .max_unfinished_per_queue((batch as usize * 4).max(1000))
        .buffer_size((batch as usize * 8).max(8192))
        .poll_timeout(Duration::from_secs(2))
        // Several consumers join at once: hand queues over quickly so the run can start.
        .heartbeat_interval(Duration::from_millis(500))
        .rebalance_interval(Duration::from_secs(1));
    let builder = match plan.mode {
        ConsumeMode::Pull => return builder.start_pull().await.map(BenchConsumer::Pull),
        ConsumeMode::Push => builder,
        ConsumeMode::Orderly => builder.orderly(OrderlyFailure::Block),
    };
    let tally = Arc::new(Tally::default());
    let (t, s, work) = (tally.clone(), shared.clone(), plan.handler_work);
    let consumer = builder
        .start_push(move |m: ReceivedMessage| {
            let (tally, shared) = (t.clone(), s.clone());
            async move {
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                if let Ok(mut out) = tally.outcome.lock() {
                    count(&mut out, m.body(), payload::now_us());
                }
                shared.counters.received.fetch_add(1, Ordering::Relaxed);
                shared.gaps.tick(Instant::now());
                Ok::<(), std::convert::Infallible>(())
            }
        })
        .await?;
    Ok(BenchConsumer::Push(consumer, tally))
}

/// e2e: producers are still at work (the idle clock does not run yet).
fn still_sending(shared: &ReceiveShared) -> bool {
    shared
        .sending_over
        .as_ref()
        .is_some_and(|o| !o.load(Ordering::Acquire))
}

fn enough(shared: &ReceiveShared, deadline: Option<Instant>) -> bool {
    let received = shared.counters.received.load(Ordering::Relaxed);
    if let Amount::Count(n) = shared.amount {
        if received >= n {
            return true;
        }
    }
    if let Some(over) = &shared.sending_over {
        let sent = shared.counters.sent.load(Ordering::Relaxed);
        if over.load(Ordering::Acquire) && received >= sent {
            return true;
        }
    }
    deadline.is_some_and(|d| Instant::now() >= d) || shared.counters.stopped()
}

/// Consumes until the run has what it needs, or nothing came for the idle timeout.
pub async fn run(
    consumer: BenchConsumer,
    shared: Arc<ReceiveShared>,
    deadline: Option<Instant>,
) -> ReceiveOutcome {
    match consumer {
        BenchConsumer::Pull(c) => run_pull(c, shared, deadline).await,
        BenchConsumer::Push(c, tally) => {
            let mut last = (
                shared.counters.received.load(Ordering::Relaxed),
                Instant::now(),
            );
            loop {
                if enough(&shared, deadline) {
                    break;
                }
                let sending = still_sending(&shared);
                let received = shared.counters.received.load(Ordering::Relaxed);
                if received != last.0 || sending {
                    last = (received, Instant::now());
                } else if last.1.elapsed() >= shared.plan.idle_timeout {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c.shutdown().await;
            tally
                .outcome
                .lock()
                .map(|mut o| std::mem::take(&mut *o))
                .unwrap_or_default()
        }
    }
}

async fn run_pull(
    mut consumer: PullConsumer,
    shared: Arc<ReceiveShared>,
    deadline: Option<Instant>,
) -> ReceiveOutcome {
    let mut out = ReceiveOutcome::default();
    let mut last_activity = Instant::now();
    let idle = shared.plan.idle_timeout;
    loop {
        if enough(&shared, deadline) {
            break;
        }
        // The idle clock runs only once nothing more is being sent.
        let sending = still_sending(&shared);
        if !sending && last_activity.elapsed() >= idle {
            break;
        }
        let batch = match consumer.poll(8192, POLL_SLICE).await {
            Ok(b) => b,
            Err(e) => {
                out.error = Some(e.to_string());
                break;
            }
        };
        if batch.is_empty() {
            if sending {
                last_activity = Instant::now();
            }
            continue;
        }
        let now = Instant::now();
        last_activity = now;
        let now_us = payload::now_us();
        for m in &batch {
            count(&mut out, m.body(), now_us);
        }
        shared
            .counters
            .received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        shared.gaps.tick(now);
    }
    consumer.shutdown().await;
    out
}
