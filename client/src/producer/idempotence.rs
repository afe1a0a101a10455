//! The producer's side of idempotent sends: a producer id per broker group (asked for with
//! `InitProducer` on first use) and, per queue, the epoch and the next sequence.
//!
//! A batch is bound to one queue and one sequence before its first attempt; while its outcome
//! is unknown (a timeout, a lost connection, a master change) every retry goes to that queue
//! with that sequence, so the broker answers a batch stored already with its first receipts
//! instead of storing it twice. One batch per queue is on the wire at a time (the queue's lock
//! is held from binding to outcome): the broker sees each queue's sequences in order.
//!
//! Re-sync: a batch refused for its sequence (a gap, a stale epoch, an unknown producer id) was
//! not stored, so it is numbered again (epoch + 1 from 0, or a new producer id) and resent. A
//! batch that failed for good with an unknown outcome leaves its queue to start the next batch
//! at a new epoch: a late copy of the failed one is then refused as stale.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_proto::v1::InitProducerRequest;
use sluice_proto::ErrorCode;
use tokio::sync::{Mutex as AsyncMutex, OnceCell, OwnedMutexGuard};

use super::wire::BatchSequence;
use crate::client::ClientCore;
use crate::error::{Error, Result};
use crate::route::MessageQueue;
use crate::rpc;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QueueKey {
    broker: String,
    topic: String,
    queue_id: u32,
}

/// One queue's numbering.
#[derive(Debug, Default)]
pub(crate) struct QueueSeq {
    /// The producer id the numbering belongs to (0: none yet).
    producer_id: u64,
    epoch: u32,
    next: u64,
    /// The last batch failed with an unknown outcome: start over at a new epoch.
    stale: bool,
}

/// A batch bound to a queue and a sequence; holds the queue until dropped.
pub(crate) struct Bound {
    pub(crate) queue: MessageQueue,
    pub(crate) seq: BatchSequence,
    count: u64,
    guard: OwnedMutexGuard<QueueSeq>,
    /// Its outcome was told (stored, not stored, or given up).
    settled: bool,
}

impl Drop for Bound {
    fn drop(&mut self) {
        // Dropped with its outcome untold (the send was cancelled during an attempt): it may be
        // stored under this sequence, so the broker would refuse a next batch numbered the same
        // (another first message) and make it renumber. It starts a new epoch at once instead.
        if !self.settled {
            self.guard.stale = true;
        }
    }
}

impl Bound {
    /// Stored: the queue's next batch follows this one.
    pub(crate) fn stored(mut self) {
        self.guard.next = self.seq.base.saturating_add(self.count);
        self.settled = true;
    }

    /// Certainly not stored: the queue's next batch takes this sequence.
    pub(crate) fn released(mut self) {
        self.settled = true;
    }

    /// Refused for its sequence (so not stored): number it again, under a new producer id
    /// when the broker does not know this one.
    pub(crate) async fn renumber(&mut self, idem: &Idempotence, code: ErrorCode) -> Result<()> {
        let producer_id = if code == ErrorCode::UnknownProducer {
            idem.forget(&self.queue.broker_name, self.seq.producer_id);
            idem.producer_id(&self.queue).await?
        } else {
            self.seq.producer_id
        };
        let g = &mut self.guard;
        if producer_id != g.producer_id {
            g.producer_id = producer_id;
            g.epoch = 0;
        } else {
            g.epoch = g.epoch.wrapping_add(1);
        }
        g.next = 0;
        g.stale = false;
        self.seq = BatchSequence {
            producer_id,
            epoch: g.epoch,
            base: 0,
        };
        Ok(())
    }

    /// Refused for its sequence on the last attempt: not stored, but the numbering is off, so
    /// the queue's next batch starts over (a new epoch, or a new id for an unknown one).
    pub(crate) fn refused(mut self, idem: &Idempotence, code: ErrorCode) {
        if code == ErrorCode::UnknownProducer {
            idem.forget(&self.queue.broker_name, self.seq.producer_id);
        }
        self.guard.stale = true;
        self.settled = true;
    }

    /// Failed for good with an unknown outcome.
    pub(crate) fn abandoned(mut self) {
        self.guard.stale = true;
        self.settled = true;
    }
}

/// Producer ids and queue sequences of one producer.
pub(crate) struct Idempotence {
    core: Arc<ClientCore>,
    producer_group: String,
    ids: Mutex<HashMap<String, Arc<OnceCell<u64>>>>,
    queues: Mutex<HashMap<QueueKey, Arc<AsyncMutex<QueueSeq>>>>,
}

/// Errors after which the batch was certainly not stored, so it may go to another queue.
pub(crate) fn certainly_not_stored(e: &Error) -> bool {
    matches!(
        e.code(),
        Some(
            ErrorCode::InvalidArgument
                | ErrorCode::InvalidTopicName
                | ErrorCode::TopicNotFound
                | ErrorCode::QueueNotFound
                | ErrorCode::MessageTooLarge
                | ErrorCode::NoPermission
                | ErrorCode::DiskFull
                | ErrorCode::LimitExceeded
                | ErrorCode::NoRoute
        )
    )
}

