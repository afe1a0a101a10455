//! The commit log in raft mode: the raft log contract, deterministic filling (byte-identical
//! replicas, divergence detection), divergent tails, snapshots, retention and recovery of the
//! entry index.

#[path = "store_raft_util.rs"]
mod rutil;

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use raft::prelude::{HardState, SnapshotMetadata};
use raft::{GetEntriesContext, Storage};
use rutil::*;
use sluice_broker::replication::{check_log_store_contract, LogStoreError, RaftLogStore};
use sluice_broker::store::{record, MessageStore, StoreError};

#[test]
fn commit_log_meets_the_raft_log_contract() {
    let rt = rt();
    let dirs = RefCell::new(Vec::new());
    let fresh = || {
        let d = tempfile::tempdir().unwrap();
        let (_, log) = open(&rt, raft_config(d.path()));
        dirs.borrow_mut().push(d);
        log
    };
    let reopen = |log: sluice_broker::store::CommitLogRaft| {
        let dir = log.data_dir().to_owned();
        // Dropping the last handle stops the store without a flush: a crash, minus the
        // page cache.
        drop(log);
        open(&rt, raft_config(&dir)).1
    };
    check_log_store_contract(fresh, reopen).unwrap();
}

#[test]
fn replicas_fill_entries_identically_and_detect_divergence() {
    let rt = rt();
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (sa, mut a) = open(&rt, raft_config(da.path()));
    let (_sb, mut b) = open(&rt, raft_config(db.path()));
    let (_sc, mut c) = open(&rt, raft_config(dc.path()));
    // Proposal form, in a few appends of different sizes; enough to roll several segments.
    let entries = mixed_entries(1, 400, 1, "x");
    for chunk in [&entries[..1], &entries[1..150], &entries[150..]] {
        a.append(chunk).unwrap();
        b.append(chunk).unwrap();
    }
    for e in [&a, &b] {
        assert_eq!(e.last_index().unwrap(), 400);
    }
    let files_a = log_files(da.path());
    assert!(files_a.len() > 3, "expected several segments");
    assert_eq!(
        files_a,
        log_files(db.path()),
        "replicas must be byte-identical"
    );

    // A replica that receives the stored (filled) form writes the same bytes, and reads back
    // exactly what it was given.
    let stored = all_entries(&a);
    assert_eq!(stored.len(), 400);
    for chunk in stored.chunks(37) {
        c.append(chunk).unwrap();
    }
    assert_eq!(files_a, log_files(dc.path()));
    assert_eq!(summary(&all_entries(&c)), summary(&stored));
    // No-ops, membership changes and metadata come back as proposed; sends in filled form.
    for (p, s) in entries.iter().zip(&stored) {
        assert_eq!(
            (p.index, p.term, p.get_entry_type()),
            (s.index, s.term, s.get_entry_type())
        );
        if p.data.is_empty() || p.get_entry_type() != raft::prelude::EntryType::EntryNormal {
            assert_eq!(p.data, s.data);
        } else {
            let (pr, sr) = (
                sluice_broker::store::decode_entry(&p.data).unwrap(),
                sluice_broker::store::decode_entry(&s.data).unwrap(),
            );
            assert_eq!(pr.len(), sr.len());
            for (x, y) in pr.iter().zip(&sr) {
                assert_eq!(
                    (&x.message_id, &x.body, x.sys_flag),
                    (&y.message_id, &y.body, y.sys_flag)
                );
            }
            // Stored records carry term and index, so the bytes differ from the proposal's.
            assert_ne!(p.data, s.data);
        }
    }
    // Producers learn their offsets from the stored entry.
    let results = sa.entry_results(1).unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].queue_offset, 0);
    assert_eq!(results[1].queue_offset, 1);
    assert_eq!(
        results[1].commit_log_offset,
        results[0].commit_log_offset + results[0].size as u64
    );
    assert!(
        sa.entry_results(3).unwrap().is_empty(),
        "a META entry has no messages"
    );

    // A peer's record that does not match what this log computes is refused.
    let dd = tempfile::tempdir().unwrap();
    let (_sd, mut d) = open(&rt, raft_config(dd.path()));
    d.append(&stored[..9]).unwrap();
    let mut bad = stored[9].clone();
    let mut bytes = bad.data.to_vec();
    let qoff = record::u64_at(&bytes, record::OFF_QUEUE_OFFSET);
    let phy = record::u64_at(&bytes, record::OFF_PHYSICAL);
    let n = sluice_broker::store::decode_entry(&bytes).unwrap().len();
    assert_eq!(n, 1);
    record::fill(&mut bytes, qoff + 1, phy, bad.term, bad.index, true);
    bad.data = Bytes::from(bytes);
    let err = d.append(&[bad]).unwrap_err();
    assert!(
        matches!(err, LogStoreError::Corrupt(ref m) if m.contains("divergent")),
        "{err}"
    );
    assert_eq!(
        d.last_index().unwrap(),
        9,
        "the refused entry is not in the log"
    );
    d.append(&stored[9..20]).unwrap();
    assert_eq!(summary(&all_entries(&d)), summary(&stored[..20]));
}

