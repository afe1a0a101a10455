//! Transactions: the open ones in the `transactions` table, keyed by transaction id with a
//! `TxRecord` (producer group, creation time, where its half messages are, checks so far,
//! parked): created by the first half-message entry, checked by the master's check-back
//! entries. Resolving one (the entry that makes its messages visible, or a rollback entry)
//! moves it to the resolved ones ([`super::tx_ended`]), where it stays a while (so a retried
//! `EndTransaction` still gets its answer) without weighing on the scans of open ones.
//!
//! The open transactions are also kept in memory ([`super::tx_index`]), changed by the same
//! apply calls.

use prost::Message as _;
use sluice_proto::v1::{TxCheckedOp, TxEnded, TxForgetOp, TxHalfOp, TxRecord, TxResolveOp};

use super::tx_ended::{EndedIndex, Pending};
use super::tx_index::{Changes, OpenIndex, OpenTx};
use super::{table_key, Applied, Staged, TREE};
use crate::meta::{MetaError, MetaStore};

pub const TABLE: &str = "transactions";

/// `TxRecord.resolution` values (`TransactionResolution`).
pub const OPEN: i32 = 0;
pub const COMMITTED: i32 = 1;
pub const ROLLED_BACK: i32 = 2;

/// Most half-message sends one transaction keeps (a record holds one entry per send).
pub const MAX_HALVES: usize = 1_000;

fn key(tx_id: &str) -> Vec<u8> {
    table_key(TABLE, tx_id.as_bytes())
}

fn decode(v: &[u8]) -> Result<TxRecord, MetaError> {
    TxRecord::decode(v).map_err(|e| MetaError::Corrupt {
        tree: TREE.into(),
        reason: format!("transaction: {e}"),
    })
}

fn get_staged(
    meta: &dyn MetaStore,
    staged: &Staged,
    key: &[u8],
) -> Result<Option<TxRecord>, MetaError> {
    staged.get(meta, key)?.map(|v| decode(&v)).transpose()
}

/// The open record of `id` as this apply call sees it; one the store does not hold (the
/// in-memory index of the table says so) is not looked up there.
fn get_open(
    meta: &dyn MetaStore,
    staged: &Staged,
    tx: &TxApply<'_>,
    id: &str,
) -> Result<Option<TxRecord>, MetaError> {
    let k = key(id);
    if !staged.touched(&k) && !tx.open.contains(id) {
        return Ok(None);
    }
    get_staged(meta, staged, &k)
}

/// What the transaction ops of one apply call change besides the staged writes.
pub(super) struct TxApply<'a> {
    pub open: &'a OpenIndex,
    pub ended: &'a EndedIndex,
    pub changes: Changes,
    pub pending: Pending,
}

/// A transaction as the state holds it (open or resolved).
pub fn get(
    meta: &dyn MetaStore,
    ended: &EndedIndex,
    tx_id: &str,
) -> Result<Option<TxRecord>, MetaError> {
    match meta.get(TREE, &key(tx_id))? {
        Some(v) => Ok(Some(decode(&v)?)),
        None => ended.find(meta, tx_id),
    }
}

/// The open transactions, by id.
pub fn list_open(meta: &dyn MetaStore) -> Result<Vec<(String, TxRecord)>, MetaError> {
    let prefix = table_key(TABLE, b"");
    meta.scan_prefix(TREE, &prefix)?
        .into_iter()
        .map(|(k, v)| {
            let id =
                String::from_utf8_lossy(k.get(prefix.len()..).unwrap_or_default()).into_owned();
            Ok((id, decode(&v)?))
        })
        .collect()
}

/// Every transaction, open and resolved, by id.
pub fn list(
    meta: &dyn MetaStore,
    ended: &EndedIndex,
) -> Result<Vec<(String, TxRecord)>, MetaError> {
    let mut all = list_open(meta)?;
    all.extend(ended.list(meta)?);
    Ok(all)
}

fn is_resolved(
    meta: &dyn MetaStore,
    staged: &Staged,
    tx: &TxApply<'_>,
    tx_id: &str,
) -> Result<bool, MetaError> {
    Ok(tx
        .ended
        .find_staged(meta, staged, &tx.pending, tx_id)?
        .is_some())
}

