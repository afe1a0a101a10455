use std::sync::Arc;

use proptest::prelude::*;
use sluice_proto::perm;
use sluice_proto::v1::{CommitOffsetsOp, OffsetEntry, StateDump};
use tokio::sync::Notify;

use super::*;
use crate::meta::MemMeta;

fn machine() -> StateMachine {
    StateMachine::open(Arc::new(MemMeta::default()), Arc::new(Notify::new())).unwrap()
}

fn topic(name: &str, q: u32) -> TopicConfig {
    TopicConfig {
        name: name.into(),
        read_queues: q,
        write_queues: q,
        perm: perm::READ_WRITE,
    }
}

fn upsert(name: &str, q: u32) -> StateOp {
    StateOp {
        op: Some(Op::UpsertTopic(topic(name, q))),
    }
}

fn delete(name: &str) -> StateOp {
    StateOp {
        op: Some(Op::DeleteTopic(name.into())),
    }
}

fn commit(group: &str, topic: &str, queue_id: u32, offset: u64) -> StateOp {
    StateOp {
        op: Some(Op::CommitOffsets(CommitOffsetsOp {
            group: group.into(),
            offsets: vec![OffsetEntry {
                topic: topic.into(),
                queue_id,
                offset,
            }],
            reset_epoch: None,
            lock_owner: String::new(),
        })),
    }
}

fn set_group_op(group: &str, max_retries: u32, backoff_ms: Vec<u64>) -> StateOp {
    set_group_config_op(sluice_proto::v1::GroupConfig {
        group: group.into(),
        max_retries,
        backoff_ms,
    })
}

#[test]
fn group_configs_are_a_table_with_defaults() {
    let m = machine();
    assert_eq!(m.retry_policy("g").unwrap(), groups::RetryPolicy::default());
    m.apply(None, &[set_group_op("g", 3, vec![])], false)
        .unwrap();
    let p = m.retry_policy("g").unwrap();
    assert_eq!(p.max_retries, 3);
    assert_eq!(p.delay_ms(1), 10_000);
    assert_eq!(p.delay_ms(16), 7_200_000);
    assert_eq!(p.delay_ms(99), 7_200_000);
    m.apply(None, &[set_group_op("g", 0, vec![5, 7])], false)
        .unwrap();
    let p = m.retry_policy("g").unwrap();
    assert_eq!(
        (p.max_retries, p.delay_ms(1), p.delay_ms(2), p.delay_ms(3)),
        (0, 5, 7, 7)
    );
    assert_eq!(m.dump().unwrap().tables.len(), TABLES.len());
}

/// The tables of a dump, without the index (two machines at the same state may differ there).
fn tables(d: &StateDump) -> Vec<StateTable> {
    d.tables.clone()
}

#[test]
fn ops_apply_in_order_within_one_batch() {
    let m = machine();
    let r = m
        .apply(
            Some(3),
            &[
                upsert("a", 4),
                upsert("a", 4),
                delete("a"),
                upsert("b", 2),
                commit("g", "b", 1, 9),
            ],
            false,
        )
        .unwrap();
    use Applied::*;
    assert_eq!(r, vec![Changed, Unchanged, Changed, Changed, Changed]);
    assert!(m.topics.get("a").is_none());
    assert_eq!(m.topics.get("b").unwrap().write_queues, 2);
    assert_eq!(m.offsets.get("g", "b", 1).unwrap(), Some(9));
    assert_eq!(m.applied_index().unwrap(), 3);
    // Invalid ops are skipped, not fatal; the index still moves.
    let r = m
        .apply(
            Some(4),
            &[upsert("bad name!", 1), StateOp { op: None }],
            true,
        )
        .unwrap();
    assert_eq!(r, vec![Unchanged, Unchanged]);
    assert_eq!(m.applied_index().unwrap(), 4);
    m.apply_encoded(Some(5), &[bytes::Bytes::from_static(b"\xff\xff")], false)
        .unwrap();
    assert_eq!(m.applied_index().unwrap(), 5);
}

