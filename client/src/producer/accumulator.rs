//! The accumulator behind [`Producer::send_async`](super::Producer::send_async): messages bound
//! for the same queue travel together in one Send RPC.
//!
//! One task owns every queue's pending messages. A queue has at most one batch on the wire, so
//! its messages are stored in the order they were handed over (a retry stays in the batch's
//! slot), and while a batch is out the next one fills up: under load batches grow by themselves
//! and a lone message leaves at once. A linger makes batches wait up to that long for company
//! (Kafka's `linger.ms`); a flush sends everything now.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use sluice_proto::v1;
use sluice_proto::ErrorCode;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::select::Routing;
use super::sender::Sender;
use crate::error::{Error, Result};
use crate::message::SendReceipt;
use crate::route::MessageQueue;

/// Commands taken from the channel before the queues they touched are looked at, so that
/// everything that arrived meanwhile is grouped.
const MAX_DRAIN: usize = 4096;

/// How big a batch may get and how long a message may wait for others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    pub(crate) max_messages: usize,
    /// Encoded size of the messages in one request; one message above it goes alone.
    pub(crate) max_bytes: usize,
    pub(crate) linger: Duration,
}

/// Someone waiting for a message's outcome.
pub(crate) struct Waiter {
    pub(crate) reply: oneshot::Sender<Result<SendReceipt>>,
    /// The producer's in-flight slot, freed once the outcome is delivered.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

impl Waiter {
    fn settle(self, outcome: Result<SendReceipt>) {
        // The caller may have dropped its handle; the message was sent all the same.
        let _ = self.reply.send(outcome);
        drop(self.permit);
    }
}

/// A message waiting for its batch.
pub(crate) struct Queued {
    pub(crate) wire: v1::Message,
    /// Round-robin messages may move to another queue when their broker fails.
    pub(crate) reroutable: bool,
    /// A caller waits for it (`send`): its queue's next batch leaves without lingering.
    pub(crate) urgent: bool,
    pub(crate) waiter: Waiter,
}

struct Pending {
    item: Queued,
    size: usize,
    since: Instant,
}

// Sends are the hot path and flushes rare: boxing the big variant would cost an allocation per
// message.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    Send { queue: MessageQueue, item: Queued },
    Flush(oneshot::Sender<()>),
}

/// The producers' side of the accumulator. The task ends, after sending what it holds, once
/// every handle is gone.
#[derive(Clone)]
pub(crate) struct AccumulatorHandle {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl AccumulatorHandle {
    /// Starts the accumulator task (inside a tokio runtime).
    pub(crate) fn start(sender: Arc<Sender>, limits: BatchLimits) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let acc = Accumulator {
            sender,
            limits,
            queues: QueueMap::default(),
            timers: BinaryHeap::new(),
            flushes: Vec::new(),
            done_tx,
            sending: 0,
        };
        tokio::spawn(acc.run(rx, done_rx));
        AccumulatorHandle { tx }
    }

    /// Queues a message for `queue`. If the accumulator is gone (the runtime is shutting
    /// down), the message fails at once.
    pub(crate) fn send(&self, queue: MessageQueue, item: Queued) {
        if let Err(mpsc::error::SendError(Cmd::Send { item, .. })) =
            self.tx.send(Cmd::Send { queue, item })
        {
            item.waiter.settle(Err(Error::Shutdown("producer")));
        }
    }