pub(super) fn apply_half(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    op: &TxHalfOp,
    tx: &mut TxApply<'_>,
) -> Result<Applied, MetaError> {
    if op.transaction_id.is_empty() || op.count == 0 {
        tracing::error!("skipping an invalid half-message record");
        return Ok(Applied::Unchanged);
    }
    let k = key(&op.transaction_id);
    let open = get_open(meta, staged, tx, &op.transaction_id)?;
    let created = open.is_none();
    // A late send to a resolved transaction (the proposer refuses them; the log decides).
    if open.is_none() && is_resolved(meta, staged, tx, &op.transaction_id)? {
        return Ok(Applied::Unchanged);
    }
    let mut r = match open {
        Some(r) => r,
        None => TxRecord {
            producer_group: op.producer_group.clone(),
            created_ms: op.at_ms,
            ..TxRecord::default()
        },
    };
    // A send retried without a producer sequence may be stored twice: the first copy counts,
    // the other stays a half message no commit copies.
    let again = |h: &TxHalfOp| {
        h.locator == op.locator
            || (!op.first_message_id.is_empty() && h.first_message_id == op.first_message_id)
    };
    if r.halves.iter().any(again) || r.halves.len() >= MAX_HALVES {
        return Ok(Applied::Unchanged);
    }
    // The record names the transaction and its group once, not in each send.
    r.halves.push(TxHalfOp {
        topic: op.topic.clone(),
        queue_id: op.queue_id,
        locator: op.locator,
        count: op.count,
        bytes: op.bytes,
        at_ms: op.at_ms,
        first_message_id: op.first_message_id.clone(),
        ..TxHalfOp::default()
    });
    tx.changes
        .push((op.transaction_id.clone(), Some(OpenTx::of(&r))));
    match created {
        true => staged.put_new(k, r.encode_to_vec()),
        false => staged.put(k, r.encode_to_vec()),
    }
    Ok(Applied::Changed)
}

/// Resolves transactions, the first resolution in the log deciding; the resolved ones go to
/// the chunks of the resolved table.
pub(super) fn apply_ends(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    ends: &[TxResolveOp],
    tx: &mut TxApply<'_>,
) -> Result<Applied, MetaError> {
    let mut chunk: Vec<TxEnded> = Vec::new();
    for op in ends {
        if op.resolution != COMMITTED && op.resolution != ROLLED_BACK {
            tracing::error!(tx = %op.transaction_id, "skipping a resolution that is neither commit nor rollback");
            continue;
        }
        let k = key(&op.transaction_id);
        let open = get_open(meta, staged, tx, &op.transaction_id)?;
        if open.is_none()
            && (chunk.iter().any(|e| e.transaction_id == op.transaction_id)
                || is_resolved(meta, staged, tx, &op.transaction_id)?)
        {
            continue;
        }
        let mut r = match open {
            Some(r) => {
                tx.changes.push((op.transaction_id.clone(), None));
                staged.delete(k);
                r
            }
            // Never opened (a rollback of a transaction whose sends all failed): remembered as
            // resolved.
            None => TxRecord {
                created_ms: op.at_ms,
                ..TxRecord::default()
            },
        };
        r.resolution = op.resolution;
        r.resolved_ms = op.at_ms;
        r.expired = op.expired && op.resolution == ROLLED_BACK;
        // What a resolved one is asked for: its topics and sizes (not where its halves are).
        for h in &mut r.halves {
            *h = TxHalfOp {
                topic: std::mem::take(&mut h.topic),
                queue_id: h.queue_id,
                count: h.count,
                bytes: h.bytes,
                ..TxHalfOp::default()
            };
        }
        chunk.push(TxEnded {
            transaction_id: op.transaction_id.clone(),
            record: Some(r),
        });
    }
    if chunk.is_empty() {
        return Ok(Applied::Unchanged);
    }
    tx.ended.add_ends(meta, staged, &mut tx.pending, chunk)?;
    Ok(Applied::Changed)
}

pub(super) fn apply_checked(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    op: &TxCheckedOp,
    tx: &mut TxApply<'_>,
) -> Result<Applied, MetaError> {
    let mut changed = Applied::Unchanged;
    for id in &op.transaction_ids {
        let Some(mut r) = get_open(meta, staged, tx, id)? else {
            continue;
        };
        if r.parked {
            continue;
        }
        r.checks = r.checks.saturating_add(1);
        r.last_check_ms = op.at_ms;
        r.parked = r.checks >= op.max_checks.max(1);
        tx.changes.push((id.clone(), Some(OpenTx::of(&r))));
        staged.put(key(id), r.encode_to_vec());
        changed = Applied::Changed;
    }
    Ok(changed)
}

pub(super) fn apply_forget(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    op: &TxForgetOp,
    tx: &mut TxApply<'_>,
) -> Result<Applied, MetaError> {
    Ok(match tx.ended.forget(meta, staged, &mut tx.pending, op)? {
        true => Applied::Changed,
        false => Applied::Unchanged,
    })
}

fn op(o: sluice_proto::v1::meta_op::Op) -> super::StateOp {
    super::StateOp { op: Some(o) }
}

