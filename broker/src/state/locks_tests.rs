//! Lock leases on a fake clock: the ops carry the time, so each test sets it.

use std::sync::Arc;

use sluice_proto::v1::QueueRef;
use tokio::sync::Notify;

use super::*;
use crate::meta::MemMeta;
use crate::state::{commit_offsets_at, CommittedOffset, StateMachine};

const LEASE: u64 = 30;

fn machine() -> StateMachine {
    StateMachine::open(Arc::new(MemMeta::default()), Arc::new(Notify::new())).unwrap()
}

fn q(queue_id: u32) -> QueueRef {
    QueueRef {
        topic: "t".into(),
        queue_id,
    }
}

/// Client `c` asks for queues `qs` at `now` in `term`; returns those it holds after.
fn take(m: &StateMachine, c: &str, qs: &[u32], now: i64, term: u64) -> Vec<u32> {
    let queues: Vec<QueueRef> = qs.iter().map(|i| q(*i)).collect();
    m.apply(
        None,
        &[lock_op("g", c, &queues, false, now, LEASE, term)],
        false,
    )
    .unwrap();
    granted(m.meta().as_ref(), "g", c, &queues, now, LEASE)
        .unwrap()
        .into_iter()
        .map(|r| r.queue_id)
        .collect()
}

fn give_up(m: &StateMachine, c: &str, qs: &[u32], now: i64, term: u64) {
    let queues: Vec<QueueRef> = qs.iter().map(|i| q(*i)).collect();
    m.apply(
        None,
        &[lock_op("g", c, &queues, true, now, LEASE, term)],
        false,
    )
    .unwrap();
}

fn holders(m: &StateMachine) -> Vec<(u32, String, i64)> {
    list(m.meta().as_ref(), "g")
        .unwrap()
        .into_iter()
        .map(|l| (l.queue_id, l.holder, l.expires_ms))
        .collect()
}

#[test]
fn one_holder_at_a_time_until_the_lease_runs_out() {
    let m = machine();
    assert_eq!(take(&m, "a", &[0, 1], 100, 1), vec![0, 1]);
    // Another client gets nothing while the lease lasts, even a millisecond before its end.
    assert_eq!(take(&m, "b", &[0, 1, 2], 129, 1), vec![2]);
    // The holder renews queue 0 only (by the highest time seen: 129); queue 1 lapses at 130
    // and goes to b.
    assert_eq!(take(&m, "a", &[0], 125, 1), vec![0]);
    assert_eq!(take(&m, "b", &[0, 1], 130, 1), vec![1]);
    assert_eq!(
        holders(&m),
        vec![
            (0, "a".into(), 159),
            (1, "b".into(), 160),
            (2, "b".into(), 159)
        ]
    );
    // Only the holder can give a queue up; then anyone takes it at once.
    give_up(&m, "b", &[0], 131, 1);
    assert_eq!(take(&m, "c", &[0], 131, 1), Vec::<u32>::new());
    give_up(&m, "a", &[0], 132, 1);
    assert_eq!(take(&m, "c", &[0], 132, 1), vec![0]);
}

#[test]
fn a_clock_stepping_back_never_shortens_a_lease() {
    let m = machine();
    assert_eq!(take(&m, "a", &[0], 100, 1), vec![0]);
    // The master's clock jumps back 50 ms: judged by the highest time seen, the lease still
    // ends at 130, and a renewal counts from 100, not 50.
    assert_eq!(take(&m, "b", &[0], 50, 1), Vec::<u32>::new());
    take(&m, "a", &[0], 50, 1);
    assert_eq!(holders(&m), vec![(0, "a".into(), 130)]);
    assert_eq!(take(&m, "b", &[0], 130, 1), vec![0]);
}

#[test]
fn a_new_master_with_a_clock_far_ahead_frees_no_lock_early() {
    let m = machine();
    // Queue 2's lease lapses under the old master (its holder stopped long ago).
    assert_eq!(take(&m, "old", &[2], 50, 1), vec![2]);
    assert_eq!(take(&m, "a", &[0, 1], 100, 1), vec![0, 1]);
    // Term 2's master runs 10 s ahead: by its clock every lease ended long ago, but a term
    // change gives live locks a whole lease from its first op.
    assert_eq!(take(&m, "b", &[0, 1], 10_000, 2), Vec::<u32>::new());
    assert_eq!(take(&m, "a", &[0], 10_010, 2), vec![0]);
    assert_eq!(take(&m, "b", &[1], 10_029, 2), Vec::<u32>::new());
    assert_eq!(take(&m, "b", &[1], 10_030, 2), vec![1]);
    // The lock that had lapsed by the old clock is not brought back.
    assert_eq!(take(&m, "b", &[2], 10_030, 2), vec![2]);
}

