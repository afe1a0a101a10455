//! Idempotent sends: a producer id issued by the broker group (replicated state) and, per
//! queue, an epoch and a sequence numbering the producer's messages. A retried batch that is
//! stored already is answered with its original positions and never stored twice; a gap is
//! refused (OUT_OF_ORDER_SEQUENCE) so the producer re-syncs instead of losing messages.
//!
//! The log decides what is stored: a batch's first record carries its sequence, and every
//! replica records it when it applies the entry (`state::producers`). Between the proposal and
//! that apply the master keeps the batch in a slot, so a retry arriving meanwhile waits for the
//! first attempt's outcome instead of proposing the batch again. Slots belong to one
//! mastership: a new master has applied its whole log before it takes writes, so what an
//! earlier term proposed is either in the state or gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_proto::props::{self, SequenceMark};
use sluice_proto::{ApiError, ErrorCode};
use tokio::sync::watch;

use super::{Announced, WritePath};
use crate::state::producers::{self, Verdict};
use crate::store::{AppendBatch, Appended, MessageStore};

/// The sequence fields of an idempotent send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    pub producer_id: u64,
    pub epoch: u32,
    pub base_sequence: u64,
}

/// What an idempotent append stored (or had stored before).
#[derive(Debug, Clone)]
pub struct Stored {
    pub entries: Vec<Appended>,
    /// A retry of a batch stored already: `entries` are its original positions.
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SlotKey {
    producer_id: u64,
    topic: String,
    queue_id: u32,
}

type Outcome = Result<Vec<Appended>, ApiError>;

/// A batch proposed and not yet in the state.
struct Slot {
    term: u64,
    mark: SequenceMark,
    first_id: String,
    done: watch::Receiver<Option<Outcome>>,
}

pub struct Idempotence {
    write: WritePath,
    store: MessageStore,
    slots: Mutex<HashMap<SlotKey, Slot>>,
    /// How long a send waits for its batch before answering STORE_TIMEOUT (a retry then finds
    /// the slot and waits again).
    wait: Duration,
}

impl Idempotence {
    pub fn new(write: WritePath, store: MessageStore, wait: Duration) -> Arc<Self> {
        Arc::new(Idempotence {
            write,
            store,
            slots: Mutex::new(HashMap::new()),
            wait,
        })
    }

    pub(crate) fn store(&self) -> &MessageStore {
        &self.store
    }

    /// Issues a producer id (random, nonzero, unused in this group), through the log.
    pub async fn register(&self, producer_group: &str, now_ms: i64) -> Result<u64, ApiError> {
        self.write.require_writer()?;
        if !producer_group.is_empty() {
            sluice_proto::names::validate_group_name(producer_group)?;
        }
        let meta = self.write.state().meta().clone();
        for _ in 0..16 {
            let pid = rand::random::<u64>();
            if pid == 0 || producers::is_registered(meta.as_ref(), pid)? {
                continue;
            }
            self.write
                .apply(producers::register_op(pid, producer_group, now_ms), now_ms)
                .await?;
            return Ok(pid);
        }
        Err(ApiError::internal("no unused producer id found"))
    }

