//! One long-polling pull from a queue, with the error handling every queue loop needs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::v1::{
    PullRequest, PullResponse, ReadHintReason, StoredMessage, SubscriptionFilter,
};
use sluice_proto::{record, ErrorCode};

use super::tracker::OffsetTracker;
use crate::client::ClientCore;
use crate::error::{Error, Result};
use crate::route::MessageQueue;
use crate::rpc;

pub(crate) struct ReaderCtx {
    pub(crate) core: Arc<ClientCore>,
    pub(crate) group: String,
    pub(crate) poll_timeout: Duration,
    pub(crate) batch: u32,
    /// Every subscribed topic's selector, sent with each pull (a retry topic's messages are
    /// judged by their original topic's).
    pub(crate) filters: Vec<SubscriptionFilter>,
}

pub(crate) enum PullOutcome {
    Messages {
        messages: Vec<StoredMessage>,
        next_offset: u64,
        /// Where to pull next (the answer's read hint): a replica id, `None` for the master.
        next_source: Option<u64>,
    },
    /// The offset was outside the queue's range; continue here.
    Moved(u64),
    Failed(Error),
}

/// Pulls `mq` at `offset` after waiting `delay` (the backoff after failures), from the
/// replica `source` (a read hint; `None`: the master).
pub(crate) async fn fetch(
    ctx: Arc<ReaderCtx>,
    mq: MessageQueue,
    offset: u64,
    delay: Duration,
    source: Option<u64>,
) -> PullOutcome {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match try_fetch(&ctx, &mq, offset, source).await {
        Ok(outcome) => outcome,
        Err(e) => PullOutcome::Failed(e),
    }
}

async fn try_fetch(
    ctx: &ReaderCtx,
    mq: &MessageQueue,
    offset: u64,
    source: Option<u64>,
) -> Result<PullOutcome> {
    let route = ctx.core.routes.get(&mq.topic).await?;
    let Some(broker) = route.broker(&mq.broker_name) else {
        let _ = ctx.core.routes.refresh(&mq.topic, route.generation).await;
        return Err(Error::no_route(
            &mq.topic,
            &format!("broker {} is not in the route", mq.broker_name),
        ));
    };
    let master = broker.master_replica_id();
    let order = broker.read_order(source);
    if order.is_empty() {
        let _ = ctx.core.routes.refresh(&mq.topic, route.generation).await;
        return Err(Error::no_route(
            &mq.topic,
            &format!("broker {} has no replica in the route", mq.broker_name),
        ));
    }
    // The hinted replica first; if it cannot be reached, the master, then any replica, all
    // at the same offset, so switching never skips or repeats anything.
    let mut last = None;
    for (replica, addr) in order {
        let from_master = master.is_none_or(|m| m == replica);
        match pull_from(ctx, mq, addr, offset)
            .await
            .and_then(|r| with_messages(r, addr))
        {
            // Those we wanted could not be reached and this one has nothing: back off
            // rather than bounce between a dead replica and an empty answer.
            Ok(resp) if resp.messages.is_empty() && resp.records.is_empty() && last.is_some() => {
                let _ = ctx.core.routes.refresh(&mq.topic, route.generation).await;
                return Err(last.unwrap_or_else(|| Error::no_route(&mq.topic, "unreachable")));
            }
            Ok(resp) => {
                let next_source = resp
                    .hint
                    .filter(|h| h.replica_id != 0 && Some(h.replica_id) != master)
                    .map(|h| h.replica_id);
                if next_source != source.filter(|&s| Some(s) != master) {
                    let reason = resp
                        .hint
                        .map_or(ReadHintReason::Unspecified, |h| h.reason());
                    tracing::debug!(queue = %mq, from = replica, to = ?next_source,
                        reason = reason.as_str_name(), "read hint moves the queue");
                }
                return Ok(PullOutcome::Messages {
                    messages: resp.messages,
                    next_offset: resp.next_offset,
                    next_source,
                });
            }
            Err(Error::Api(api)) if api.code == ErrorCode::OffsetOutOfRange => {
                // Only the master has every committed message: a slave's range is no reason
                // to move the offset. Ask the master next.
                if !from_master {
                    return Ok(PullOutcome::Messages {
                        messages: Vec::new(),
                        next_offset: offset,
                        next_source: None,
                    });
                }
                return if offset < api.min_offset {
                    Ok(PullOutcome::Moved(api.min_offset))
                } else if offset > api.max_offset {
                    Ok(PullOutcome::Moved(api.max_offset))
                } else {
                    Err(Error::Api(api))
                };
            }
            Err(e @ (Error::Transport { .. } | Error::Timeout { .. })) => {
                tracing::debug!(queue = %mq, replica, error = %e, "replica unreachable; trying the next");
                last = Some(e);
            }
            Err(e) => {
                if e.is_routing() {
                    let _ = ctx.core.routes.refresh(&mq.topic, route.generation).await;
                }
                return Err(e);
            }
        }
    }
    let _ = ctx.core.routes.refresh(&mq.topic, route.generation).await;
    Err(last.unwrap_or_else(|| Error::no_route(&mq.topic, "no replica answered")))
}