pub fn half_op(h: TxHalfOp) -> super::StateOp {
    op(sluice_proto::v1::meta_op::Op::TxHalf(h))
}

pub fn resolve_op(tx_id: &str, resolution: i32, at_ms: i64) -> super::StateOp {
    op(sluice_proto::v1::meta_op::Op::TxResolve(TxResolveOp {
        transaction_id: tx_id.to_string(),
        resolution,
        at_ms,
        expired: false,
    }))
}

/// The master rolls back a transaction open longer than `transaction_timeout`.
pub fn expire_op(tx_id: &str, at_ms: i64) -> super::StateOp {
    op(sluice_proto::v1::meta_op::Op::TxResolve(TxResolveOp {
        transaction_id: tx_id.to_string(),
        resolution: ROLLED_BACK,
        at_ms,
        expired: true,
    }))
}

pub fn checked_op(ids: Vec<String>, at_ms: i64, max_checks: u32) -> super::StateOp {
    op(sluice_proto::v1::meta_op::Op::TxChecked(TxCheckedOp {
        transaction_ids: ids,
        at_ms,
        max_checks,
    }))
}

/// Forgets transactions resolved before the cutoff, and all but the newest `keep_at_most`
/// (0: no limit by count).
pub fn forget_op(resolved_before_ms: i64, keep_at_most: u64) -> super::StateOp {
    op(sluice_proto::v1::meta_op::Op::TxForget(TxForgetOp {
        resolved_before_ms,
        keep_at_most,
    }))
}