/// Messages readable from a queue: (message id, queue offset).
fn queue_ids(store: &MessageStore, topic: &str, q: u32) -> Vec<(String, u64)> {
    read_all(store, topic, q)
        .into_iter()
        .map(|r| (r.message_id, r.queue_offset))
        .collect()
}

#[test]
fn a_divergent_tail_is_replaced_and_offsets_continue() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (store, mut log) = open(&rt, raft_config(dir.path()));
    let send = |i: u64, term: u64, tag: &str| {
        entry(
            i,
            term,
            send_data("t", (i % 2) as u32, &format!("{tag}{i}"), 2, 100),
        )
    };
    let old: Vec<_> = (1..=10).map(|i| send(i, 1, "old")).collect();
    log.append(&old).unwrap();
    log.sync().unwrap();
    confirm_through(&store, 5);
    rt.block_on(wait_visible(&store, "t", 1, 6));
    rt.block_on(wait_visible(&store, "t", 0, 4));

    // A new leader (term 2) overwrites from entry 6.
    let new: Vec<_> = (6..=12).map(|i| send(i, 2, "new")).collect();
    log.append(&new).unwrap();
    assert_eq!(log.last_index().unwrap(), 12);
    assert_eq!(log.term(5).unwrap(), 1);
    assert_eq!(log.term(6).unwrap(), 2);
    // Queue offsets continue from entry 5's: queue 0 had entries 2 and 4 (2 messages each).
    let r6 = store.entry_results(6).unwrap();
    assert_eq!(r6[0].queue_offset, 4);
    assert_eq!(r6[0].commit_log_offset, store.entry_end_offset(5).unwrap());
    let r7 = store.entry_results(7).unwrap();
    assert_eq!(r7[0].queue_offset, 6);

    confirm_through(&store, 12);
    rt.block_on(wait_visible(&store, "t", 0, 10));
    rt.block_on(wait_visible(&store, "t", 1, 10));
    let expect = |q: u32| -> Vec<(String, u64)> {
        let mut ids = Vec::new();
        for i in (1..=12u64).filter(|i| i % 2 == q as u64) {
            let tag = if i <= 5 { "old" } else { "new" };
            for k in 0..2 {
                ids.push((format!("{tag}{i}-{k}"), ids.len() as u64));
            }
        }
        ids
    };
    assert_eq!(queue_ids(&store, "t", 0), expect(0));
    assert_eq!(queue_ids(&store, "t", 1), expect(1));
    assert!(store.get_by_id("old8-0").unwrap().is_none());
    assert_eq!(store.get_by_id("new8-0").unwrap().unwrap().queue_offset, 6);
    assert_consistent(&store, 2);

    // Committed entries are never rewritten.
    let err = log.append(&[send(11, 3, "late")]).unwrap_err();
    assert!(
        matches!(err, LogStoreError::Corrupt(ref m) if m.contains("confirmed")),
        "{err}"
    );
    assert_eq!(log.last_index().unwrap(), 12);
    assert_eq!(log.term(11).unwrap(), 2);

    // Everything survives a restart.
    log.set_hard_state(&HardState {
        term: 2,
        vote: 1,
        commit: 12,
        ..Default::default()
    })
    .unwrap();
    log.sync().unwrap();
    let before = summary(&all_entries(&log));
    drop((store, log));
    let (store, log) = open(&rt, raft_config(dir.path()));
    assert_eq!(summary(&all_entries(&log)), before);
    assert_eq!(log.initial_state().unwrap().hard_state.commit, 12);
    confirm_through(&store, 12);
    rt.block_on(wait_visible(&store, "t", 0, 10));
    assert_eq!(queue_ids(&store, "t", 0), expect(0));
}

/// Every queue of topic "t" is contiguous and resolves to its own records.
fn assert_consistent(store: &MessageStore, queues: u32) {
    assert_queues_consistent(store, "t", queues);
}