#[test]
fn a_deleted_key_stays_deleted_across_a_snapshot() {
    let leader = machine();
    leader
        .apply(Some(1), &[upsert("keep", 1), upsert("gone", 1)], false)
        .unwrap();
    let follower = machine();
    follower
        .apply(Some(1), &[upsert("keep", 1), upsert("gone", 1)], false)
        .unwrap();
    follower
        .apply(Some(2), &[commit("g", "gone", 0, 5)], false)
        .unwrap();
    leader.apply(Some(2), &[delete("gone")], false).unwrap();
    let dump = leader.dump().unwrap();
    assert_eq!(dump.applied_index, 2);
    follower.restore(&dump).unwrap();
    assert!(follower.topics.get("gone").is_none());
    assert_eq!(follower.offsets.get("g", "gone", 0).unwrap(), None);
    assert_eq!(tables(&follower.dump().unwrap()), tables(&dump));
    assert_eq!(follower.applied_index().unwrap(), 2);
}

#[test]
fn earlier_trees_are_moved_into_the_state_tree() {
    let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
    meta.put(OLD_TOPICS_TREE, b"t", &topic("t", 3).encode_to_vec())
        .unwrap();
    let mut old_key = b"g\0t\0".to_vec();
    old_key.extend_from_slice(&2u32.to_be_bytes());
    meta.put(OLD_OFFSETS_TREE, &old_key, &7u64.to_be_bytes())
        .unwrap();
    meta.put(OLD_REPLICATION_TREE, b"applied_index", &11u64.to_be_bytes())
        .unwrap();
    let m = StateMachine::open(meta.clone(), Arc::new(Notify::new())).unwrap();
    assert_eq!(m.topics.get("t").unwrap().read_queues, 3);
    assert_eq!(m.offsets.get("g", "t", 2).unwrap(), Some(7));
    assert_eq!(m.applied_index().unwrap(), 11);
    assert!(meta.scan_prefix(OLD_TOPICS_TREE, b"").unwrap().is_empty());
    // Opening again changes nothing.
    let again = StateMachine::open(meta, Arc::new(Notify::new())).unwrap();
    assert_eq!(tables(&again.dump().unwrap()), tables(&m.dump().unwrap()));
}

#[test]
fn a_commit_from_before_a_reset_is_ignored() {
    let m = StateMachine::open(Arc::new(MemMeta::default()), Arc::new(Notify::new())).unwrap();
    let at = |o| {
        [CommittedOffset {
            topic: "t".into(),
            queue_id: 0,
            offset: o,
        }]
    };
    m.apply(
        Some(1),
        &[crate::state::commit_offsets_at("g", &at(50), Some(0), "")],
        false,
    )
    .unwrap();
    assert_eq!(m.offsets.reset_epoch("g").unwrap(), 0);
    m.apply(
        Some(2),
        &[crate::state::reset_offsets_op("g", &at(0))],
        false,
    )
    .unwrap();
    assert_eq!(m.offsets.reset_epoch("g").unwrap(), 1);
    // A consumer that had not heard of the reset commits its old position: ignored.
    m.apply(
        Some(3),
        &[crate::state::commit_offsets_at("g", &at(60), Some(0), "")],
        false,
    )
    .unwrap();
    assert_eq!(m.offsets.get("g", "t", 0).unwrap(), Some(0));
    // One that knows the new epoch, or that does not follow resets, commits.
    m.apply(
        Some(4),
        &[crate::state::commit_offsets_at("g", &at(5), Some(1), "")],
        false,
    )
    .unwrap();
    assert_eq!(m.offsets.get("g", "t", 0).unwrap(), Some(5));
    m.apply(Some(5), &[commit("g", "t", 0, 7)], false).unwrap();
    assert_eq!(m.offsets.get("g", "t", 0).unwrap(), Some(7));
    // Another group's epoch is its own.
    assert_eq!(m.offsets.reset_epoch("h").unwrap(), 0);
    // Deleting the group forgets its offsets and raises the epoch: a live member's commit
    // made before it heard does not bring them back.
    m.apply(Some(6), &[crate::state::delete_group_op("g")], false)
        .unwrap();
    assert_eq!(m.offsets.get("g", "t", 0).unwrap(), None);
    assert_eq!(m.offsets.reset_epoch("g").unwrap(), 2);
    m.apply(
        Some(7),
        &[crate::state::commit_offsets_at("g", &at(9), Some(1), "")],
        false,
    )
    .unwrap();
    assert_eq!(m.offsets.get("g", "t", 0).unwrap(), None);
    // A group nobody knows: nothing to delete, no epoch created.
    let r = m
        .apply(Some(8), &[crate::state::delete_group_op("nobody")], false)
        .unwrap();
    assert_eq!(r, vec![Applied::Unchanged]);
    assert_eq!(m.offsets.reset_epoch("nobody").unwrap(), 0);
}

