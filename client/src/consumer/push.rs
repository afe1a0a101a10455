//! The push consumer: queue loops pull and hand each message to the application's handler.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use sluice_proto::v1::StoredMessage;
use tokio::sync::{mpsc, watch, AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::coordinator::{self, GroupHandle, GroupSettings, Lease, QueueWorkers};
use super::fetch::{doubling, maybe, PullOutcome, QueueReader, ReaderCtx};
use super::sendback::{send_back, RetryLater, SendBackOutcome};
use super::tracker::OffsetTracker;
use super::{new_client_id, orderly, ConsumerBuilder, MessageHandler, OrderlyFailure};
use crate::client::ClientCore;
use crate::error::Result;
use crate::message::ReceivedMessage;
use crate::route::MessageQueue;
use crate::trace::{ConsumeResult, ConsumeTracer};

/// Calls a handler for every message of its group's share of the subscribed topics.
/// Build one with [`ConsumerBuilder::start_push`].
pub struct PushConsumer {
    group: GroupHandle,
    client_id: String,
    trace: Option<ConsumeTracer>,
}

impl PushConsumer {
    pub fn builder(config: crate::ClientConfig, group: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder::new(config, group)
    }

    pub(crate) async fn start<H: MessageHandler>(b: ConsumerBuilder, handler: H) -> Result<Self> {
        b.validate()?;
        let core = ClientCore::new(b.config.clone())?;
        let client_id = new_client_id();
        let trace = b.tracer(&client_id)?;
        let shared = Arc::new(Shared {
            trace: trace.clone(),
            reader: Arc::new(ReaderCtx {
                core: core.clone(),
                group: b.group.clone(),
                poll_timeout: b.poll_timeout,
                batch: b.pull_batch,
                filters: b.selectors.iter().map(|(t, s)| s.to_wire(t)).collect(),
            }),
            handler: Arc::new(handler),
            permits: Arc::new(Semaphore::new(b.concurrency)),
            backoff: b.retry_backoff,
            drain_timeout: b.drain_timeout,
            max_unfinished: b.max_unfinished_per_queue,
            orderly: b.orderly,
        });
        let settings = GroupSettings {
            topics: b.topics_with_retry(),
            group: b.group,
            client_id: client_id.clone(),
            start: b.start,
            heartbeat_interval: b.heartbeat_interval,
            rebalance_interval: b.rebalance_interval,
            commit_interval: b.commit_interval,
            drain_timeout: b.drain_timeout,
            orderly: b.orderly.is_some(),
        };
        let group = coordinator::start(core, settings, Workers(shared)).await?;
        Ok(PushConsumer {
            group,
            client_id,
            trace,
        })
    }

    /// This consumer's id in its group.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The queues this consumer currently owns.
    pub fn assignment(&self) -> Vec<MessageQueue> {
        self.group.assignment()
    }

    /// Sends the committable offsets to the brokers now instead of at the next commit tick.
    pub async fn commit(&self) -> Result<()> {
        self.group.commit_now().await
    }

    /// What the trace recorder did, when built with [`ConsumerBuilder::trace`].
    pub fn trace_stats(&self) -> Option<crate::trace::TraceStats> {
        self.trace.as_ref().map(|t| t.tracer.stats())
    }

    /// Stops pulling, waits (bounded) for running handlers, commits, and leaves the group.
    pub async fn shutdown(mut self) {
        self.group.shutdown().await;
        if let Some(t) = &self.trace {
            t.tracer.flush(crate::trace::FLUSH_TIMEOUT).await;
        }
    }
}

pub(super) struct Shared {
    pub(super) reader: Arc<ReaderCtx>,
    pub(super) handler: Arc<dyn MessageHandler>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) backoff: (Duration, Duration),
    pub(super) drain_timeout: Duration,
    max_unfinished: usize,
    orderly: Option<OrderlyFailure>,
    pub(super) trace: Option<ConsumeTracer>,
}

struct Workers(Arc<Shared>);

impl QueueWorkers for Workers {
    fn spawn(&self, lease: Lease) -> JoinHandle<()> {
        match self.0.orderly {
            Some(on_failure) => tokio::spawn(orderly::run_queue(self.0.clone(), lease, on_failure)),
            None => tokio::spawn(run_queue(self.0.clone(), lease)),
        }
    }
}