/// Errors that refuse a batch for its sequence (not stored); the batch is numbered again.
pub(crate) fn needs_renumbering(e: &Error) -> Option<ErrorCode> {
    e.code().filter(|c| {
        matches!(
            c,
            ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducer
        )
    })
}

impl Idempotence {
    pub(crate) fn new(core: Arc<ClientCore>, producer_group: String) -> Self {
        Idempotence {
            core,
            producer_group,
            ids: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Binds a batch of `count` messages to `queue`: waits for the queue's earlier batch, then
    /// takes the next sequence (a new epoch after an abandoned batch).
    pub(crate) async fn bind(&self, queue: &MessageQueue, count: usize) -> Result<Bound> {
        let producer_id = self.producer_id(queue).await?;
        let lock = {
            let key = QueueKey {
                broker: queue.broker_name.clone(),
                topic: queue.topic.clone(),
                queue_id: queue.queue_id,
            };
            self.queues.lock().entry(key).or_default().clone()
        };
        let mut guard = lock.lock_owned().await;
        if guard.producer_id != producer_id {
            *guard = QueueSeq {
                producer_id,
                ..QueueSeq::default()
            };
        } else if guard.stale {
            guard.epoch = guard.epoch.wrapping_add(1);
            guard.next = 0;
            guard.stale = false;
        }
        Ok(Bound {
            queue: queue.clone(),
            seq: BatchSequence {
                producer_id,
                epoch: guard.epoch,
                base: guard.next,
            },
            count: count as u64,
            guard,
            settled: false,
        })
    }

    /// The producer id for the queue's broker group, issued by its master on first use.
    async fn producer_id(&self, queue: &MessageQueue) -> Result<u64> {
        let cell = self
            .ids
            .lock()
            .entry(queue.broker_name.clone())
            .or_default()
            .clone();
        let id = cell.get_or_try_init(|| self.init_producer(queue)).await?;
        Ok(*id)
    }

    async fn init_producer(&self, queue: &MessageQueue) -> Result<u64> {
        let route = self.core.routes.get(&queue.topic).await?;
        let addr = route
            .master_address(&queue.broker_name)
            .ok_or_else(|| {
                Error::no_route(&queue.topic, "no master for an idempotent producer id")
            })?
            .to_string();
        let t = self.core.timeout();
        let mut client = self.core.broker(&addr)?;
        let resp = rpc::call(
            &addr,
            t,
            client.init_producer(rpc::request(
                InitProducerRequest {
                    producer_group: self.producer_group.clone(),
                },
                t,
            )),
        )
        .await?;
        tracing::debug!(broker = %queue.broker_name, producer_id = resp.producer_id, "producer id issued");
        Ok(resp.producer_id)
    }

    /// Drops a producer id the broker no longer knows (unless it was replaced already).
    fn forget(&self, broker: &str, producer_id: u64) {
        let mut ids = self.ids.lock();
        if ids
            .get(broker)
            .and_then(|c| c.get())
            .is_some_and(|id| *id == producer_id)
        {
            ids.remove(broker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(lock: &Arc<AsyncMutex<QueueSeq>>) -> Bound {
        let guard = lock.clone().try_lock_owned().expect("free");
        Bound {
            queue: MessageQueue {
                topic: "t".into(),
                broker_name: "b".into(),
                queue_id: 0,
            },
            seq: BatchSequence {
                producer_id: 7,
                epoch: guard.epoch,
                base: guard.next,
            },
            count: 3,
            guard,
            settled: false,
        }
    }

    #[test]
    fn a_batch_dropped_untold_makes_the_queue_start_a_new_epoch() {
        let lock = Arc::new(AsyncMutex::new(QueueSeq {
            producer_id: 7,
            ..QueueSeq::default()
        }));
        let state = |lock: &Arc<AsyncMutex<QueueSeq>>| {
            let g = lock.try_lock().expect("free");
            (g.next, g.stale)
        };
        bound(&lock).stored();
        assert_eq!(state(&lock), (3, false));
        bound(&lock).released();
        assert_eq!(
            state(&lock),
            (3, false),
            "not stored: the sequence stays free"
        );
        // A send cancelled during its attempt drops its batch without an outcome.
        drop(bound(&lock));
        assert!(lock.try_lock().expect("free").stale);
    }

    #[tokio::test]
    async fn a_batch_refused_for_its_sequence_at_the_last_attempt_makes_the_queue_start_over() {
        let core = ClientCore::new(crate::ClientConfig::new(["127.0.0.1:1"])).expect("core");
        let idem = Idempotence::new(core, "g".into());
        idem.ids
            .lock()
            .insert("b".into(), Arc::new(OnceCell::new_with(Some(7))));
        let lock = Arc::new(AsyncMutex::new(QueueSeq {
            producer_id: 7,
            ..QueueSeq::default()
        }));
        bound(&lock).refused(&idem, ErrorCode::OutOfOrderSequence);
        assert!(lock.try_lock().expect("free").stale);
        assert!(idem.ids.lock().contains_key("b"), "the id is still known");
        lock.try_lock().expect("free").stale = false;
        bound(&lock).refused(&idem, ErrorCode::UnknownProducer);
        assert!(lock.try_lock().expect("free").stale);
        assert!(
            !idem.ids.lock().contains_key("b"),
            "an unknown id is asked for again"
        );
    }
}