#[test]
fn a_deposed_masters_late_op_grants_nothing_but_may_release() {
    let m = machine();
    assert_eq!(take(&m, "a", &[0], 100, 2), vec![0]);
    // Proposed in term 1, applied after term 2's first op.
    assert_eq!(take(&m, "b", &[1], 500, 1), Vec::<u32>::new());
    assert_eq!(holders(&m), vec![(0, "a".into(), 130)]);
    // The holder's own renewal from that master is skipped too, and its answer says so (the
    // lock it still has ends sooner than a renewal's would).
    assert_eq!(take(&m, "a", &[0], 110, 1), Vec::<u32>::new());
    give_up(&m, "a", &[0], 90, 1);
    assert!(holders(&m).is_empty());
}

#[test]
fn only_the_holder_moves_an_ordered_queues_offset() {
    let m = machine();
    let at = |offset| {
        vec![CommittedOffset {
            topic: "t".into(),
            queue_id: 0,
            offset,
        }]
    };
    // Nobody holds it: an owned commit is ignored, a plain one is not.
    m.apply(None, &[commit_offsets_at("g", &at(5), None, "a")], false)
        .unwrap();
    assert_eq!(m.offsets.get("g", "t", 0).unwrap(), None);
    m.apply(None, &[commit_offsets_at("g", &at(6), None, "")], false)
        .unwrap();
    take(&m, "a", &[0], 100, 1);
    m.apply(None, &[commit_offsets_at("g", &at(10), None, "a")], false)
        .unwrap();
    assert_eq!(m.offsets.get("g", "t", 0).unwrap(), Some(10));
    // a's lease ran out and b took the queue: a's late commit does not move b's position.
    take(&m, "b", &[0], 200, 1);
    m.apply(None, &[commit_offsets_at("g", &at(20), None, "b")], false)
        .unwrap();
    m.apply(None, &[commit_offsets_at("g", &at(12), None, "a")], false)
        .unwrap();
    assert_eq!(m.offsets.get("g", "t", 0).unwrap(), Some(20));
}

#[test]
fn deleting_a_group_drops_its_locks_and_bad_ops_change_nothing() {
    let m = machine();
    take(&m, "a", &[0], 100, 1);
    let bad = [
        lock_op("g", "", &[q(1)], false, 100, LEASE, 1),
        lock_op("g", "a", &[q(1)], false, 100, 0, 1),
        lock_op("g", "a", &[q(1)], false, 100, MAX_LEASE_MS + 1, 1),
        lock_op("bad\0group", "a", &[q(1)], false, 100, LEASE, 1),
    ];
    let r = m.apply(None, &bad, false).unwrap();
    assert!(r.iter().all(|a| *a == Applied::Unchanged), "{r:?}");
    assert_eq!(holders(&m).len(), 1);
    m.apply(None, &[crate::state::delete_group_op("g")], false)
        .unwrap();
    assert!(holders(&m).is_empty());
}

#[test]
fn deleting_a_topic_drops_its_locks_in_every_group() {
    let m = machine();
    take(&m, "a", &[0, 1], 100, 1);
    let other = QueueRef {
        topic: "u".into(),
        queue_id: 0,
    };
    m.apply(
        None,
        &[lock_op("g", "a", &[other], false, 100, LEASE, 1)],
        false,
    )
    .unwrap();
    m.apply(
        None,
        &[lock_op("h", "b", &[q(0)], false, 100, LEASE, 1)],
        false,
    )
    .unwrap();
    let upsert = |name: &str| {
        crate::state::upsert_topic_op(sluice_proto::v1::TopicConfig {
            name: name.into(),
            read_queues: 2,
            write_queues: 2,
            perm: sluice_proto::perm::READ_WRITE,
        })
    };
    m.apply(None, &[upsert("t"), upsert("u")], false).unwrap();
    m.apply(None, &[crate::state::delete_topic_op("t")], false)
        .unwrap();
    let left: Vec<String> = list(m.meta().as_ref(), "g")
        .unwrap()
        .into_iter()
        .chain(list(m.meta().as_ref(), "h").unwrap())
        .map(|l| l.topic)
        .collect();
    assert_eq!(left, vec!["u".to_string()]);
}