    /// Appends `batch` (every message for `topic`/`queue_id` as the producer sent it) under
    /// sequence `seq`, unless it is stored already.
    pub async fn append(
        self: &Arc<Self>,
        seq: Sequence,
        topic: &str,
        queue_id: u32,
        mut batch: AppendBatch,
        now_ms: i64,
    ) -> Result<Stored, ApiError> {
        self.write.require_writer()?;
        let count = u32::try_from(batch.messages.len())
            .map_err(|_| ApiError::invalid("too many messages in one batch"))?;
        let Some(first) = batch.messages.first_mut() else {
            return Err(ApiError::invalid("a send needs at least one message"));
        };
        let mark = SequenceMark {
            producer_id: seq.producer_id,
            epoch: seq.epoch,
            base_sequence: seq.base_sequence,
            count,
        };
        seq.base_sequence
            .checked_add(u64::from(count))
            .ok_or_else(|| {
                ApiError::invalid(format!("sequence {} overflows", seq.base_sequence))
            })?;
        let meta = self.write.state().meta().clone();
        if !producers::is_registered(meta.as_ref(), seq.producer_id)? {
            return Err(ApiError::new(
                ErrorCode::UnknownProducer,
                format!(
                    "producer id {} was not issued by this broker group or has expired; \
                     call InitProducer again",
                    seq.producer_id
                ),
            ));
        }
        let first_id = first.message_id.clone();
        first
            .properties
            .push((props::PRODUCER_SEQUENCE.to_string(), mark.encode()));
        let key = SlotKey {
            producer_id: seq.producer_id,
            topic: topic.to_string(),
            queue_id,
        };
        let term = self.write.term();
        let mut done = {
            let mut slots = self.slots.lock();
            let pending = slots.get(&key).filter(|s| s.term == term);
            if let Some(slot) = pending {
                if slot.mark != mark || slot.first_id != first_id {
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        "an earlier batch of this producer on this queue is still being \
                         stored; retry",
                    ));
                }
                slot.done.clone()
            } else {
                match producers::judge(meta.as_ref(), &mark, topic, queue_id, &first_id)? {
                    Verdict::Next => {}
                    Verdict::Duplicate(b) => {
                        drop(slots);
                        return self.stored_again(&b).map(|entries| Stored {
                            entries,
                            duplicate: true,
                        });
                    }
                    Verdict::OutOfOrder { expected, why } => {
                        return Err(ApiError::new(
                            ErrorCode::OutOfOrderSequence,
                            format!(
                                "producer {} epoch {} sequence {} on {topic}/{queue_id}: {why}; \
                                 expected {expected}",
                                mark.producer_id, mark.epoch, mark.base_sequence
                            ),
                        ))
                    }
                    Verdict::Fenced { why } => {
                        return Err(ApiError::new(
                            ErrorCode::ProducerFenced,
                            format!(
                                "producer {} epoch {} sequence {} on {topic}/{queue_id}: {why}",
                                mark.producer_id, mark.epoch, mark.base_sequence
                            ),
                        ))
                    }
                }
                let (tx, rx) = watch::channel(None);
                slots.insert(
                    key.clone(),
                    Slot {
                        term,
                        mark,
                        first_id: first_id.clone(),
                        done: rx.clone(),
                    },
                );
                // The write runs on its own, so a caller that gives up does not end it.
                let this = self.clone();
                tokio::spawn(async move {
                    let (outcome, settled) = this.write_batch(batch, term, now_ms).await;
                    if settled {
                        this.release(&key, term, &mark);
                    }
                    let _ = tx.send(Some(outcome));
                });
                rx
            }
        };
        let wait = async {
            done.wait_for(Option::is_some)
                .await
                .map(|o| o.as_ref().cloned())
        };
        match tokio::time::timeout(self.wait, wait).await {
            Ok(Ok(Some(Ok(entries)))) => Ok(Stored {
                entries,
                duplicate: false,
            }),
            Ok(Ok(Some(Err(e)))) => Err(e),
            Ok(Ok(None)) => Err(ApiError::internal(
                "idempotent write ended without an outcome",
            )),
            Ok(Err(_)) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "the idempotent write stopped; retry",
            )),
            Err(_) => Err(ApiError::new(
                ErrorCode::StoreTimeout,
                format!(
                    "not stored within {:?}; it may or may not be stored, and a retry of the \
                     same batch is answered once that is known",
                    self.wait
                ),
            )),
        }
    }

    /// Writes the batch and returns once its sequence is in the state (or, when the outcome
    /// is unknown, once the log has settled it: the state then tells a retry what happened),
    /// and whether the slot may go: not while the log holds the batch and the state does not
    /// (a standalone broker that failed to apply it keeps the slot until a restart reads the
    /// sequence back from the log).
    async fn write_batch(&self, batch: AppendBatch, term: u64, now_ms: i64) -> (Outcome, bool) {
        match self.write.append_announced(&batch, now_ms).await {
            Ok(entries) => (Ok(entries), true),
            Err(Announced::StoredUnapplied(e)) => {
                tracing::error!(error = %e, "an idempotent batch is stored but its sequence is not recorded; its queue waits for a restart");
                (
                    Err(ApiError::new(
                        ErrorCode::Unavailable,
                        format!("stored, but its sequence is not recorded: {e}"),
                    )),
                    false,
                )
            }
            Err(Announced::NotStored(e)) => {
                // It may still be committed: hold the slot until the log has decided (or
                // this mastership ended, after which the slot no longer counts).
                self.write.settle_in_term(&self.store, term).await;
                (Err(e), true)
            }
        }
    }

    fn release(&self, key: &SlotKey, term: u64, mark: &SequenceMark) {
        let mut slots = self.slots.lock();
        if slots
            .get(key)
            .is_some_and(|s| s.term == term && s.mark == *mark)
        {
            slots.remove(key);
        }
    }

    /// The positions of a batch stored before.
    fn stored_again(&self, b: &sluice_proto::v1::SequenceBatch) -> Result<Vec<Appended>, ApiError> {
        let found = match &self.write {
            WritePath::Replicated { .. } => self.store.entry_results(b.locator),
            WritePath::Standalone { .. } => self.store.batch_at(b.locator, b.count),
        };
        match found {
            Ok(entries) if entries.len() == b.count as usize => Ok(entries),
            Ok(entries) => Err(ApiError::internal(format!(
                "batch at {} holds {} messages, its sequence says {}",
                b.locator,
                entries.len(),
                b.count
            ))),
            Err(e) => Err(ApiError::new(
                ErrorCode::ProducerFenced,
                format!(
                    "this batch was stored already, but its positions are no longer in the \
                     log ({e})"
                ),
            )),
        }
    }
}

impl Idempotence {
    /// The master's housekeeping: forgets producers idle for `expiry` (checked every quarter
    /// of it, at most hourly), through the log with this master's clock.
    pub async fn run_expiry(self: Arc<Self>, expiry: Duration, mut stop: watch::Receiver<bool>) {
        let period = (expiry / 4).clamp(Duration::from_millis(250), Duration::from_secs(3600));
        let expiry_ms = i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = crate::store::now_ms();
            let cutoff = now.saturating_sub(expiry_ms);
            let meta = self.write.state().meta().clone();
            match producers::any_idle(meta.as_ref(), cutoff) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the producer table");
                    continue;
                }
            }
            if let Err(e) = self.write.apply(producers::expire_op(cutoff), now).await {
                tracing::warn!(error = %e, "expiring idle producers failed; retried later");
            }
        }
    }
}