#[test]
fn a_follower_installs_a_snapshot_and_continues_with_the_leaders_offsets() {
    let rt = rt();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, mut a) = open(&rt, raft_config(da.path()));
    let first = mixed_entries(1, 300, 1, "a");
    a.append(&first).unwrap();
    a.sync().unwrap();
    confirm_through(&sa, 300);
    rt.block_on(wait_all_dispatched(&sa));
    a.compact(201).unwrap();
    assert_eq!(a.first_index().unwrap(), 201);
    assert!(
        sa.commit_log_range().0 > 0,
        "whole segments below the compaction point go"
    );
    let snap = a.snapshot(0, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 200);
    assert_eq!(snap.get_metadata().term, 1);

    // B is empty (or far behind): it installs the snapshot, then gets the rest by append.
    let (sb, mut b) = open(&rt, raft_config(db.path()));
    b.append(&mixed_entries(1, 20, 1, "stale")).unwrap();
    b.apply_snapshot_data(snap.get_metadata(), &snap.data)
        .unwrap();
    assert_eq!(
        (b.first_index().unwrap(), b.last_index().unwrap()),
        (201, 200)
    );
    assert_eq!(b.term(200).unwrap(), 1);
    assert!(b.initial_state().unwrap().hard_state.commit >= 200);
    let tail = a
        .entries(201, 301, None, GetEntriesContext::empty(false))
        .unwrap();
    b.append(&tail).unwrap();
    // Then both persist new proposals (a new term).
    let more = mixed_entries(301, 360, 2, "b");
    a.append(&more).unwrap();
    b.append(&more).unwrap();
    assert_eq!(summary(&all_entries(&b)), summary(&all_entries(&a)[..]));
    for s in [&sa, &sb] {
        confirm_through(s, 360);
        rt.block_on(wait_all_dispatched(s));
    }
    let table = next_offsets(&first[..200]);
    for (topic, q) in [
        ("orders", 0),
        ("orders", 1),
        ("orders", 2),
        ("events", 0),
        ("events", 1),
        ("events", 2),
    ] {
        let (amin, amax) = sa.queue_offsets(topic, q);
        let (bmin, bmax) = sb.queue_offsets(topic, q);
        assert_eq!(amax, bmax, "{topic}/{q}");
        let at_snapshot = table.get(&(topic.to_string(), q)).copied().unwrap_or(0);
        assert!(
            amin <= bmin && bmin == at_snapshot,
            "{topic}/{q}: B starts at the snapshot"
        );
        let a_recs = read_all(&sa, topic, q);
        let b_recs = read_all(&sb, topic, q);
        let a_tail: Vec<_> = a_recs.iter().filter(|r| r.queue_offset >= bmin).collect();
        assert_eq!(a_tail.len(), b_recs.len());
        for (x, y) in a_tail.iter().zip(&b_recs) {
            assert_eq!(
                (&x.message_id, x.queue_offset, x.commit_log_offset, &x.body),
                (&y.message_id, y.queue_offset, y.commit_log_offset, &y.body)
            );
        }
    }
    // B's state survives a restart, and it can serve the snapshot on.
    let before = summary(&all_entries(&b));
    drop((sb, b));
    let (sb, b) = open(&rt, raft_config(db.path()));
    assert_eq!(summary(&all_entries(&b)), before);
    assert_eq!(b.snapshot(0, 3).unwrap().get_metadata().index, 200);
    confirm_through(&sb, 360);
    rt.block_on(wait_all_dispatched(&sb));
    assert_eq!(
        sb.queue_offsets("orders", 0).1,
        sa.queue_offsets("orders", 0).1
    );
}

/// Next queue offset of every queue after `entries` (counted from the proposals).
fn next_offsets(entries: &[raft::prelude::Entry]) -> std::collections::HashMap<(String, u32), u64> {
    let mut out = std::collections::HashMap::new();
    for e in entries {
        if e.get_entry_type() != raft::prelude::EntryType::EntryNormal
            || sluice_broker::store::is_meta_entry(&e.data)
        {
            continue;
        }
        for r in sluice_broker::store::decode_entry(&e.data).unwrap() {
            *out.entry((r.topic, r.queue_id)).or_insert(0) += 1;
        }
    }
    out
}

#[test]
fn retention_deletes_only_committed_segments_and_compacts_the_raft_view() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = raft_config(dir.path());
    // Everything is old (proposals carry an old store time); retention runs often.
    cfg.retention = Duration::from_secs(1);
    cfg.retention_check_interval = Duration::from_millis(20);
    let (store, mut log) = open(&rt, cfg.clone());
    let entries = mixed_entries(1, 400, 1, "r");
    log.append(&entries).unwrap();
    log.sync().unwrap();
    let segments = log_files(dir.path()).len();
    assert!(segments > 4);
    confirm_through(&store, 200);
    let confirmed = store.confirmed_offset();
    rt.block_on(wait_for("retention", || log.first_index().unwrap() > 1));
    rt.block_on(wait_for("retention to finish", || {
        let min = store.commit_log_range().0;
        // The next segment would start above the confirmed offset.
        log_files(dir.path()).len() < segments && min <= confirmed && {
            let next_start = log_files(dir.path())
                .get(1)
                .map(|(n, _)| n.parse::<u64>().unwrap());
            next_start.is_some_and(|s| s > confirmed)
        }
    }));
    let first = log.first_index().unwrap();
    assert!(
        first <= 201,
        "compacted past the confirmed entries: {first}"
    );
    assert_eq!(
        store.entry_end_offset(first - 1).unwrap(),
        store.commit_log_range().0
    );
    // What remains reads back unchanged; the snapshot describes the new start.
    let rest = log
        .entries(first, 401, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(summary(&rest), summary(&all_entries(&log)));
    let snap = log.snapshot(0, 2).unwrap();
    assert_eq!(snap.get_metadata().index, first - 1);
    assert!(log
        .entries(first - 1, first, None, GetEntriesContext::empty(false))
        .is_err());
    drop((store, log));
    let (_, log) = open(&rt, cfg);
    assert_eq!(log.first_index().unwrap(), first);
    assert_eq!(log.last_index().unwrap(), 400);
}