/// Several ends written together (one chunk of the resolved table).
pub fn ends_op(ends: Vec<TxResolveOp>) -> super::StateOp {
    op(sluice_proto::v1::meta_op::Op::TxEnds(
        sluice_proto::v1::TxEndsOp { ends },
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use tokio::sync::Notify;

    use super::*;
    use crate::meta::MemMeta;
    use crate::state::tx_index::OpenIndex;
    use crate::state::StateMachine;

    fn machine() -> StateMachine {
        StateMachine::open(Arc::new(MemMeta::default()), Arc::new(Notify::new())).unwrap()
    }

    fn half(tx: &str, group: &str, locator: u64, at: i64) -> crate::state::StateOp {
        half_op(TxHalfOp {
            transaction_id: tx.into(),
            producer_group: group.into(),
            topic: "t".into(),
            queue_id: 0,
            locator,
            count: 2,
            bytes: 100,
            at_ms: at,
            first_message_id: format!("m{locator}"),
        })
    }

    fn rec(m: &StateMachine, tx: &str) -> TxRecord {
        get(m.meta().as_ref(), &m.tx_ended, tx).unwrap().unwrap()
    }

    #[test]
    fn the_open_index_counts_open_and_parked_ones_only() {
        let m = machine();
        m.apply(
            Some(1),
            &[
                half("a", "g", 10, 5),
                half("b", "g", 11, 5),
                half("c", "h", 12, 5),
            ],
            false,
        )
        .unwrap();
        m.apply(Some(2), &[checked_op(vec!["b".into()], 6, 1)], false)
            .unwrap();
        m.apply(Some(3), &[resolve_op("c", COMMITTED, 7)], false)
            .unwrap();
        assert_eq!(
            m.tx_open.counts(),
            (2, 1),
            "a and b open, b parked; c resolved"
        );
        m.apply(Some(4), &[resolve_op("b", ROLLED_BACK, 8)], false)
            .unwrap();
        assert_eq!(m.tx_open.counts(), (1, 0), "a parked one resolved by hand");
        let reloaded = OpenIndex::load(m.meta().as_ref()).unwrap();
        assert_eq!(reloaded.counts(), m.tx_open.counts());
    }

    #[test]
    fn a_send_stored_twice_counts_once() {
        let m = machine();
        let mut again = half("a", "g", 12, 7);
        if let Some(sluice_proto::v1::meta_op::Op::TxHalf(h)) = again.op.as_mut() {
            h.first_message_id = "m10".into();
        }
        m.apply(
            Some(1),
            &[half("a", "g", 10, 5), half("a", "g", 11, 6)],
            false,
        )
        .unwrap();
        m.apply(Some(2), std::slice::from_ref(&again), false)
            .unwrap();
        let r = rec(&m, "a");
        let locators: Vec<u64> = r.halves.iter().map(|h| h.locator).collect();
        assert_eq!(
            locators,
            vec![10, 11],
            "the retry's copy is not part of the transaction"
        );
    }

    #[test]
    fn a_transaction_opens_with_its_first_half_and_is_decided_once() {
        let m = machine();
        m.apply(
            Some(1),
            &[half("a", "g", 10, 5), half("a", "g", 11, 6)],
            false,
        )
        .unwrap();
        // The same entry applied again (a replay) adds nothing.
        m.apply(Some(2), &[half("a", "g", 11, 7)], false).unwrap();
        let r = rec(&m, "a");
        assert_eq!((r.halves.len(), r.created_ms, r.resolution), (2, 5, OPEN));
        assert_eq!(m.tx_open.get("g"), 1);
        m.apply(Some(3), &[resolve_op("a", COMMITTED, 9)], false)
            .unwrap();
        assert_eq!(m.tx_open.get("g"), 0);
        // The first resolution decides; a late half of it is ignored.
        m.apply(
            Some(4),
            &[resolve_op("a", ROLLED_BACK, 10), half("a", "g", 12, 11)],
            false,
        )
        .unwrap();
        let r = rec(&m, "a");
        assert_eq!(
            (r.resolution, r.resolved_ms, r.halves.len()),
            (COMMITTED, 9, 2)
        );
        // A rollback of a transaction never opened is remembered.
        m.apply(
            Some(5),
            &[resolve_op("b", ROLLED_BACK, 12), half("b", "g", 20, 13)],
            false,
        )
        .unwrap();
        assert_eq!(rec(&m, "b").resolution, ROLLED_BACK);
        assert!(rec(&m, "b").halves.is_empty());
        assert_eq!(m.tx_open.get("g"), 0);
        // Forgotten once resolved long enough.
        m.apply(Some(6), &[forget_op(10, 0)], false).unwrap();
        assert!(get(m.meta().as_ref(), &m.tx_ended, "a").unwrap().is_none());
        assert!(get(m.meta().as_ref(), &m.tx_ended, "b").unwrap().is_some());
    }

    #[test]
    fn checks_count_up_to_parking_and_skip_resolved_ones() {
        let m = machine();
        m.apply(
            Some(1),
            &[half("a", "g", 1, 0), half("b", "g", 2, 0)],
            false,
        )
        .unwrap();
        m.apply(Some(2), &[resolve_op("b", ROLLED_BACK, 1)], false)
            .unwrap();
        for i in 0..5 {
            let ids = vec!["a".to_string(), "b".to_string(), "none".to_string()];
            m.apply(Some(3 + i), &[checked_op(ids, 100 + i as i64, 3)], false)
                .unwrap();
        }
        let a = rec(&m, "a");
        assert_eq!((a.checks, a.last_check_ms, a.parked), (3, 102, true));
        assert_eq!(rec(&m, "b").checks, 0);
        // Parked transactions stay open (an operator resolves them).
        assert_eq!(m.tx_open.get("g"), 1);
    }

    fn op_strategy() -> impl Strategy<Value = crate::state::StateOp> {
        let tx = prop::sample::select(vec!["a", "b", "c", "d"]);
        let group = prop::sample::select(vec!["g1", "g2"]);
        prop_oneof![
            (tx.clone(), group, 0u64..6, 0i64..50).prop_map(|(t, g, l, at)| half(t, g, l, at)),
            (tx.clone(), prop::bool::ANY, 0i64..50).prop_map(|(t, c, at)| resolve_op(
                t,
                if c { COMMITTED } else { ROLLED_BACK },
                at
            )),
            (prop::collection::vec(tx, 0..3), 0i64..50).prop_map(|(ids, at)| checked_op(
                ids.into_iter().map(String::from).collect(),
                at,
                2
            )),
            (0i64..50, 0u64..3).prop_map(|(at, keep)| forget_op(at, keep)),
        ]
    }

    proptest! {
        /// The open index kept while applying (one op per call, or all in one call) is the
        /// index of the table, and a snapshot's restore gives the same index.
        #[test]
        fn the_open_index_follows_the_table(
            ops in prop::collection::vec(op_strategy(), 0..40),
            one_call in prop::bool::ANY,
        ) {
            let m = machine();
            if one_call {
                m.apply(Some(1), &ops, false).unwrap();
            } else {
                for (i, op) in ops.iter().enumerate() {
                    m.apply(Some(i as u64 + 1), std::slice::from_ref(op), false).unwrap();
                }
            }
            let fresh = OpenIndex::load(m.meta().as_ref()).unwrap();
            let sorted = |i: &OpenIndex| {
                let mut v = i.all();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v
            };
            prop_assert_eq!(sorted(&m.tx_open), sorted(&fresh));
            prop_assert_eq!(m.tx_open.first_locators(0, 100), fresh.first_locators(0, 100));
            for g in ["g1", "g2"] {
                prop_assert_eq!(m.tx_open.get(g), fresh.get(g));
            }
            let twin = machine();
            twin.restore(&m.dump().unwrap()).unwrap();
            prop_assert_eq!(sorted(&twin.tx_open), sorted(&m.tx_open));
        }
    }
}
