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
//!
//! A plain batch is answered once committed ([`AckAt::Committed`]), like a send without a
//! sequence; its slot stays until the state has it, and the producer's next batch on that
//! queue, which may come meanwhile, follows the slot's sequence instead of the state's.
//! Batches whose state others read right after the answer (a transaction's half messages,
//! delayed messages) are answered once applied ([`AckAt::Applied`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_proto::props::{self, SequenceMark};
use sluice_proto::{ApiError, ErrorCode};
use tokio::sync::watch;

use super::{Acked, Announced, WritePath};
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

/// The slot map is not swept below this many slots.
const SWEEP_MIN: usize = 1024;

/// When an idempotent append answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckAt {
    /// Once the log has the batch (a replica group: committed); the slot holds until applied.
    Committed,
    /// Once the state has the batch's sequence (and whatever else its first record announces).
    Applied,
}

/// A batch proposed and not yet in the state.
struct Slot {
    term: u64,
    mark: SequenceMark,
    first_id: String,
    done: watch::Receiver<Option<Outcome>>,
    /// Answered as committed: free once the state has applied this entry.
    apply_at: Option<u64>,
}

impl Slot {
    /// `next` is the producer's next batch after this one, which the log has (answered as
    /// stored: only a committed batch is answered before its state is applied).
    fn followed_by(&self, next: &SequenceMark) -> bool {
        let stored = self.done.borrow().as_ref().is_some_and(|o| o.is_ok());
        stored
            && next.epoch == self.mark.epoch
            && Some(next.base_sequence)
                == self
                    .mark
                    .base_sequence
                    .checked_add(u64::from(self.mark.count))
    }
}

pub struct Idempotence {
    write: WritePath,
    store: MessageStore,
    slots: Mutex<HashMap<SlotKey, Slot>>,
    /// Slot count at which the map is next swept.
    sweep_at: AtomicUsize,
    /// How long a send waits for its batch before answering STORE_TIMEOUT (a retry then finds
    /// the slot and waits again).
    wait: Duration,
}

/// What a send does after looking at its queue's slot.
enum Step {
    /// Wait for the first attempt of the same batch.
    Wait(watch::Receiver<Option<Outcome>>),
    /// Stored before: answer with its positions.
    Duplicate(sluice_proto::v1::SequenceBatch),
    /// Write it (the slot is taken).
    Write(watch::Sender<Option<Outcome>>),
}

/// A write under way whose outcome its waiters have not been given. Dropped unsettled (the
/// call was cancelled or timed out), it settles on its own: waits until the log has decided
/// (or the mastership ended), frees the slot and tells the waiters to retry, which then
/// judges by the state.
struct Unsettled {
    this: Arc<Idempotence>,
    key: SlotKey,
    term: u64,
    mark: SequenceMark,
    tx: Option<watch::Sender<Option<Outcome>>>,
}

impl Unsettled {
    fn settled(&mut self, outcome: Outcome) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(outcome));
        }
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (this, key, term, mark) = (self.this.clone(), self.key.clone(), self.term, self.mark);
        rt.spawn(async move {
            this.write.settle_in_term(&this.store, term).await;
            this.release(&key, term, &mark);
            let _ = tx.send(Some(Err(ApiError::new(
                ErrorCode::Unavailable,
                "the first attempt's outcome was not known in time; retry",
            ))));
        });
    }
}