#[test]
fn the_entry_index_is_rebuilt_from_the_records() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (store, mut log) = open(&rt, raft_config(dir.path()));
    log.append(&mixed_entries(1, 120, 1, "i")).unwrap();
    log.append(&mixed_entries(100, 150, 2, "j")).unwrap();
    log.sync().unwrap();
    confirm_through(&store, 150);
    rt.block_on(wait_all_dispatched(&store));
    let before = summary(&all_entries(&log));
    drop((store, log));
    std::fs::remove_dir_all(dir.path().join("raft").join("entries")).unwrap();
    // Without a checkpoint nothing of the old entry index would be trusted anyway.
    let _ = std::fs::remove_file(dir.path().join("checkpoint"));
    let (store, log) = open(&rt, raft_config(dir.path()));
    assert_eq!(summary(&all_entries(&log)), before);
    assert_eq!(log.term(99).unwrap(), 1);
    assert_eq!(log.term(100).unwrap(), 2);
    confirm_through(&store, 150);
    rt.block_on(wait_all_dispatched(&store));
    assert_queues_consistent(&store, "orders", 3);
}

#[test]
fn modes_do_not_mix() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (store, log) = open(&rt, raft_config(dir.path()));
    let appended = rt.block_on(store.append(batch("t", 0, vec![msg("m", b"x")])));
    assert!(matches!(appended, Err(StoreError::Invalid(_))));
    assert!(matches!(
        rt.block_on(store.truncate_to(0)),
        Err(StoreError::Invalid(_))
    ));
    drop((store, log));
    let standalone = rt.block_on(MessageStore::open(config(dir.path())));
    assert!(matches!(standalone, Err(StoreError::Invalid(_))));
    let mut other_size = raft_config(dir.path());
    other_size.segment_size *= 2;
    assert!(matches!(
        rt.block_on(MessageStore::open(other_size)),
        Err(StoreError::Invalid(_))
    ));
    let mut not_external = raft_config(dir.path());
    not_external.confirm = sluice_broker::store::ConfirmMode::FollowWrite;
    assert!(rt.block_on(MessageStore::open(not_external)).is_err());

    let plain = tempfile::tempdir().unwrap();
    let s = rt
        .block_on(MessageStore::open(config(plain.path())))
        .unwrap();
    rt.block_on(s.append(batch("t", 0, vec![msg("m", b"x")])))
        .unwrap();
    assert!(matches!(s.raft_log(), Err(StoreError::Invalid(_))));
    rt.block_on(s.shutdown()).unwrap();
    drop(s);
    assert!(matches!(
        rt.block_on(MessageStore::open(raft_config(plain.path()))),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn snapshot_data_is_validated() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (_store, mut log) = open(&rt, raft_config(dir.path()));
    let meta = SnapshotMetadata {
        index: 5,
        term: 1,
        ..Default::default()
    };
    assert!(log.apply_snapshot_data(&meta, b"garbage").is_err());
    assert_eq!(
        log.first_index().unwrap(),
        1,
        "a refused snapshot changes nothing"
    );
}

#[test]
fn a_log_that_lost_committed_entries_does_not_open() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (store, mut log) = open(&rt, raft_config(dir.path()));
    log.append(&mixed_entries(1, 10, 1, "c")).unwrap();
    let hs = HardState {
        term: 1,
        vote: 1,
        commit: 10,
        ..Default::default()
    };
    log.set_hard_state(&hs).unwrap();
    log.sync().unwrap();
    let cut = store.entry_end_offset(7).unwrap() + 10;
    drop((store, log));
    // The disk loses the end of the log (say, a damaged sector).
    let seg = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("commitlog").join(format!("{:020}", 0)))
        .unwrap();
    seg.set_len(cut).unwrap();
    drop(seg);
    let opened = rt.block_on(MessageStore::open(raft_config(dir.path())));
    assert!(
        matches!(opened, Err(StoreError::Corrupt { ref reason, .. }) if reason.contains("committed")),
        "{:?}",
        opened.err()
    );
}