fn qref(topic: &str, queue_id: u32) -> sluice_proto::v1::QueueRef {
    sluice_proto::v1::QueueRef {
        topic: topic.into(),
        queue_id,
    }
}

fn op_strategy() -> impl Strategy<Value = StateOp> {
    let name = prop::sample::select(vec!["a", "b", "c", "%RETRY%g"]);
    prop_oneof![
        (name.clone(), 1u32..4).prop_map(|(n, q)| upsert(n, q)),
        name.clone().prop_map(delete),
        (
            prop::sample::select(vec!["g1", "g2"]),
            name,
            0u32..3,
            0u64..100
        )
            .prop_map(|(g, t, q, o)| commit(g, t, q, o)),
        // Commits that carry a reset epoch, and resets.
        (
            prop::sample::select(vec!["g1", "g2"]),
            0u32..3,
            0u64..100,
            0u64..3
        )
            .prop_map(|(g, q, o, e)| crate::state::commit_offsets_at(
                g,
                &[CommittedOffset {
                    topic: "a".into(),
                    queue_id: q,
                    offset: o,
                }],
                Some(e),
                ["", "c1", "c2"][(o % 3) as usize],
            )),
        // Ordered consumers taking, renewing and giving up queue locks, across terms.
        (
            prop::sample::select(vec!["g1", "g2"]),
            prop::sample::select(vec!["c1", "c2"]),
            prop::collection::vec(0u32..3, 0..3),
            any::<bool>(),
            0i64..100,
            0u64..3
        )
            .prop_map(|(g, c, qs, release, now, term)| {
                crate::state::locks::lock_op(
                    g,
                    c,
                    &qs.iter().map(|q| qref("a", *q)).collect::<Vec<_>>(),
                    release,
                    now,
                    30,
                    term,
                )
            }),
        prop::sample::select(vec!["g1", "g2"]).prop_map(crate::state::delete_group_op),
        (prop::sample::select(vec!["g1", "g2"]), 0u32..3, 0u64..100).prop_map(|(g, q, o)| {
            crate::state::reset_offsets_op(
                g,
                &[CommittedOffset {
                    topic: "a".into(),
                    queue_id: q,
                    offset: o,
                }],
            )
        }),
        (
            prop::sample::select(vec!["g1", "g2"]),
            0u32..20,
            prop::collection::vec(1u64..100_000, 0..4)
        )
            .prop_map(|(g, max_retries, backoff_ms)| set_group_op(
                g,
                max_retries,
                backoff_ms
            )),
        (1u64..4, 0i64..100).prop_map(|(pid, at)| producers::register_op(pid, "pg", at)),
        (1u64..4, 0u32..2, 0u64..6, 1u32..3, 0u32..2, 0i64..100).prop_map(
            |(pid, epoch, base, count, q, at)| producers::record_op(
                &sluice_proto::props::SequenceMark {
                    producer_id: pid,
                    epoch,
                    base_sequence: base,
                    count,
                },
                "a",
                q,
                &format!("m{base}"),
                base,
                at,
                0,
            )
        ),
        (0i64..200).prop_map(producers::expire_op),
        (prop::sample::select(vec!["x", "y"]), 0u64..4, 0i64..100).prop_map(|(t, l, at)| {
            transactions::half_op(sluice_proto::v1::TxHalfOp {
                transaction_id: t.into(),
                producer_group: "pg".into(),
                topic: "a".into(),
                queue_id: 0,
                locator: l,
                count: 1,
                bytes: 10,
                at_ms: at,
                first_message_id: format!("m{}", l % 3),
            })
        }),
        (prop::sample::select(vec!["x", "y"]), 1i32..3, 0i64..100)
            .prop_map(|(t, r, at)| transactions::resolve_op(t, r, at)),
        (0i64..100).prop_map(|at| transactions::checked_op(vec!["x".into()], at, 2)),
        (0i64..100, 0u64..3).prop_map(|(at, keep)| transactions::forget_op(at, keep)),
        (
            prop::collection::vec((prop::sample::select(vec!["x", "y", "z"]), 1i32..3), 0..3),
            0i64..100
        )
            .prop_map(|(ends, at)| transactions::ends_op(
                ends.into_iter()
                    .map(|(t, r)| sluice_proto::v1::TxResolveOp {
                        transaction_id: t.into(),
                        resolution: r,
                        at_ms: at,
                        expired: false,
                    })
                    .collect()
            )),
    ]
}

