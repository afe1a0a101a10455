//! The push consumer's queue loop for ordered consumption: one message at a time, in queue
//! order, only while this consumer holds the queue's lock. A failing message is retried in
//! place (the queue waits), up to the group's `max_retries`; then it goes to the dead-letter
//! topic or, if the consumer asked, keeps being retried.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use sluice_proto::v1::{GetGroupConfigRequest, StoredMessage};
use tokio::sync::{watch, OnceCell};
use tokio::time::Instant;

use super::coordinator::Lease;
use super::fetch::{doubling, maybe, PullOutcome, QueueReader};
use super::push::Shared;
use super::sendback::{dead_letter, SendBackOutcome};
use super::tracker::OffsetTracker;
use super::OrderlyFailure;
use crate::message::ReceivedMessage;
use crate::route::MessageQueue;
use crate::rpc;
use crate::trace::ConsumeResult;

/// Messages pulled ahead of the one being processed.
const PREFETCH: usize = 256;
/// The broker's default, used when the group's policy cannot be read.
const DEFAULT_MAX_RETRIES: u32 = 16;

enum Handled {
    /// Processed, or dead-lettered: the offset is finished.
    Done(u64),
    /// Stopped before it was finished: the next owner gets it again.
    Stopped,
}

/// What every message of one queue shares.
struct QueueCtx {
    shared: Arc<Shared>,
    mq: MessageQueue,
    on_failure: OrderlyFailure,
    /// The group's max retries on this queue's broker group, read at the first failure.
    max_retries: OnceCell<u32>,
}

pub(super) async fn run_queue(shared: Arc<Shared>, lease: Lease, on_failure: OrderlyFailure) {
    let Lease {
        mq,
        start_offset,
        mut stop,
        progress,
        held_until,
    } = lease;
    let Some(held) = held_until else {
        tracing::error!(queue = %mq, "ordered queue started without a lock; not consuming it");
        return;
    };
    let ctx = Arc::new(QueueCtx {
        shared,
        mq: mq.clone(),
        on_failure,
        max_retries: OnceCell::new(),
    });
    let mut tracker = OffsetTracker::new(start_offset);
    let mut pending: VecDeque<StoredMessage> = VecDeque::new();
    let mut pull: Option<BoxFuture<'static, PullOutcome>> = None;
    let mut work: Option<BoxFuture<'static, Handled>> = None;
    let mut reader = QueueReader::new(mq.clone());
    loop {
        if pull.is_none() && pending.len() < PREFETCH {
            pull = Some(reader.pull(&ctx.shared.reader, tracker.next()));
        }
        if work.is_none() {
            if let Some(msg) = pending.pop_front() {
                work = Some(process(ctx.clone(), msg, stop.clone(), held.clone()).boxed());
            }
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            handled = maybe(&mut work) => {
                work = None;
                if let Handled::Done(offset) = handled {
                    tracker.complete(offset);
                }
            }
            outcome = maybe(&mut pull) => {
                pull = None;
                let before = tracker.next();
                let fresh = reader.apply(&mut tracker, outcome);
                if tracker.next() < before {
                    // Moved back (the queue was truncated): what was fetched beyond is pulled
                    // again, in order.
                    let next = tracker.next();
                    pending.retain(|m| m.queue_offset < next);
                }
                pending.extend(fresh);
            }
        }
        let commit = tracker.commit_offset();
        progress.send_if_modified(|p| std::mem::replace(p, commit) != commit);
    }
    drop(pull);
    // The message being processed may finish within the drain timeout (a handler still running
    // then is dropped, its message unfinished); one waiting for its lock, a permit or a retry
    // stops at once, unfinished.
    if let Some(w) = work {
        if let Ok(Handled::Done(offset)) = tokio::time::timeout(ctx.shared_drain(), w).await {
            tracker.complete(offset);
        }
    }
    progress.send_replace(tracker.commit_offset());
}

impl QueueCtx {
    fn shared_drain(&self) -> std::time::Duration {
        self.shared.drain_timeout
    }

    async fn max_retries(&self) -> u32 {
        *self
            .max_retries
            .get_or_init(|| async {
                match self.read_max_retries().await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(queue = %self.mq, error = %e, "cannot read the group's retry policy; using {DEFAULT_MAX_RETRIES} retries");
                        DEFAULT_MAX_RETRIES
                    }
                }
            })
            .await
    }

    async fn read_max_retries(&self) -> crate::error::Result<u32> {
        let core = &self.shared.reader.core;
        let route = core.routes.get(&self.mq.topic).await?;
        let addr = route
            .master_address(&self.mq.broker_name)
            .ok_or_else(|| crate::error::Error::no_route(&self.mq.topic, "no master"))?
            .to_string();
        let mut client = core.broker(&addr)?;
        let t = core.timeout();
        let req = GetGroupConfigRequest {
            group: self.shared.reader.group.clone(),
        };
        let cfg = rpc::call(&addr, t, client.get_group_config(rpc::request(req, t))).await?;
        Ok(cfg.max_retries)
    }
}