    /// Sends everything queued now and waits until the messages queued before the call are
    /// finished (acknowledged or failed).
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// FNV-1a: queue keys are short and trusted (they come from routes), and the map is looked up
/// for every message.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type QueueMap<V> = HashMap<MessageQueue, V, BuildHasherDefault<Fnv>>;

#[derive(Default)]
struct QueueState {
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    /// Urgent messages among `pending`.
    urgent: usize,
    /// A batch of this queue is on the wire.
    sending: bool,
    /// A linger timer is armed for this queue.
    timer: bool,
    /// Seen in the current drain round.
    touched: bool,
    /// Messages ever queued here and finished, for flush waiters.
    queued: u64,
    finished: u64,
}

struct FlushWaiter {
    /// Each queue with unfinished messages at the flush, and the count that must be finished.
    targets: Vec<(MessageQueue, u64)>,
    reply: oneshot::Sender<()>,
}

struct Accumulator {
    sender: Arc<Sender>,
    limits: BatchLimits,
    queues: QueueMap<QueueState>,
    /// Linger deadlines, earliest first. An entry may be stale; firing re-checks the queue.
    timers: BinaryHeap<Reverse<(Instant, MessageQueue)>>,
    flushes: Vec<FlushWaiter>,
    done_tx: mpsc::UnboundedSender<(MessageQueue, usize)>,
    /// Batches on the wire.
    sending: usize,
}

/// How many of `pending`'s first messages form the next batch: at least one, then as many as
/// fit the limits.
pub(crate) fn batch_len(sizes: impl IntoIterator<Item = usize>, limits: &BatchLimits) -> usize {
    let mut n = 0;
    let mut bytes = 0usize;
    for size in sizes {
        if n > 0 && (n >= limits.max_messages || bytes.saturating_add(size) > limits.max_bytes) {
            break;
        }
        n += 1;
        bytes = bytes.saturating_add(size);
    }
    n
}

impl Accumulator {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Cmd>,
        mut done_rx: mpsc::UnboundedReceiver<(MessageQueue, usize)>,
    ) {
        let mut open = true;
        let mut touched: Vec<MessageQueue> = Vec::new();
        loop {
            if !open && self.sending == 0 && self.queues.values().all(|q| q.pending.is_empty()) {
                break;
            }
            let next_timer = match self.forced(open) {
                true => None,
                false => self.timers.peek().map(|Reverse((at, _))| *at),
            };
            tokio::select! {
                biased;
                Some((queue, n)) = done_rx.recv() => self.batch_done(queue, n, open),
                cmd = rx.recv(), if open => match cmd {
                    None => {
                        // Every producer is gone: send what is left without lingering.
                        open = false;
                        self.settle_all(open);
                    }
                    Some(cmd) => {
                        self.handle(cmd, &mut touched, open);
                        // Whatever else is waiting joins the same round, so it is batched.
                        for _ in 0..MAX_DRAIN {
                            match rx.try_recv() {
                                Ok(cmd) => self.handle(cmd, &mut touched, open),
                                Err(_) => break,
                            }
                        }
                        for queue in touched.drain(..) {
                            if let Some(st) = self.queues.get_mut(&queue) {
                                st.touched = false;
                            }
                            self.settle(queue, open);
                        }
                    }
                },
                _ = sleep_until_opt(next_timer), if next_timer.is_some() => self.expire(open),
            }
        }
    }

    /// Lingering is off while a flush waits or after the producers are gone.
    fn forced(&self, open: bool) -> bool {
        !open || !self.flushes.is_empty()
    }

    fn handle(&mut self, cmd: Cmd, touched: &mut Vec<MessageQueue>, open: bool) {
        match cmd {
            Cmd::Send { queue, item } => {
                let size = item.wire.encoded_len();
                let item_urgent = item.urgent;
                if !self.queues.contains_key(&queue) {
                    self.queues.insert(queue.clone(), QueueState::default());
                }
                let Some(st) = self.queues.get_mut(&queue) else {
                    return;
                };
                st.pending.push_back(Pending {
                    item,
                    size,
                    since: Instant::now(),
                });
                st.pending_bytes += size;
                st.urgent += usize::from(item_urgent);
                st.queued += 1;
                if !st.touched {
                    st.touched = true;
                    touched.push(queue);
                }
            }
            Cmd::Flush(reply) => {
                let targets: Vec<(MessageQueue, u64)> = self
                    .queues
                    .iter()
                    .filter(|(_, st)| st.queued > st.finished)
                    .map(|(q, st)| (q.clone(), st.queued))
                    .collect();
                if targets.is_empty() {
                    let _ = reply.send(());
                    return;
                }
                self.flushes.push(FlushWaiter { targets, reply });
                self.settle_all(open);
            }
        }
    }

    fn settle_all(&mut self, open: bool) {
        let waiting: Vec<MessageQueue> = self
            .queues
            .iter()
            .filter(|(_, st)| !st.sending && !st.pending.is_empty())
            .map(|(q, _)| q.clone())
            .collect();
        for queue in waiting {
            self.settle(queue, open);
        }
    }

    /// Sends the queue's next batch if it is ready, else arms its linger timer.
    fn settle(&mut self, queue: MessageQueue, open: bool) {
        let forced = self.forced(open);
        let limits = self.limits;
        let Some(st) = self.queues.get_mut(&queue) else {
            return;
        };
        if st.sending || st.pending.is_empty() {
            if !st.sending && !st.timer && st.queued == st.finished {
                // Idle: forget it, so a producer touching many topics does not grow forever.
                self.queues.remove(&queue);
            }
            return;
        }
        let now = Instant::now();
        let oldest = st.pending.front().map_or(now, |p| p.since);
        let ready = forced
            || limits.linger.is_zero()
            || st.urgent > 0
            || st.pending.len() >= limits.max_messages
            || st.pending_bytes >= limits.max_bytes
            || oldest + limits.linger <= now;
        if !ready {
            if !st.timer {
                st.timer = true;
                self.timers
                    .push(Reverse((oldest + limits.linger, queue.clone())));
            }
            return;
        }
        let n = batch_len(st.pending.iter().map(|p| p.size), &limits);
        let batch: Vec<Queued> = st
            .pending
            .drain(..n)
            .map(|p| {
                st.pending_bytes -= p.size;
                st.urgent -= usize::from(p.item.urgent);
                p.item
            })
            .collect();
        st.sending = true;
        self.sending += 1;
        let guard = DoneGuard {
            queue: Some(queue.clone()),
            count: batch.len(),
            done: self.done_tx.clone(),
        };
        tokio::spawn(send_batch(self.sender.clone(), queue, batch, guard));
    }

