//! Queue locks of ordered consumption: a table of the replicated state. Key: group \0 topic \0
//! queue id (big endian); value: the holder and when its lease ends.
//!
//! Locks are replicated rather than kept in the master's memory so a failover does not stop
//! ordered consumption: the new master knows every holder, and holders simply renew with it.
//! (The alternative, a new master granting nothing until a whole lease has passed, would stall
//! every ordered queue for a lease after each failover.)
//!
//! Time: a lock op carries the proposing master's clock and term, and apply decides by them
//! alone (deterministic on every replica). Expiry times are judged by one master's clock at a
//! time: when the term changes, every lock still live by the old master's clock gets a whole
//! lease from the new master's, so a new master whose clock runs ahead cannot free a lock its
//! holder still believes it has. A holder stops processing at half the lease counted
//! from when it *sent* the request that granted or renewed it (before the broker's clock
//! started counting), so the broker frees a queue only after its holder has stopped.

use prost::Message as _;
use sluice_proto::v1::{LockClock, QueueLockOp, QueueLockValue, QueueRef};

use super::{table_key, Applied, Staged, TREE};
use crate::meta::{MetaError, MetaStore};

pub const TABLE: &str = "queue_locks";
/// One key: the [`LockClock`].
pub const CLOCK: &str = "lock_clock";

/// Most queues one op may name.
pub const MAX_QUEUES_PER_OP: usize = 4096;
/// Longest lease a master may grant.
pub const MAX_LEASE_MS: u64 = 3_600_000;
/// Longest client id.
pub const MAX_CLIENT_ID: usize = 256;

fn clock_key() -> Vec<u8> {
    table_key(CLOCK, b"clock")
}

fn prefix(group: &str) -> Vec<u8> {
    let mut k = table_key(TABLE, group.as_bytes());
    k.push(0);
    k
}

fn key(group: &str, topic: &str, queue_id: u32) -> Vec<u8> {
    let mut k = prefix(group);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&queue_id.to_be_bytes());
    k
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> MetaError {
    MetaError::Corrupt {
        tree: TREE.into(),
        reason: format!("{what}: {e}"),
    }
}

fn decode_value(v: &[u8]) -> Result<QueueLockValue, MetaError> {
    QueueLockValue::decode(v).map_err(|e| corrupt("queue lock", e))
}

fn read_clock(meta: &dyn MetaStore, staged: &Staged) -> Result<LockClock, MetaError> {
    match staged.get(meta, &clock_key())? {
        None => Ok(LockClock::default()),
        Some(v) => LockClock::decode(v.as_slice()).map_err(|e| corrupt("lock clock", e)),
    }
}

/// The holder of a queue's lock, lapsed or not (the offset fence: only the holder commits).
pub(super) fn holder(
    meta: &dyn MetaStore,
    staged: &Staged,
    group: &str,
    topic: &str,
    queue_id: u32,
) -> Result<Option<String>, MetaError> {
    match staged.get(meta, &key(group, topic, queue_id))? {
        None => Ok(None),
        Some(v) => Ok(Some(decode_value(&v)?.holder)),
    }
}

/// A lock op (see the module's notes on time).
pub fn lock_op(
    group: &str,
    client_id: &str,
    queues: &[QueueRef],
    release: bool,
    now_ms: i64,
    lease_ms: u64,
    term: u64,
) -> super::StateOp {
    super::StateOp {
        op: Some(sluice_proto::v1::meta_op::Op::QueueLock(QueueLockOp {
            group: group.to_string(),
            client_id: client_id.to_string(),
            queues: queues.to_vec(),
            release,
            now_ms,
            lease_ms,
            term,
        })),
    }
}

fn valid(op: &QueueLockOp) -> bool {
    sluice_proto::names::validate_group_name(&op.group).is_ok()
        && !op.client_id.is_empty()
        && op.client_id.len() <= MAX_CLIENT_ID
        && op.queues.len() <= MAX_QUEUES_PER_OP
        && (1..=MAX_LEASE_MS).contains(&op.lease_ms)
        && op
            .queues
            .iter()
            .all(|q| sluice_proto::names::validate_topic_name(&q.topic).is_ok())
}

pub(super) fn apply_lock(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    op: &QueueLockOp,
) -> Result<Applied, MetaError> {
    if !valid(op) {
        tracing::error!(group = %op.group, "skipping an invalid queue-lock operation");
        return Ok(Applied::Unchanged);
    }
    let lease = i64::try_from(op.lease_ms).unwrap_or(i64::MAX);
    let mut clock = read_clock(meta, staged)?;
    let mut changed = false;
    if op.term < clock.term {
        // Proposed by a master deposed since: its clock is not the one locks are judged by.
        if !op.release {
            return Ok(Applied::Unchanged);
        }
    } else {
        if op.term > clock.term {
            rebase(meta, staged, clock.high_ms, op.now_ms.saturating_add(lease))?;
            clock = LockClock {
                term: op.term,
                high_ms: op.now_ms,
            };
            changed = true;
        } else if op.now_ms > clock.high_ms {
            clock.high_ms = op.now_ms;
            changed = true;
        }
        if changed {
            staged.put(clock_key(), clock.encode_to_vec());
        }
    }
    // A clock stepping back within a term never makes a lease end sooner.
    let now = clock.high_ms.max(op.now_ms);
    for q in &op.queues {
        let k = key(&op.group, &q.topic, q.queue_id);
        let current = match staged.get(meta, &k)? {
            None => None,
            Some(v) => Some(decode_value(&v)?),
        };
        let mine = current.as_ref().is_some_and(|c| c.holder == op.client_id);
        if op.release {
            if mine {
                staged.delete(k);
                changed = true;
            }
            continue;
        }
        let free = current.as_ref().is_none_or(|c| c.expires_ms <= now);
        if mine || free {
            let v = QueueLockValue {
                holder: op.client_id.clone(),
                expires_ms: now.saturating_add(lease),
            };
            staged.put(k, v.encode_to_vec());
            changed = true;
        }
    }
    Ok(if changed {
        Applied::Changed
    } else {
        Applied::Unchanged
    })
}

