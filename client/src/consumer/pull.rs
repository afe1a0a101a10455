//! The pull consumer: queue loops fill a buffer, the application takes messages with `poll`
//! and marks them finished with `commit` (or the next `poll`, with auto-commit).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use sluice_proto::v1::StoredMessage;
use tokio::sync::{mpsc, oneshot, AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::coordinator::{self, GroupHandle, GroupSettings, Lease, QueueWorkers};
use super::fetch::{maybe, PullOutcome, QueueReader, ReaderCtx};
use super::sendback::{send_back, SendBackOutcome};
use super::tracker::OffsetTracker;
use super::{new_client_id, ConsumerBuilder};
use crate::client::ClientCore;
use crate::error::{Error, Result};
use crate::message::ReceivedMessage;
use crate::route::MessageQueue;
use crate::trace::{ConsumeResult, ConsumeTracer};

enum Ack {
    /// These offsets (of one queue) are finished.
    Done(Vec<u64>),
    /// Answered once every ack sent before it has been applied.
    Barrier(oneshot::Sender<()>),
}

/// Messages of one pull, handed from a queue's loop to `poll` in one piece.
struct Delivery {
    messages: std::vec::IntoIter<ReceivedMessage>,
    /// Back to the queue's loop; closed once the queue was taken away.
    acks: mpsc::UnboundedSender<Ack>,
    /// One buffer slot per message not yet taken by `poll`.
    slots: OwnedSemaphorePermit,
}

/// The application pulls: [`poll`](Self::poll) returns messages, [`commit`](Self::commit)
/// marks every polled message finished and sends the offsets to the brokers.
///
/// When a queue moves to another group member, its messages that were polled but not committed
/// are delivered again by the new owner (at-least-once).
pub struct PullConsumer {
    group: GroupHandle,
    client_id: String,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    /// The delivery `poll` is taking messages from.
    current: Option<Delivery>,
    /// Offsets handed out and not acked yet, grouped by queue loop.
    unacked: Vec<(mpsc::UnboundedSender<Ack>, Vec<u64>)>,
    /// Queue loops sent acks since the last commit: a commit waits until each applied them,
    /// including acks an earlier `poll` sent (auto-commit acks a poll's messages at the next).
    acked: Vec<mpsc::UnboundedSender<Ack>>,
    auto_commit: bool,
    barrier_timeout: Duration,
    /// For send-backs (`nack`).
    core: Arc<ClientCore>,
    trace: Option<ConsumeTracer>,
    group_name: String,
}

impl PullConsumer {
    pub fn builder(config: crate::ClientConfig, group: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder::new(config, group)
    }

    pub(crate) async fn start(b: ConsumerBuilder) -> Result<Self> {
        b.validate()?;
        let core = ClientCore::new(b.config.clone())?;
        let client_id = new_client_id();
        let trace = b.tracer(&client_id)?;
        // The channel carries whole pulls; the semaphore bounds the messages they hold.
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            reader: Arc::new(ReaderCtx {
                core: core.clone(),
                group: b.group.clone(),
                poll_timeout: b.poll_timeout,
                batch: b.pull_batch,
                filters: b.selectors.iter().map(|(t, s)| s.to_wire(t)).collect(),
            }),
            deliveries: tx,
            slots: Arc::new(Semaphore::new(b.buffer)),
            buffer: b.buffer,
            max_unfinished: b.max_unfinished_per_queue,
        });
        let barrier_timeout = core.timeout();
        let group_name = b.group.clone();
        let send_core = core.clone();
        let settings = GroupSettings {
            topics: b.topics_with_retry(),
            group: b.group,
            client_id: client_id.clone(),
            start: b.start,
            heartbeat_interval: b.heartbeat_interval,
            rebalance_interval: b.rebalance_interval,
            commit_interval: b.commit_interval,
            drain_timeout: b.drain_timeout,
            orderly: false,
        };
        let group = coordinator::start(core, settings, Workers(shared)).await?;
        Ok(PullConsumer {
            group,
            client_id,
            deliveries: rx,
            current: None,
            unacked: Vec::new(),
            acked: Vec::new(),
            core: send_core,
            group_name,
            auto_commit: b.auto_commit,
            barrier_timeout,
            trace,
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn assignment(&self) -> Vec<MessageQueue> {
        self.group.assignment()
    }

    /// Up to `max` messages, waiting at most `timeout` for the first one. With auto-commit, the
    /// messages of earlier polls count as finished from now on.
    pub async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<ReceivedMessage>> {
        if self.auto_commit {
            self.ack_polled();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < max {
            if let Some(d) = &mut self.current {
                // Fetched for a queue this consumer no longer owns: its new owner delivers it.
                if !d.acks.is_closed() {
                    let start = out.len();
                    out.extend(d.messages.by_ref().take(max - start));
                    let taken = out.len() - start;
                    // Hand the buffer slots of the taken messages back to the queue loops.
                    drop(d.slots.split(taken));
                    let offsets = out[start..].iter().map(|m| m.message.queue_offset);
                    match self.unacked.last_mut() {
                        Some((tx, list)) if tx.same_channel(&d.acks) => list.extend(offsets),
                        _ => self.unacked.push((d.acks.clone(), offsets.collect())),
                    }
                    if d.messages.len() > 0 {
                        break;
                    }
                }
                self.current = None;
                continue;
            }
            // `recv` is cancel-safe: nothing is lost if the caller drops this future.
            let next = if out.is_empty() {
                match tokio::time::timeout_at(deadline, self.deliveries.recv()).await {
                    Ok(Some(d)) => d,
                    Ok(None) => return Err(Error::Shutdown("consumer")),
                    Err(_) => break,
                }
            } else {
                match self.deliveries.try_recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            };
            self.current = Some(next);
        }
        if let Some(t) = &self.trace {
            for m in &out {
                t.delivered(m);
            }
        }
        Ok(out)
    }

    /// Sends a polled message back for another attempt after `delay` (the group's backoff when
    /// `None`), or to the group's dead-letter topic once its retries are spent. Call it before
    /// the message is committed (with auto-commit: before the next `poll`); if it fails, the
    /// message is not sent back: call it again or leave the message uncommitted.
    pub async fn nack(
        &self,
        message: &ReceivedMessage,
        delay: Option<Duration>,
        reason: &str,
    ) -> Result<SendBackOutcome> {
        let outcome = send_back(
            &self.core,
            &self.group_name,
            &message.broker_name,
            &message.message,
            delay,
            reason,
        )
        .await;
        if let (Some(t), Ok(o)) = (&self.trace, &outcome) {
            let result = match o {
                SendBackOutcome::DeadLetter { .. } => ConsumeResult::DeadLetter,
                SendBackOutcome::Retry { .. } => ConsumeResult::RetryLater,
            };
            t.consumed(message, result, None, reason);
        }
        outcome
    }

    /// What the trace recorder did, when built with [`ConsumerBuilder::trace`].
    pub fn trace_stats(&self) -> Option<crate::trace::TraceStats> {
        self.trace.as_ref().map(|t| t.tracer.stats())
    }

    /// Marks every polled message finished and sends the offsets to the brokers.
    pub async fn commit(&mut self) -> Result<()> {
        self.ack_polled();
        // Make sure the queue loops applied the acks before their offsets are read.
        let waits = std::mem::take(&mut self.acked).into_iter().filter_map(|q| {
            let (tx, rx) = oneshot::channel();
            q.send(Ack::Barrier(tx)).ok().map(|_| rx)
        });
        let all = futures::future::join_all(waits);
        if tokio::time::timeout(self.barrier_timeout, all)
            .await
            .is_err()
        {
            tracing::warn!("queue loops were slow to apply acks; committing what they have");
        }
        self.group.commit_now().await
    }

    /// Commits (with auto-commit, also the last poll's messages), gives up every queue and
    /// leaves the group.
    pub async fn shutdown(mut self) {
        if self.auto_commit {
            if let Err(e) = self.commit().await {
                tracing::warn!(error = %e, "final commit failed");
            }
        }
        self.group.shutdown().await;
        if let Some(t) = &self.trace {
            t.tracer.flush(crate::trace::FLUSH_TIMEOUT).await;
        }
    }

    /// Sends the acks of everything polled, and remembers the queue loops they went to.
    fn ack_polled(&mut self) {
        // Loops that ended (their queue moved) need no barrier.
        self.acked.retain(|q| !q.is_closed());
        for (tx, offsets) in self.unacked.drain(..) {
            // A closed channel means the queue moved on; its new owner re-delivers.
            if tx.send(Ack::Done(offsets)).is_ok()
                && !self.acked.iter().any(|q| q.same_channel(&tx))
            {
                self.acked.push(tx);
            }
        }
    }
}

struct Shared {
    reader: Arc<ReaderCtx>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    /// Buffer slots, one per message fetched ahead of `poll`.
    slots: Arc<Semaphore>,
    buffer: usize,
    max_unfinished: usize,
}

struct Workers(Arc<Shared>);

impl QueueWorkers for Workers {
    fn spawn(&self, lease: Lease) -> JoinHandle<()> {
        tokio::spawn(run_queue(self.0.clone(), lease))
    }
}

fn apply_ack(tracker: &mut OffsetTracker, ack: Ack) {
    match ack {
        Ack::Done(offsets) => {
            for offset in offsets {
                tracker.complete(offset);
            }
        }
        Ack::Barrier(reply) => {
            let _ = reply.send(());
        }
    }
}

async fn run_queue(shared: Arc<Shared>, lease: Lease) {
    let Lease {
        mq,
        start_offset,
        mut stop,
        progress,
        held_until: _,
    } = lease;
    let mut tracker = OffsetTracker::new(start_offset);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Ack>();
    let mut pending: VecDeque<StoredMessage> = VecDeque::new();
    let mut pull: Option<BoxFuture<'static, PullOutcome>> = None;
    let mut reserve: Option<BoxFuture<'static, Result<OwnedSemaphorePermit, AcquireError>>> = None;
    let mut reader = QueueReader::new(mq.clone());
    loop {
        if pull.is_none() && pending.is_empty() && tracker.in_flight() < shared.max_unfinished {
            pull = Some(reader.pull(&shared.reader, tracker.next()));
        }
        // Kept across iterations so the queue keeps its place among those waiting for room.
        if reserve.is_none() && !pending.is_empty() {
            let n = u32::try_from(pending.len().min(shared.buffer)).unwrap_or(u32::MAX);
            reserve = Some(shared.slots.clone().acquire_many_owned(n).boxed());
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some(ack) = ack_rx.recv() => apply_ack(&mut tracker, ack),
            slots = maybe(&mut reserve) => {
                reserve = None;
                let Ok(slots) = slots else {
                    break;
                };
                let n = slots.num_permits().min(pending.len());
                let messages: Vec<ReceivedMessage> = pending
                    .drain(..n)
                    .map(|message| ReceivedMessage {
                        broker_name: mq.broker_name.clone(),
                        message,
                    })
                    .collect();
                let delivery = Delivery {
                    messages: messages.into_iter(),
                    acks: ack_tx.clone(),
                    slots,
                };
                if shared.deliveries.send(delivery).is_err() {
                    break;
                }
            }
            outcome = maybe(&mut pull) => {
                pull = None;
                pending.extend(reader.apply(&mut tracker, outcome));
            }
        }
        let commit = tracker.commit_offset();
        progress.send_if_modified(|p| std::mem::replace(p, commit) != commit);
    }
    drop(pull);
    drop(reserve);
    // Acks the application already sent still count.
    while let Ok(ack) = ack_rx.try_recv() {
        apply_ack(&mut tracker, ack);
    }
    // Closing the channel tells `poll` to skip this queue's buffered messages.
    drop(ack_rx);
    progress.send_replace(tracker.commit_offset());
}
