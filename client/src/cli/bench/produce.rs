//! Producer workers: each owns a [`Producer`] (its own connections and batches) and keeps its
//! window of sends in flight, timing each one from send to ack.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use sluice_client::{ClientConfig, Message, Producer, Result as SendResult, SendReceipt};
use tokio::time::Instant;

use super::args::{Amount, SendPlan};
use super::gaps::GapClock;
use super::payload;
use super::progress::Counters;
use super::stats::Latencies;

/// What every producer worker shares.
pub struct SendShared {
    pub topic: String,
    pub size: usize,
    pub plan: SendPlan,
    pub amount: Amount,
    /// Messages handed out so far (count mode): a worker takes one before each send.
    pub tickets: AtomicU64,
    pub counters: Arc<Counters>,
    pub gaps: GapClock,
    /// Messages built so far (for --tag-one-in).
    pub built: AtomicU64,
}

impl SendShared {
    /// The next message, tagged as the plan says.
    fn message(&self, body: bytes::Bytes) -> Message {
        let m = Message::new(self.topic.clone(), body);
        match &self.plan.tag {
            Some((tag, one_in))
                if self
                    .built
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(*one_in) =>
            {
                m.with_tag(tag.clone())
            }
            _ => m,
        }
    }
}

/// One worker's results.
#[derive(Default)]
pub struct SendOutcome {
    pub latencies: Latencies,
    pub ok: u64,
    pub failed: u64,
    pub first_error: Option<String>,
}