/// Waits until this consumer may trust its lock; false if told to stop first.
async fn wait_for_lock(
    held: &mut watch::Receiver<Instant>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        if *stop.borrow() {
            return false;
        }
        if Instant::now() < *held.borrow_and_update() {
            return true;
        }
        tokio::select! {
            r = held.changed() => if r.is_err() { return false },
            _ = stop.changed() => return false,
        }
    }
}

/// Sleeps `d` unless told to stop first (then false).
async fn pause(d: std::time::Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

async fn process(
    ctx: Arc<QueueCtx>,
    msg: StoredMessage,
    mut stop: watch::Receiver<bool>,
    mut held: watch::Receiver<Instant>,
) -> Handled {
    let offset = msg.queue_offset;
    let (min, max) = ctx.shared.backoff;
    let mut failures = 0u32;
    loop {
        if !wait_for_lock(&mut held, &mut stop).await {
            return Handled::Stopped;
        }
        let permit = tokio::select! {
            p = ctx.shared.permits.clone().acquire_owned() => p,
            _ = stop.changed() => return Handled::Stopped,
        };
        let Ok(permit) = permit else {
            return Handled::Stopped;
        };
        // Waiting for the permit may have outlasted the lock.
        if !wait_for_lock(&mut held, &mut stop).await {
            return Handled::Stopped;
        }
        let mut message = msg.clone();
        message.reconsume_times = message.reconsume_times.saturating_add(failures);
        let delivered = ReceivedMessage {
            broker_name: ctx.mq.broker_name.clone(),
            message,
        };
        let handler = ctx.shared.handler.clone();
        let traced = ctx.shared.trace.as_ref().map(|t| {
            t.delivered(&delivered);
            (t, delivered.clone(), std::time::Instant::now())
        });
        let result = AssertUnwindSafe(async move { handler.handle(delivered).await })
            .catch_unwind()
            .await;
        let traced = traced.map(|(t, m, started)| (t, m, started.elapsed()));
        drop(permit);
        let finished = |result, error: &str| {
            if let Some((t, m, ran)) = &traced {
                t.consumed(m, result, Some(*ran), error);
            }
        };
        let error = match result {
            Ok(Ok(())) => {
                finished(ConsumeResult::Ok, "");
                return Handled::Done(offset);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "handler panicked".to_string(),
        };
        failures += 1;
        let max_retries = ctx.max_retries().await;
        if failures > max_retries && ctx.on_failure == OrderlyFailure::DeadLetter {
            let handled = to_dead_letters(&ctx, &msg, failures, &error, &mut stop).await;
            // Stopped before it landed: it is delivered again, not dead-lettered.
            if matches!(handled, Handled::Done(_)) {
                finished(ConsumeResult::DeadLetter, &error);
            }
            return handled;
        }
        finished(ConsumeResult::RetryHere, &error);
        let delay = doubling(failures, min, max);
        tracing::warn!(queue = %ctx.mq, offset, failures, %error, ?delay,
            "handler failed; retrying in place (the queue waits)");
        if !pause(delay, &mut stop).await {
            return Handled::Stopped;
        }
    }
}

/// Dead-letters `msg`, retrying the send until it lands or the queue stops.
async fn to_dead_letters(
    ctx: &QueueCtx,
    msg: &StoredMessage,
    attempts: u32,
    error: &str,
    stop: &mut watch::Receiver<bool>,
) -> Handled {
    let core = &ctx.shared.reader.core;
    let group = &ctx.shared.reader.group;
    let mut tries = 0u32;
    loop {
        match dead_letter(core, group, &ctx.mq.broker_name, msg, attempts, error).await {
            // A broker that does not know the flag would schedule a retry on the group's retry
            // topic, which ordered consumers do not read: not done.
            Ok(outcome @ SendBackOutcome::Retry { .. }) => {
                tries += 1;
                tracing::error!(queue = %ctx.mq, offset = msg.queue_offset, ?outcome,
                    "the broker did not dead-letter the message (too old a version?); the queue waits");
                let (min, max) = ctx.shared.backoff;
                if !pause(doubling(tries, min, max), stop).await {
                    return Handled::Stopped;
                }
            }
            Ok(outcome) => {
                tracing::warn!(queue = %ctx.mq, offset = msg.queue_offset, attempts, %error, ?outcome,
                    "retries spent; message dead-lettered and the queue moves on");
                return Handled::Done(msg.queue_offset);
            }
            Err(e) => {
                tries += 1;
                tracing::warn!(queue = %ctx.mq, offset = msg.queue_offset, error = %e, "dead-lettering failed; trying again");
                let (min, max) = ctx.shared.backoff;
                if !pause(doubling(tries, min, max), stop).await {
                    return Handled::Stopped;
                }
            }
        }
    }
}
