//! Idempotent producers: two tables of the replicated state.
//!
//! - `producers`: key = producer id (8 bytes, big-endian); value = `ProducerInfo`. An id is
//!   issued by the master (`RegisterProducerOp`) and forgotten after `producer_expiry` without
//!   a send (`ExpireProducersOp`, proposed by the master's housekeeping with its clock).
//! - `sequences`: key = producer id, queue id (4 bytes, big-endian), topic; value =
//!   `ProducerSequences`: the epoch, the next sequence and the last five batches, each with a
//!   locator that finds its messages again, so a retried batch is answered with its original
//!   positions (Kafka keeps five batches per producer and partition too).
//!
//! A sequence is recorded from the batch's own log entry (its first record carries the
//! producer id, epoch, base sequence and count), so the batch and "batch stored" are one entry.

use prost::Message as _;
use sluice_proto::props::SequenceMark;
use sluice_proto::v1::{
    ExpireProducersOp, ProducerInfo, ProducerSequences, RecordSequenceOp, RegisterProducerOp,
    SequenceBatch,
};

use super::{table_key, Applied, Staged, TREE};
use crate::meta::{MetaError, MetaStore};

pub const PRODUCERS: &str = "producers";
pub const SEQUENCES: &str = "sequences";

/// Batches remembered per producer and queue.
pub const KEPT_BATCHES: usize = 5;

/// Standalone brokers only: every state-carrying write below this commit-log offset has its
/// state applied (outside the tables: a replica group's applied index plays this part).
pub(super) const STANDALONE_APPLIED_BELOW: &[u8] = b"sys/sequences_applied_below";

/// The last-active time of a producer is rewritten at most this often.
const ACTIVITY_GRANULARITY_MS: i64 = 60_000;

fn producer_key(pid: u64) -> Vec<u8> {
    table_key(PRODUCERS, &pid.to_be_bytes())
}

fn sequence_key(pid: u64, topic: &str, queue_id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(12 + topic.len());
    k.extend_from_slice(&pid.to_be_bytes());
    k.extend_from_slice(&queue_id.to_be_bytes());
    k.extend_from_slice(topic.as_bytes());
    table_key(SEQUENCES, &k)
}

fn corrupt(what: &str, e: prost::DecodeError) -> MetaError {
    MetaError::Corrupt {
        tree: TREE.into(),
        reason: format!("{what}: {e}"),
    }
}

fn producer(
    meta: &dyn MetaStore,
    staged: Option<&Staged>,
    pid: u64,
) -> Result<Option<ProducerInfo>, MetaError> {
    let key = producer_key(pid);
    let v = match staged {
        Some(s) => s.get(meta, &key)?,
        None => meta.get(TREE, &key)?,
    };
    v.map(|v| ProducerInfo::decode(v.as_slice()).map_err(|e| corrupt("producer", e)))
        .transpose()
}

fn sequences(
    meta: &dyn MetaStore,
    staged: Option<&Staged>,
    key: &[u8],
) -> Result<Option<ProducerSequences>, MetaError> {
    let v = match staged {
        Some(s) => s.get(meta, key)?,
        None => meta.get(TREE, key)?,
    };
    v.map(|v| ProducerSequences::decode(v.as_slice()).map_err(|e| corrupt("sequences", e)))
        .transpose()
}

/// True when `pid` was issued by this group and has not expired.
pub fn is_registered(meta: &dyn MetaStore, pid: u64) -> Result<bool, MetaError> {
    Ok(producer(meta, None, pid)?.is_some())
}