/// A new master's first lock op: every lock live by the old clock (ending after the last time
/// it saw) ends no sooner than `until` by the new one.
fn rebase(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    old_high_ms: i64,
    until: i64,
) -> Result<(), MetaError> {
    for (k, v) in staged.scan_prefix(meta, &table_key(TABLE, b""))? {
        let mut lock = decode_value(&v)?;
        if lock.expires_ms > old_high_ms && lock.expires_ms < until {
            lock.expires_ms = until;
            staged.put(k, lock.encode_to_vec());
        }
    }
    Ok(())
}

/// Forgets the locks of a deleted topic, in every group.
pub(super) fn apply_delete_topic(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    topic: &str,
) -> Result<(), MetaError> {
    for (k, _) in staged.scan_prefix(meta, &table_key(TABLE, b""))? {
        if key_topic(&k) == Some(topic.as_bytes()) {
            staged.delete(k);
        }
    }
    Ok(())
}

/// The topic part of a lock key (group \0 topic \0 queue id).
fn key_topic(k: &[u8]) -> Option<&[u8]> {
    let rest = k.get(TABLE.len() + 1..)?;
    let g = rest.iter().position(|b| *b == 0)?;
    let rest = rest.get(g + 1..)?;
    let t = rest.iter().position(|b| *b == 0)?;
    rest.get(..t)
}

/// Forgets a group's locks (the group is deleted).
pub(super) fn apply_delete_group(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    group: &str,
) -> Result<bool, MetaError> {
    let keys: Vec<Vec<u8>> = staged
        .scan_prefix(meta, &prefix(group))?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let any = !keys.is_empty();
    for k in keys {
        staged.delete(k);
    }
    Ok(any)
}

/// One lock as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLock {
    pub topic: String,
    pub queue_id: u32,
    pub holder: String,
    pub expires_ms: i64,
}

/// Every lock of `group` (lapsed ones too), in queue order.
pub fn list(meta: &dyn MetaStore, group: &str) -> Result<Vec<QueueLock>, MetaError> {
    let p = prefix(group);
    let mut out = Vec::new();
    for (k, v) in meta.scan_prefix(TREE, &p)? {
        let bad = || corrupt("queue lock key", String::from_utf8_lossy(&k));
        let rest = k.get(p.len()..).ok_or_else(bad)?;
        let sep = rest.iter().position(|b| *b == 0).ok_or_else(bad)?;
        let topic = std::str::from_utf8(rest.get(..sep).ok_or_else(bad)?).map_err(|_| bad())?;
        let qid: [u8; 4] = rest
            .get(sep + 1..)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        let v = decode_value(&v)?;
        out.push(QueueLock {
            topic: topic.to_string(),
            queue_id: u32::from_be_bytes(qid),
            holder: v.holder,
            expires_ms: v.expires_ms,
        });
    }
    Ok(out)
}

/// The queues of `queues` that a lock op of `client_id` stamped `now_ms` with `lease_ms` granted
/// or renewed: held by it for a whole lease from `now_ms` at least. (An older grant that has
/// not run out yet does not count: the op may have been skipped, by a term change say, and
/// the holder would trust the answer for longer than the broker keeps the lock.)
pub fn granted(
    meta: &dyn MetaStore,
    group: &str,
    client_id: &str,
    queues: &[QueueRef],
    now_ms: i64,
    lease_ms: u64,
) -> Result<Vec<QueueRef>, MetaError> {
    let until = now_ms.saturating_add(i64::try_from(lease_ms).unwrap_or(i64::MAX));
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for q in queues {
        if !seen.insert((q.topic.as_str(), q.queue_id)) {
            continue;
        }
        if let Some(v) = meta.get(TREE, &key(group, &q.topic, q.queue_id))? {
            let v = decode_value(&v)?;
            if v.holder == client_id && v.expires_ms >= until {
                out.push(q.clone());
            }
        }
    }
    Ok(out)
}

/// True when another client holds `q`'s lock past `now_ms` (the master's quick refusal before
/// it proposes anything).
pub fn held_by_other(
    meta: &dyn MetaStore,
    group: &str,
    client_id: &str,
    q: &QueueRef,
    now_ms: i64,
) -> Result<bool, MetaError> {
    Ok(match meta.get(TREE, &key(group, &q.topic, q.queue_id))? {
        None => false,
        Some(v) => {
            let v = decode_value(&v)?;
            v.holder != client_id && v.expires_ms > now_ms
        }
    })
}

#[cfg(test)]
#[path = "locks_tests.rs"]
mod tests;