impl SendOutcome {
    fn settle(&mut self, shared: &SendShared, started: Instant, result: SendResult<SendReceipt>) {
        let now = Instant::now();
        match result {
            Ok(_) => {
                self.ok += 1;
                self.latencies
                    .record(now.saturating_duration_since(started));
                shared.counters.sent.fetch_add(1, Ordering::Relaxed);
                shared.gaps.tick(now);
            }
            Err(e) => {
                self.failed += 1;
                shared.counters.send_failed.fetch_add(1, Ordering::Relaxed);
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    /// Settles one explicit batch of `n` messages: one latency sample for the batch.
    fn settle_batch(
        &mut self,
        shared: &SendShared,
        started: Instant,
        n: u64,
        result: SendResult<Vec<SendReceipt>>,
    ) {
        let now = Instant::now();
        match result {
            Ok(_) => {
                self.ok += n;
                self.latencies
                    .record(now.saturating_duration_since(started));
                shared.counters.sent.fetch_add(n, Ordering::Relaxed);
                shared.gaps.tick(now);
            }
            Err(e) => {
                self.failed += n;
                shared.counters.send_failed.fetch_add(n, Ordering::Relaxed);
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    pub fn merge(&mut self, other: SendOutcome) {
        self.latencies.merge(&other.latencies);
        self.ok += other.ok;
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

pub fn producer(config: &ClientConfig, plan: &SendPlan) -> sluice_client::Result<Producer> {
    Producer::builder(config.clone())
        .retries(plan.retries)
        .idempotence(plan.idempotence)
        .max_in_flight(plan.in_flight)
        .batching(plan.batching)
        .batch_max_messages(plan.batch_size)
        .batch_max_bytes(plan.batch_bytes)
        .linger(plan.linger)
        .build()
}

/// Whether another message may be sent, taking its ticket.
fn may_send(shared: &SendShared, deadline: Option<Instant>) -> bool {
    if shared.counters.stopped() {
        return false;
    }
    match shared.amount {
        Amount::Count(n) => shared.tickets.fetch_add(1, Ordering::Relaxed) < n,
        Amount::Duration(_) | Amount::UntilIdle => deadline.is_none_or(|d| Instant::now() < d),
    }
}

/// How many messages the next explicit batch may hold (up to `want`), taking their tickets;
/// 0 when the run is over.
fn take_batch(shared: &SendShared, want: usize, deadline: Option<Instant>) -> usize {
    if shared.counters.stopped() {
        return 0;
    }
    match shared.amount {
        Amount::Count(n) => {
            let first = shared.tickets.fetch_add(want as u64, Ordering::Relaxed);
            n.saturating_sub(first).min(want as u64) as usize
        }
        Amount::Duration(_) | Amount::UntilIdle => {
            if deadline.is_none_or(|d| Instant::now() < d) {
                want
            } else {
                0
            }
        }
    }
}

/// Keeps `in_flight` explicit batches of `size` messages on the wire until the run is over.
async fn run_batches(
    producer: &Producer,
    shared: &SendShared,
    size: usize,
    deadline: Option<Instant>,
    out: &mut SendOutcome,
) {
    let mut window = FuturesUnordered::new();
    let mut more = true;
    loop {
        while more && window.len() < shared.plan.in_flight {
            let n = take_batch(shared, size, deadline);
            if n == 0 {
                more = false;
                break;
            }
            let started = Instant::now();
            // Every message of a batch carries the same send time, so they can share one body
            // (NATS's bench reuses one payload too): building 128 identical bodies per batch
            // took CPU from the broker on a small machine.
            let body = payload::body(shared.size, payload::now_us());
            let batch: Vec<Message> = (0..n).map(|_| shared.message(body.clone())).collect();
            window.push(
                producer
                    .send_batch(batch)
                    .map(move |r| (started, n as u64, r)),
            );
        }
        match window.next().await {
            Some((started, n, result)) => out.settle_batch(shared, started, n, result),
            None => break,
        }
    }
}

/// Paces one worker at its share of `--rate`: message i is due at start + i * period.
struct Pacer {
    next: Instant,
    period: Duration,
}

impl Pacer {
    fn new(start: Instant, rate: Option<u64>, workers: usize) -> Option<Pacer> {
        let per_worker = rate? as f64 / workers as f64;
        Some(Pacer {
            next: start,
            period: Duration::from_secs_f64(1.0 / per_worker.max(1e-9)),
        })
    }

    /// The scheduled time of the next message.
    fn take(&mut self) -> Instant {
        let due = self.next;
        self.next += self.period;
        due
    }
}

/// Runs one producer until its share is sent and acknowledged.
pub async fn run(
    producer: Producer,
    shared: Arc<SendShared>,
    start: Instant,
    deadline: Option<Instant>,
) -> SendOutcome {
    let mut out = SendOutcome::default();
    let mut pacer = Pacer::new(start, shared.plan.rate, shared.plan.producers);
    if let Some(size) = shared.plan.send_batch {
        run_batches(&producer, &shared, size, deadline, &mut out).await;
    } else if shared.plan.in_flight == 1 {
        // One at a time: each send waits for its ack (`send`, which does not linger).
        while may_send(&shared, deadline) {
            let started = wait_turn(&mut pacer).await;
            let body = payload::body(shared.size, payload::now_us());
            let result = producer.send(shared.message(body)).await;
            let failed = result.is_err();
            out.settle(&shared, started, result);
            if failed {
                // Do not spin on a broker that fails at once (the peer does the same).
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    } else {
        let mut window = FuturesUnordered::new();
        loop {
            // Take what has finished without waiting, so acks are timed when they arrive.
            while let Some(Some((started, result))) = window.next().now_or_never() {
                out.settle(&shared, started, result);
            }
            if window.len() >= shared.plan.in_flight {
                if let Some((started, result)) = window.next().await {
                    out.settle(&shared, started, result);
                }
                continue;
            }
            if let Some(due) = pacer.as_ref().map(|p| p.next) {
                if due > Instant::now() {
                    // Collect acks while waiting for the next slot, so they are timed on arrival.
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        Some((started, result)) = window.next(), if !window.is_empty() => {
                            out.settle(&shared, started, result);
                        }
                    }
                    continue;
                }
            }
            if !may_send(&shared, deadline) {
                break;
            }
            let started = pacer.as_mut().map_or_else(Instant::now, Pacer::take);
            let body = payload::body(shared.size, payload::now_us());
            match producer.send_async(shared.message(body)).await {
                Ok(handle) => window.push(handle.map(move |r| (started, r))),
                Err(e) => out.settle(&shared, started, Err(e)),
            }
        }
        while let Some((started, result)) = window.next().await {
            out.settle(&shared, started, result);
        }
    }
    producer.shutdown().await;
    out
}

/// Waits for the next scheduled send (with --rate) and returns the time latency counts from.
async fn wait_turn(pacer: &mut Option<Pacer>) -> Instant {
    match pacer {
        Some(p) => {
            let due = p.take();
            tokio::time::sleep_until(due).await;
            due
        }
        None => Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spreads_the_rate_over_workers() {
        let start = Instant::now();
        assert!(Pacer::new(start, None, 2).is_none());
        let mut p = Pacer::new(start, Some(1000), 4).unwrap();
        assert_eq!(p.period, Duration::from_millis(4));
        assert_eq!(p.take(), start);
        assert_eq!(p.take(), start + Duration::from_millis(4));
    }
}