enum HandlerDone {
    Finished(u64),
    /// Stopped while waiting to retry: the message stays unfinished.
    Abandoned,
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
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<HandlerDone>();
    let mut pending: VecDeque<StoredMessage> = VecDeque::new();
    let mut pull: Option<BoxFuture<'static, PullOutcome>> = None;
    let mut acquire: Option<BoxFuture<'static, Result<OwnedSemaphorePermit, AcquireError>>> = None;
    let mut reader = QueueReader::new(mq.clone());
    let mut running = 0usize;
    loop {
        if pull.is_none() && pending.is_empty() && tracker.in_flight() < shared.max_unfinished {
            pull = Some(reader.pull(&shared.reader, tracker.next()));
        }
        // One waiting acquire kept across iterations keeps this queue's place in the
        // semaphore's FIFO, so busy queues cannot starve it.
        if acquire.is_none() && !pending.is_empty() {
            acquire = Some(shared.permits.clone().acquire_owned().boxed());
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some(done) = done_rx.recv() => {
                running -= 1;
                if let HandlerDone::Finished(offset) = done {
                    tracker.complete(offset);
                }
            }
            permit = maybe(&mut acquire) => {
                acquire = None;
                let (Ok(permit), Some(msg)) = (permit, pending.pop_front()) else {
                    break;
                };
                running += 1;
                spawn_handler(&shared, &mq, msg, permit, done_tx.clone(), stop.clone());
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
    drop(acquire);
    // Let running handlers finish (bounded) so their messages count as done.
    let deadline = tokio::time::Instant::now() + shared.drain_timeout;
    while running > 0 {
        tokio::select! {
            Some(done) = done_rx.recv() => {
                running -= 1;
                if let HandlerDone::Finished(offset) = done {
                    tracker.complete(offset);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(queue = %mq, running, "handlers still running after the drain timeout; their messages will be delivered again");
                break;
            }
        }
    }
    progress.send_replace(tracker.commit_offset());
}

fn spawn_handler(
    shared: &Arc<Shared>,
    mq: &MessageQueue,
    msg: StoredMessage,
    permit: OwnedSemaphorePermit,
    done: mpsc::UnboundedSender<HandlerDone>,
    mut stop: watch::Receiver<bool>,
) {
    let shared = shared.clone();
    let mq = mq.clone();
    tokio::spawn(async move {
        let offset = msg.queue_offset;
        let mut permit = Some(permit);
        let mut attempt = 0u32;
        loop {
            let mut message = msg.clone();
            message.reconsume_times = message.reconsume_times.saturating_add(attempt);
            let delivered = ReceivedMessage {
                broker_name: mq.broker_name.clone(),
                message,
            };
            let handler = shared.handler.clone();
            let traced = shared.trace.as_ref().map(|t| {
                t.delivered(&delivered);
                (t, delivered.clone(), Instant::now())
            });
            // A panicking handler must not leave its offset unfinished forever.
            let result = AssertUnwindSafe(async move { handler.handle(delivered).await })
                .catch_unwind()
                .await;
            let traced = traced.map(|(t, m, started)| (t, m, started.elapsed()));
            let finished = |result, error: &str| {
                if let Some((t, m, ran)) = &traced {
                    t.consumed(m, result, Some(*ran), error);
                }
            };
            let (error, delay) = match result {
                Ok(Ok(())) => {
                    finished(ConsumeResult::Ok, "");
                    drop(permit);
                    let _ = done.send(HandlerDone::Finished(offset));
                    return;
                }
                Ok(Err(e)) => (
                    e.to_string(),
                    e.downcast_ref::<RetryLater>().map(|r| r.delay),
                ),
                Err(_) => ("handler panicked".to_string(), None),
            };
            // Back to the broker by reference; the offset is finished once it has it.
            let core = &shared.reader.core;
            let group = &shared.reader.group;
            match send_back(core, group, &mq.broker_name, &msg, delay, &error).await {
                Ok(outcome) => {
                    finished(
                        match outcome {
                            SendBackOutcome::DeadLetter { .. } => ConsumeResult::DeadLetter,
                            SendBackOutcome::Retry { .. } => ConsumeResult::RetryLater,
                        },
                        &error,
                    );
                    tracing::info!(queue = %mq, offset, %error, ?outcome, "handler failed; message sent back");
                    drop(permit);
                    let _ = done.send(HandlerDone::Finished(offset));
                    return;
                }
                Err(e) => {
                    finished(ConsumeResult::RetryHere, &error);
                    tracing::warn!(queue = %mq, offset, error = %e, "send-back failed; retrying here");
                }
            }
            attempt += 1;
            // Free the slot while waiting, so other messages keep flowing.
            drop(permit.take());
            let delay = doubling(attempt, shared.backoff.0, shared.backoff.1);
            tracing::warn!(queue = %mq, offset, attempt, %error, ?delay, "handler failed; the message will be delivered again");
            let stopped = tokio::select! {
                _ = tokio::time::sleep(delay) => *stop.borrow(),
                _ = stop.changed() => true,
            };
            let next = if stopped {
                None
            } else {
                shared.permits.clone().acquire_owned().await.ok()
            };
            match next {
                Some(p) => permit = Some(p),
                None => {
                    let _ = done.send(HandlerDone::Abandoned);
                    return;
                }
            }
        }
    });
}