/// What a new batch is, against what the log holds for its producer and queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The next batch: store it.
    Next,
    /// Stored already: answer with this batch's positions.
    Duplicate(SequenceBatch),
    /// A gap (or a sequence used for another batch): nothing is stored.
    OutOfOrder { expected: u64, why: &'static str },
    /// An older epoch, or a retry older than the batches kept: nothing is stored.
    Fenced { why: &'static str },
}

/// Judges batch `mark` (first message `first_id`) for `topic`/`queue_id`.
pub fn judge(
    meta: &dyn MetaStore,
    mark: &SequenceMark,
    topic: &str,
    queue_id: u32,
    first_id: &str,
) -> Result<Verdict, MetaError> {
    let Some(cur) = sequences(meta, None, &sequence_key(mark.producer_id, topic, queue_id))? else {
        return Ok(if mark.base_sequence == 0 {
            Verdict::Next
        } else {
            Verdict::OutOfOrder {
                expected: 0,
                why: "no batch of this producer is stored on this queue",
            }
        });
    };
    Ok(judge_against(&cur, mark, first_id))
}

fn judge_against(cur: &ProducerSequences, mark: &SequenceMark, first_id: &str) -> Verdict {
    if mark.epoch < cur.epoch {
        return Verdict::Fenced {
            why: "the epoch is older than one already used on this queue",
        };
    }
    if mark.epoch > cur.epoch {
        return if mark.base_sequence == 0 {
            Verdict::Next
        } else {
            Verdict::OutOfOrder {
                expected: 0,
                why: "a new epoch starts at sequence 0",
            }
        };
    }
    if let Some(b) = cur
        .batches
        .iter()
        .find(|b| b.base_sequence == mark.base_sequence)
    {
        return if b.count == mark.count && b.first_message_id == first_id {
            Verdict::Duplicate(b.clone())
        } else {
            Verdict::OutOfOrder {
                expected: cur.next_sequence,
                why: "the sequence was used for another batch",
            }
        };
    }
    if mark.base_sequence == cur.next_sequence {
        Verdict::Next
    } else if mark.base_sequence > cur.next_sequence {
        Verdict::OutOfOrder {
            expected: cur.next_sequence,
            why: "the sequence leaves a gap",
        }
    } else {
        Verdict::Fenced {
            why: "a retry older than the batches the broker keeps",
        }
    }
}

pub(super) fn apply_register(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    op: &RegisterProducerOp,
) -> Result<Applied, MetaError> {
    if op.producer_id == 0 || producer(meta, Some(staged), op.producer_id)?.is_some() {
        return Ok(Applied::Unchanged);
    }
    let info = ProducerInfo {
        producer_group: op.producer_group.clone(),
        registered_ms: op.at_ms,
        last_active_ms: op.at_ms,
    };
    staged.put(producer_key(op.producer_id), info.encode_to_vec());
    Ok(Applied::Changed)
}

/// Records a stored batch. The proposer judged it `Next`; applying it again (a standalone
/// broker's rescan after a crash) changes nothing.
pub(super) fn apply_record(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    op: &RecordSequenceOp,
) -> Result<Applied, MetaError> {
    if op.producer_id == 0 || op.count == 0 {
        tracing::error!("skipping an invalid sequence record");
        return Ok(Applied::Unchanged);
    }
    if op.applied_below != 0 {
        apply_rescan_point(staged, op.applied_below);
    }
    let key = sequence_key(op.producer_id, &op.topic, op.queue_id);
    let batch = SequenceBatch {
        base_sequence: op.base_sequence,
        count: op.count,
        first_message_id: op.first_message_id.clone(),
        locator: op.locator,
    };
    let end = op.base_sequence.saturating_add(u64::from(op.count));
    let next = match sequences(meta, Some(staged), &key)? {
        Some(cur) if op.epoch < cur.epoch => return Ok(Applied::Unchanged),
        Some(cur)
            if op.epoch == cur.epoch
                && (op.base_sequence < cur.next_sequence
                    || cur
                        .batches
                        .iter()
                        .any(|b| b.base_sequence == op.base_sequence)) =>
        {
            return Ok(Applied::Unchanged)
        }
        Some(mut cur) if op.epoch == cur.epoch => {
            cur.batches.push(batch);
            let excess = cur.batches.len().saturating_sub(KEPT_BATCHES);
            cur.batches.drain(..excess);
            cur.next_sequence = end;
            cur.last_active_ms = op.at_ms;
            cur
        }
        _ => ProducerSequences {
            epoch: op.epoch,
            next_sequence: end,
            last_active_ms: op.at_ms,
            batches: vec![batch],
        },
    };
    staged.put(key, next.encode_to_vec());
    if let Some(mut info) = producer(meta, Some(staged), op.producer_id)? {
        if op.at_ms >= info.last_active_ms.saturating_add(ACTIVITY_GRANULARITY_MS) {
            info.last_active_ms = op.at_ms;
            staged.put(producer_key(op.producer_id), info.encode_to_vec());
        }
    }
    Ok(Applied::Changed)
}

/// Forgets producers idle since before the cutoff, with their sequences.
pub(super) fn apply_expire(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    op: &ExpireProducersOp,
) -> Result<Applied, MetaError> {
    let mut changed = Applied::Unchanged;
    let prefix = table_key(PRODUCERS, b"");
    for (k, v) in staged.scan_prefix(meta, &prefix)? {
        let info = ProducerInfo::decode(v.as_slice()).map_err(|e| corrupt("producer", e))?;
        if info.last_active_ms >= op.idle_before_ms {
            continue;
        }
        let Some(pid) = k.get(prefix.len()..) else {
            continue;
        };
        // A sequence may be more recent than the coarse activity time of its producer.
        let seqs = staged.scan_prefix(meta, &table_key(SEQUENCES, pid))?;
        let mut active = false;
        for (_, v) in &seqs {
            let s = ProducerSequences::decode(v.as_slice()).map_err(|e| corrupt("sequences", e))?;
            active |= s.last_active_ms >= op.idle_before_ms;
        }
        if active {
            continue;
        }
        for (sk, _) in seqs {
            staged.delete(sk);
        }
        staged.delete(k);
        changed = Applied::Changed;
    }
    Ok(changed)
}

/// True when some producer was last active before `cutoff_ms` (worth an expire op).
pub fn any_idle(meta: &dyn MetaStore, cutoff_ms: i64) -> Result<bool, MetaError> {
    for (_, v) in meta.scan_prefix(TREE, &table_key(PRODUCERS, b""))? {
        let info = ProducerInfo::decode(v.as_slice()).map_err(|e| corrupt("producer", e))?;
        if info.last_active_ms < cutoff_ms {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Standalone: where a rescan of the log starts after a restart (None: never recorded, so the
/// store was never opened by a build that writes state into a standalone log).
pub fn standalone_applied_below(meta: &dyn MetaStore) -> Result<Option<u64>, MetaError> {
    meta.get(TREE, STANDALONE_APPLIED_BELOW)?
        .map(|v| {
            <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| MetaError::Corrupt {
                    tree: TREE.into(),
                    reason: "standalone rescan point".into(),
                })
        })
        .transpose()
}

/// The op that records batch `mark`, stored at `locator`.
pub fn record_op(
    mark: &SequenceMark,
    topic: &str,
    queue_id: u32,
    first_message_id: &str,
    locator: u64,
    at_ms: i64,
    applied_below: u64,
) -> super::StateOp {
    super::StateOp {
        op: Some(sluice_proto::v1::meta_op::Op::RecordSequence(
            RecordSequenceOp {
                producer_id: mark.producer_id,
                epoch: mark.epoch,
                base_sequence: mark.base_sequence,
                count: mark.count,
                topic: topic.to_string(),
                queue_id,
                first_message_id: first_message_id.to_string(),
                locator,
                at_ms,
                applied_below,
            },
        )),
    }
}

pub fn register_op(producer_id: u64, producer_group: &str, at_ms: i64) -> super::StateOp {
    super::StateOp {
        op: Some(sluice_proto::v1::meta_op::Op::RegisterProducer(
            RegisterProducerOp {
                producer_id,
                producer_group: producer_group.to_string(),
                at_ms,
            },
        )),
    }
}

/// Standalone: moves the restart rescan point (see `messaging::standalone`).
pub fn rescan_point_op(point: u64) -> super::StateOp {
    super::StateOp {
        op: Some(sluice_proto::v1::meta_op::Op::StandaloneRescanPoint(point)),
    }
}

pub(super) fn apply_rescan_point(staged: &mut Staged, point: u64) -> Applied {
    staged.put(
        STANDALONE_APPLIED_BELOW.to_vec(),
        point.to_be_bytes().to_vec(),
    );
    Applied::Changed
}

pub fn expire_op(idle_before_ms: i64) -> super::StateOp {
    super::StateOp {
        op: Some(sluice_proto::v1::meta_op::Op::ExpireProducers(
            ExpireProducersOp { idle_before_ms },
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Notify;

    use super::*;
    use crate::meta::MemMeta;
    use crate::state::StateMachine;

    fn machine() -> StateMachine {
        StateMachine::open(Arc::new(MemMeta::default()), Arc::new(Notify::new())).unwrap()
    }

    fn mark(epoch: u32, base: u64, count: u32) -> SequenceMark {
        SequenceMark {
            producer_id: 9,
            epoch,
            base_sequence: base,
            count,
        }
    }

    fn record(m: &StateMachine, mk: SequenceMark, at: i64) {
        let op = record_op(
            &mk,
            "t",
            1,
            &format!("id{}", mk.base_sequence),
            100 + mk.base_sequence,
            at,
            0,
        );
        m.apply(None, &[op], false).unwrap();
    }

    fn judged(m: &StateMachine, mk: SequenceMark) -> Verdict {
        judge(
            m.meta().as_ref(),
            &mk,
            "t",
            1,
            &format!("id{}", mk.base_sequence),
        )
        .unwrap()
    }

    #[test]
    fn batches_follow_each_other_and_retries_find_their_batch() {
        let m = machine();
        assert_eq!(judged(&m, mark(0, 0, 2)), Verdict::Next);
        assert!(matches!(
            judged(&m, mark(0, 3, 1)),
            Verdict::OutOfOrder { expected: 0, .. }
        ));
        record(&m, mark(0, 0, 2), 1);
        assert_eq!(judged(&m, mark(0, 2, 1)), Verdict::Next);
        assert!(matches!(
            judged(&m, mark(0, 5, 1)),
            Verdict::OutOfOrder { expected: 2, .. }
        ));
        let Verdict::Duplicate(b) = judged(&m, mark(0, 0, 2)) else {
            panic!("a retry is a duplicate");
        };
        assert_eq!((b.base_sequence, b.count, b.locator), (0, 2, 100));
        // The same sequence for another batch (other first id or count) is refused.
        let other = judge(m.meta().as_ref(), &mark(0, 0, 2), "t", 1, "other").unwrap();
        assert!(matches!(other, Verdict::OutOfOrder { .. }));
        assert!(matches!(
            judged(&m, mark(0, 0, 3)),
            Verdict::OutOfOrder { .. }
        ));
        // Another queue or topic is numbered on its own.
        let elsewhere = judge(m.meta().as_ref(), &mark(0, 0, 2), "u", 1, "id0").unwrap();
        assert_eq!(elsewhere, Verdict::Next);
        // Five batches are kept; an older retry is fenced, never stored again.
        for i in 1..=5 {
            record(&m, mark(0, i * 2, 2), 2);
        }
        assert!(matches!(judged(&m, mark(0, 0, 2)), Verdict::Fenced { .. }));
        assert!(matches!(judged(&m, mark(0, 2, 2)), Verdict::Duplicate(_)));
        // Applying a batch again (a standalone rescan) changes nothing.
        let before = m.dump().unwrap();
        record(&m, mark(0, 4, 2), 3);
        assert_eq!(m.dump().unwrap(), before);
    }

    #[test]
    fn a_new_epoch_starts_at_zero_and_fences_the_old_one() {
        let m = machine();
        record(&m, mark(0, 0, 1), 1);
        record(&m, mark(0, 1, 1), 1);
        assert!(matches!(
            judged(&m, mark(1, 5, 1)),
            Verdict::OutOfOrder { expected: 0, .. }
        ));
        assert_eq!(judged(&m, mark(1, 0, 1)), Verdict::Next);
        record(&m, mark(1, 0, 1), 2);
        assert!(matches!(judged(&m, mark(0, 1, 1)), Verdict::Fenced { .. }));
        assert!(matches!(judged(&m, mark(0, 2, 1)), Verdict::Fenced { .. }));
        assert_eq!(judged(&m, mark(1, 1, 1)), Verdict::Next);
        // A stale record (an older epoch) does not move the queue back.
        let before = m.dump().unwrap();
        record(&m, mark(0, 2, 1), 3);
        assert_eq!(m.dump().unwrap(), before);
    }

    #[test]
    fn idle_producers_expire_with_their_sequences() {
        let m = machine();
        let meta = m.meta().clone();
        m.apply(
            None,
            &[register_op(9, "pg", 1_000), register_op(10, "pg", 1_000)],
            false,
        )
        .unwrap();
        // Registering an id twice keeps the first registration.
        m.apply(None, &[register_op(9, "other", 5)], false).unwrap();
        assert!(is_registered(meta.as_ref(), 9).unwrap());
        record(&m, mark(0, 0, 1), 500_000);
        assert!(any_idle(meta.as_ref(), 2_000).unwrap());
        // Producer 9 sent at 500,000 (its coarse activity time was moved); 10 never did.
        m.apply(None, &[expire_op(400_000)], false).unwrap();
        assert!(is_registered(meta.as_ref(), 9).unwrap());
        assert!(!is_registered(meta.as_ref(), 10).unwrap());
        m.apply(None, &[expire_op(600_000)], false).unwrap();
        assert!(!is_registered(meta.as_ref(), 9).unwrap());
        assert_eq!(
            judged(&m, mark(0, 1, 1)),
            Verdict::OutOfOrder {
                expected: 0,
                why: "no batch of this producer is stored on this queue"
            }
        );
        assert!(!any_idle(meta.as_ref(), i64::MAX).unwrap());
    }

    #[test]
    fn expiry_sees_the_writes_of_its_own_apply_call() {
        let (together, apart) = (machine(), machine());
        for m in [&together, &apart] {
            m.apply(Some(1), &[register_op(9, "pg", 0)], false).unwrap();
        }
        let rec = record_op(&mark(0, 0, 1), "t", 1, "id0", 100, 500_000, 0);
        let exp = expire_op(400_000);
        together
            .apply(Some(2), &[rec.clone(), exp.clone()], false)
            .unwrap();
        apart.apply(Some(2), &[rec], false).unwrap();
        apart.apply(Some(3), &[exp], false).unwrap();
        assert_eq!(
            together.dump().unwrap().tables,
            apart.dump().unwrap().tables
        );
        assert!(is_registered(together.meta().as_ref(), 9).unwrap());
    }

    #[test]
    fn the_standalone_rescan_point_is_kept() {
        let m = machine();
        assert_eq!(standalone_applied_below(m.meta().as_ref()).unwrap(), None);
        let op = record_op(&mark(0, 0, 1), "t", 0, "a", 0, 1, 4096);
        m.apply(None, std::slice::from_ref(&op), false).unwrap();
        assert_eq!(
            standalone_applied_below(m.meta().as_ref()).unwrap(),
            Some(4096)
        );
        // Also when the batch was recorded already.
        let mut again = op;
        if let Some(sluice_proto::v1::meta_op::Op::RecordSequence(r)) = again.op.as_mut() {
            r.applied_below = 8192;
        }
        m.apply(None, &[again], false).unwrap();
        assert_eq!(
            standalone_applied_below(m.meta().as_ref()).unwrap(),
            Some(8192)
        );
        // Not part of the replicated tables.
        assert!(m
            .dump()
            .unwrap()
            .tables
            .iter()
            .all(|t| t.entries.iter().all(|e| !e.key.starts_with(b"sys"))));
    }
}