proptest! {
    /// Applying is deterministic, and a snapshot at any index plus the entries after it gives
    /// the state of the whole log, whatever the installing replica held before.
    #[test]
    fn snapshot_plus_replay_equals_the_log(
        entries in prop::collection::vec(prop::collection::vec(op_strategy(), 0..4), 1..30),
        cut in 0usize..30,
        stale in prop::collection::vec(op_strategy(), 0..8),
        per_call in 1usize..5,
    ) {
        let cut = cut.min(entries.len());
        let whole = machine();
        for (i, ops) in entries.iter().enumerate() {
            whole.apply(Some(i as u64 + 1), ops, false).unwrap();
        }
        // A replica that applies several entries per call (as the applier does) ends the same.
        let twin = machine();
        for (n, calls) in entries.chunks(per_call).enumerate() {
            let ops: Vec<StateOp> = calls.iter().flatten().cloned().collect();
            let last = (n * per_call + calls.len()) as u64;
            twin.apply(Some(last), &ops, false).unwrap();
        }
        prop_assert_eq!(whole.dump().unwrap(), twin.dump().unwrap());

        let donor = machine();
        for (i, ops) in entries[..cut].iter().enumerate() {
            donor.apply(Some(i as u64 + 1), ops, false).unwrap();
        }
        let installer = machine();
        installer.apply(Some(1), &stale, false).unwrap();
        installer.restore(&donor.dump().unwrap()).unwrap();
        let from = installer.applied_index().unwrap();
        prop_assert_eq!(from, cut as u64);
        for (i, ops) in entries.iter().enumerate().skip(cut) {
            installer.apply(Some(i as u64 + 1), ops, false).unwrap();
        }
        prop_assert_eq!(installer.dump().unwrap(), whole.dump().unwrap());
        prop_assert_eq!(installer.topics.list(), whole.topics.list());
    }
}

#[test]
fn a_record_created_and_deleted_in_one_call_is_never_written() {
    let mut st = Staged::default();
    st.put_new(b"x/new".to_vec(), b"v".to_vec());
    st.delete(b"x/new".to_vec());
    // Deleted earlier in the call, so possibly still below: a plain put.
    st.delete(b"x/old".to_vec());
    st.put_new(b"x/old".to_vec(), b"2".to_vec());
    st.put_new(b"x/k".to_vec(), b"1".to_vec());
    st.put(b"x/k".to_vec(), b"3".to_vec());
    assert_eq!(
        st.into_ops(),
        vec![
            WriteOp::PutNew(b"x/k".to_vec(), b"3".to_vec()),
            WriteOp::Put(b"x/old".to_vec(), b"2".to_vec()),
        ]
    );
}