/// A pull answer with its stored records (asked for: the broker sends them as read, without
/// encoding each message) parsed into `messages`. A record that fails its CRC or structure
/// check fails the answer like a broken connection: the next replica is tried.
fn with_messages(mut resp: PullResponse, addr: &str) -> Result<PullResponse> {
    let records = std::mem::take(&mut resp.records);
    resp.messages.reserve(records.len());
    for r in &records {
        let m = record::message_of(r).map_err(|why| Error::Transport {
            addr: addr.to_string(),
            message: format!("pull answer holds a bad record: {why}"),
        })?;
        resp.messages.push(m);
    }
    Ok(resp)
}

/// One long-polling pull from the replica at `addr`.
async fn pull_from(
    ctx: &ReaderCtx,
    mq: &MessageQueue,
    addr: &str,
    offset: u64,
) -> Result<PullResponse> {
    let mut client = ctx.core.broker(addr)?;
    // The broker may hold the call for the poll timeout; allow a normal request time on top.
    let timeout = ctx.poll_timeout + ctx.core.timeout();
    let req = rpc::request(
        PullRequest {
            group: ctx.group.clone(),
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            offset,
            max_messages: ctx.batch,
            max_bytes: 0,
            poll_timeout_ms: u32::try_from(ctx.poll_timeout.as_millis()).unwrap_or(u32::MAX),
            raw_records: true,
            record_format: record::RECORD_FORMAT,
            filters: ctx.filters.clone(),
        },
        timeout,
    );
    rpc::call(addr, timeout, client.pull(req)).await
}

/// One queue loop's pull state: consecutive failures (for the backoff) and the replica a read
/// hint named for the next pull (`None`: the master).
pub(crate) struct QueueReader {
    mq: MessageQueue,
    failures: u32,
    source: Option<u64>,
}

impl QueueReader {
    pub(crate) fn new(mq: MessageQueue) -> Self {
        QueueReader {
            mq,
            failures: 0,
            source: None,
        }
    }

    /// The next pull of this queue at `offset`, after the backoff its failures call for.
    pub(crate) fn pull(
        &self,
        ctx: &Arc<ReaderCtx>,
        offset: u64,
    ) -> futures::future::BoxFuture<'static, PullOutcome> {
        use futures::FutureExt;
        fetch(
            ctx.clone(),
            self.mq.clone(),
            offset,
            pull_backoff(self.failures),
            self.source,
        )
        .boxed()
    }

    /// Applies a pull's outcome to `tracker`; returns the messages to deliver.
    pub(crate) fn apply(
        &mut self,
        tracker: &mut OffsetTracker,
        outcome: PullOutcome,
    ) -> Vec<StoredMessage> {
        apply_outcome(
            &self.mq,
            tracker,
            &mut self.failures,
            &mut self.source,
            outcome,
        )
    }
}