    fn expire(&mut self, open: bool) {
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, queue))) = self.timers.pop() else {
                break;
            };
            if let Some(st) = self.queues.get_mut(&queue) {
                st.timer = false;
            }
            self.settle(queue, open);
        }
    }

    fn batch_done(&mut self, queue: MessageQueue, count: usize, open: bool) {
        self.sending -= 1;
        if let Some(st) = self.queues.get_mut(&queue) {
            st.sending = false;
            st.finished += count as u64;
        }
        let mut i = 0;
        while i < self.flushes.len() {
            let queues = &self.queues;
            let f = &mut self.flushes[i];
            f.targets
                .retain(|(q, target)| queues.get(q).is_some_and(|st| st.finished < *target));
            if f.targets.is_empty() {
                let _ = self.flushes.swap_remove(i).reply.send(());
            } else {
                i += 1;
            }
        }
        self.settle(queue, open);
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Tells the accumulator that a queue's batch is finished, also if its task is cancelled.
struct DoneGuard {
    queue: Option<MessageQueue>,
    count: usize,
    done: mpsc::UnboundedSender<(MessageQueue, usize)>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if let Some(q) = self.queue.take() {
            let _ = self.done.send((q, self.count));
        }
    }
}

/// Errors the broker gives a whole batch for what one of its messages holds.
fn message_specific(e: &Error) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::MessageTooLarge | ErrorCode::InvalidArgument)
    )
}

async fn send_batch(
    sender: Arc<Sender>,
    queue: MessageQueue,
    batch: Vec<Queued>,
    _done: DoneGuard,
) {
    let reroutable = batch.iter().all(|q| q.reroutable);
    let (wire, waiters): (Vec<v1::Message>, Vec<Waiter>) =
        batch.into_iter().map(|q| (q.wire, q.waiter)).unzip();
    let routing = Routing::Queue {
        queue: queue.clone(),
        reroutable,
    };
    let wire = Arc::new(wire);
    // Traced once each message's outcome is known: a batch refused for one message is sent
    // again message by message, and each of those sends records its own.
    let started = (std::time::Instant::now(), super::sender::now_ms());
    let outcome = sender
        .send_untraced(&queue.topic, None, &wire, &routing, None)
        .await;
    if !matches!(&outcome, Err(e) if wire.len() > 1 && message_specific(e)) {
        sender.trace(&queue.topic, &wire, false, started, &outcome);
    }
    match outcome {
        Ok(receipts) => {
            for (w, r) in waiters.into_iter().zip(receipts) {
                w.settle(Ok(r));
            }
        }
        Err(e) if wire.len() > 1 && message_specific(&e) => {
            // The broker stores a batch whole or not at all: one by one, in order, so only
            // the offending messages fail.
            tracing::debug!(queue = %queue, error = %e, "batch refused; sending its messages one by one");
            for (m, w) in wire.iter().zip(waiters) {
                let one = sender
                    .send_with_retries(
                        &queue.topic,
                        None,
                        &Arc::new(vec![m.clone()]),
                        &routing,
                        None,
                    )
                    .await
                    .and_then(|mut r| {
                        r.pop().ok_or_else(|| {
                            Error::Api(sluice_proto::ApiError::internal(
                                "the broker acknowledged no message",
                            ))
                        })
                    });
                w.settle(one);
            }
        }
        Err(e) => {
            for w in waiters {
                w.settle(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_take_at_least_one_message_then_stop_at_a_limit() {
        let limits = BatchLimits {
            max_messages: 3,
            max_bytes: 100,
            linger: Duration::ZERO,
        };
        assert_eq!(batch_len([], &limits), 0);
        assert_eq!(batch_len([10, 10], &limits), 2);
        assert_eq!(batch_len([10; 5], &limits), 3, "count limit");
        assert_eq!(batch_len([40, 40, 40], &limits), 2, "byte limit");
        assert_eq!(
            batch_len([60, 40, 1], &limits),
            2,
            "exactly at the byte limit fits"
        );
        assert_eq!(
            batch_len([500, 1], &limits),
            1,
            "an oversized message goes alone"
        );
        assert_eq!(batch_len([1, 500], &limits), 1);
    }
}