impl Idempotence {
    pub fn new(write: WritePath, store: MessageStore, wait: Duration) -> Arc<Self> {
        Arc::new(Idempotence {
            write,
            store,
            slots: Mutex::new(HashMap::new()),
            sweep_at: AtomicUsize::new(SWEEP_MIN),
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
    /// sequence `seq`, unless it is stored already; answers once its state is applied.
    pub async fn append(
        self: &Arc<Self>,
        seq: Sequence,
        topic: &str,
        queue_id: u32,
        batch: AppendBatch,
        now_ms: i64,
    ) -> Result<Stored, ApiError> {
        self.append_with(seq, topic, queue_id, batch, now_ms, AckAt::Applied)
            .await
    }

    /// [`Self::append`], answering at `ack`.
    pub async fn append_with(
        self: &Arc<Self>,
        seq: Sequence,
        topic: &str,
        queue_id: u32,
        mut batch: AppendBatch,
        now_ms: i64,
        ack: AckAt,
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
        let applied_now = self.write.applied_index();
        let step = {
            let mut slots = self.slots.lock();
            // A slot whose batch the state has since applied no longer counts; nor does one of
            // an earlier term. Slots answered as committed are not removed one by one: the map
            // is swept of those that no longer count each time it doubles.
            let live = |s: &Slot| s.term == term && s.apply_at.is_none_or(|a| a > applied_now);
            if slots.len() >= self.sweep_at.load(Ordering::Relaxed) {
                slots.retain(|_, s| live(s));
                self.sweep_at
                    .store((slots.len() * 2).max(SWEEP_MIN), Ordering::Relaxed);
            }
            let pending = slots.get(&key).filter(|s| live(s));
            let follows = pending.is_some_and(|s| s.followed_by(&mark));
            if let Some(slot) = pending.filter(|_| !follows) {
                if slot.mark != mark || slot.first_id != first_id {
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        "an earlier batch of this producer on this queue is still being \
                         stored; retry",
                    ));
                }
                Step::Wait(slot.done.clone())
            } else {
                self.judged(
                    &mut slots,
                    key.clone(),
                    term,
                    mark,
                    first_id,
                    follows,
                    topic,
                    queue_id,
                )?
            }
        };
        let tx = match step {
            Step::Wait(done) => return self.wait_for(done).await,
            Step::Duplicate(b) => {
                return self.stored_again(&b).map(|entries| Stored {
                    entries,
                    duplicate: true,
                })
            }
            Step::Write(tx) => tx,
        };
        // Written by this call (no task hand-off: a thread wake-up each way cost a third of
        // an idempotent send's latency); if the call is dropped or times out, the guard
        // settles the outcome and frees the slot on its own.
        let mut guard = Unsettled {
            this: self.clone(),
            key,
            term,
            mark,
            tx: Some(tx),
        };
        let write = async {
            let written = self.write.append_announced_acked(&batch, now_ms).await;
            match (written, ack) {
                (Ok(acked), AckAt::Committed) if acked.apply_at.is_some() => {
                    // Answered now; the slot holds until the state has the batch.
                    self.applied_at(&guard.key, term, &mark, acked.apply_at);
                    (Ok(acked.entries), false)
                }
                (Ok(acked), _) => self.applied(acked, term).await,
                (Err(e), _) => self.failed(e, term).await,
            }
        };
        match tokio::time::timeout(self.wait, write).await {
            Ok((outcome, release)) => {
                if release {
                    self.release(&guard.key, term, &mark);
                }
                guard.settled(outcome.clone());
                outcome.map(|entries| Stored {
                    entries,
                    duplicate: false,
                })
            }
            Err(_) => {
                drop(guard);
                Err(self.timed_out())
            }
        }
    }

    /// A batch with no slot in the way, judged (or following a committed one): its slot is
    /// taken here, under the same lock as the judgement.
    #[allow(clippy::too_many_arguments)]
    fn judged(
        &self,
        slots: &mut HashMap<SlotKey, Slot>,
        key: SlotKey,
        term: u64,
        mark: SequenceMark,
        first_id: String,
        follows: bool,
        topic: &str,
        queue_id: u32,
    ) -> Result<Step, ApiError> {
        let meta = self.write.state().meta().clone();
        // Next after a committed batch the state does not have yet, or judged by it.
        let verdict = match follows {
            true => Verdict::Next,
            false => producers::judge(meta.as_ref(), &mark, topic, queue_id, &first_id)?,
        };
        match verdict {
            Verdict::Next => {}
            Verdict::Duplicate(b) => return Ok(Step::Duplicate(b)),
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
            key,
            Slot {
                term,
                mark,
                first_id,
                done: rx,
                apply_at: None,
            },
        );
        Ok(Step::Write(tx))
    }

    fn timed_out(&self) -> ApiError {
        ApiError::new(
            ErrorCode::StoreTimeout,
            format!(
                "not stored within {:?}; it may or may not be stored, and a retry of the \
                 same batch is answered once that is known",
                self.wait
            ),
        )
    }

    /// A retry's wait for the first attempt's outcome.
    async fn wait_for(
        &self,
        mut done: watch::Receiver<Option<Outcome>>,
    ) -> Result<Stored, ApiError> {
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
            Err(_) => Err(self.timed_out()),
        }
    }

    /// Notes the entry whose application makes a committed batch's slot free.
    fn applied_at(&self, key: &SlotKey, term: u64, mark: &SequenceMark, index: Option<u64>) {
        let mut slots = self.slots.lock();
        if let Some(s) = slots
            .get_mut(key)
            .filter(|s| s.term == term && s.mark == *mark)
        {
            s.apply_at = index;
        }
    }

    /// Waits until a written batch's sequence is in the state (or, when the outcome is
    /// unknown, until the log has settled it: the state then tells a retry what happened);
    /// returns the outcome and whether the slot may go: not while the log holds the batch and
    /// the state does not (a standalone broker that failed to apply it keeps the slot until a
    /// restart reads the sequence back from the log).
    async fn applied(&self, acked: Acked, term: u64) -> (Outcome, bool) {
        match self.write.then_applied(acked).await {
            Ok(entries) => (Ok(entries), true),
            Err(e) => self.failed(e, term).await,
        }
    }

    /// A write that failed: the outcome for its waiters, and whether the slot may go.
    async fn failed(&self, e: Announced, term: u64) -> (Outcome, bool) {
        match e {
            Announced::StoredUnapplied(e) => {
                tracing::error!(error = %e, "an idempotent batch is stored but its sequence is not recorded; its queue waits for a restart");
                (
                    Err(ApiError::new(
                        ErrorCode::Unavailable,
                        format!("stored, but its sequence is not recorded: {e}"),
                    )),
                    false,
                )
            }
            Announced::NotStored(e) => {
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