/// Applies a pull's outcome to a queue's tracker and returns the messages to deliver.
/// `failures` counts consecutive failed pulls (for the backoff); `source` is the replica to
/// pull from next (`None`: the master).
fn apply_outcome(
    mq: &MessageQueue,
    tracker: &mut OffsetTracker,
    failures: &mut u32,
    source: &mut Option<u64>,
    outcome: PullOutcome,
) -> Vec<StoredMessage> {
    match outcome {
        PullOutcome::Messages {
            messages,
            next_offset,
            next_source,
        } => {
            if *failures > 0 {
                tracing::info!(queue = %mq, "pulling works again");
            }
            *failures = 0;
            *source = next_source;
            let from = tracker.next();
            let fresh: Vec<StoredMessage> = messages
                .into_iter()
                .filter(|m| m.queue_offset >= from)
                .map(|mut m| {
                    // The broker's bookkeeping of idempotent batches, not the sender's.
                    m.properties.remove(sluice_proto::props::PRODUCER_SEQUENCE);
                    m
                })
                .collect();
            tracker.pulled(fresh.iter().map(|m| m.queue_offset), next_offset);
            fresh
        }
        PullOutcome::Moved(offset) => {
            *failures = 0;
            *source = None;
            tracing::warn!(queue = %mq, from = tracker.next(), to = offset,
                "offset out of the queue's range; moving");
            tracker.reset(offset);
            Vec::new()
        }
        PullOutcome::Failed(e) => {
            *failures += 1;
            // Start over from the master.
            *source = None;
            if *failures == 1 {
                tracing::warn!(queue = %mq, error = %e, "pull failed; retrying with backoff");
            } else {
                tracing::debug!(queue = %mq, failures = *failures, error = %e, "pull failed again");
            }
            Vec::new()
        }
    }
}

/// Pause before the next pull after `failures` consecutive failures: 100 ms doubling to 5 s.
pub(crate) fn pull_backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let ms = 100u64.saturating_mul(1u64 << (failures - 1).min(6));
    Duration::from_millis(ms.min(5_000))
}

/// Doubling backoff between `min` and `max` for the `attempt`-th failure (1-based).
pub(crate) fn doubling(attempt: u32, min: Duration, max: Duration) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    min.saturating_mul(factor).min(max)
}

/// Awaits the future in `slot`, or never if there is none (a disabled `select!` branch).
pub(crate) async fn maybe<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoffs_grow_and_are_capped() {
        assert_eq!(pull_backoff(0), Duration::ZERO);
        assert_eq!(pull_backoff(1), Duration::from_millis(100));
        assert_eq!(pull_backoff(3), Duration::from_millis(400));
        assert_eq!(pull_backoff(60), Duration::from_secs(5));
        let (lo, hi) = (Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(doubling(1, lo, hi), lo);
        assert_eq!(doubling(3, lo, hi), Duration::from_secs(4));
        assert_eq!(doubling(100, lo, hi), hi);
    }

    #[test]
    fn a_bad_record_fails_the_answer_as_a_transport_error() {
        let resp = PullResponse {
            records: vec![bytes::Bytes::from_static(&[0u8; 120])],
            ..Default::default()
        };
        match with_messages(resp, "b:1") {
            Err(Error::Transport { addr, message }) => {
                assert_eq!(addr, "b:1");
                assert!(message.contains("bad record: bad magic"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Decoded messages (a broker that does not send records) pass through.
        let resp = PullResponse {
            messages: vec![StoredMessage::default()],
            ..Default::default()
        };
        assert_eq!(with_messages(resp, "b:1").unwrap().messages.len(), 1);
    }
}
