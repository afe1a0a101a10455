//! Raft mode after a crash: the writer dies half way through writing entries (a failpoint),
//! the store is dropped without shutdown and reopened. Run with `--features failpoints`.
#![cfg(feature = "failpoints")]

#[path = "store_raft_util.rs"]
mod rutil;

use fail::FailScenario;
use raft::prelude::{Entry, HardState};
use raft::{GetEntriesContext, Storage};
use rutil::*;
use sluice_broker::replication::RaftLogStore;
use sluice_broker::store::{decode_entry, MessageStore};

/// Message ids and bodies of an entry (proposed or stored form).
fn messages(e: &Entry) -> Vec<(String, Vec<u8>)> {
    decode_entry(&e.data)
        .unwrap()
        .into_iter()
        .map(|r| (r.message_id, r.body.to_vec()))
        .collect()
}

/// The log ends exactly after entry `last`, whose predecessors read back as proposed.
fn assert_log_is_prefix(
    store: &MessageStore,
    log: &sluice_broker::store::CommitLogRaft,
    proposed: &[Entry],
) {
    let last = log.last_index().unwrap();
    assert_eq!(
        store.commit_log_range().1,
        store.entry_end_offset(last).unwrap(),
        "no partial entry may remain"
    );
    let got = log
        .entries(1, last + 1, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(got.len() as u64, last);
    for (g, p) in got.iter().zip(proposed) {
        assert_eq!((g.index, g.term), (p.index, p.term));
        assert_eq!(messages(g), messages(p));
    }
}

/// Entry data for a delayed message waiting until far in the future.
fn scheduled_data(id: &str) -> bytes::Bytes {
    let mut m = sluice_broker::store::AppendMessage {
        message_id: id.into(),
        body: bytes::Bytes::from_static(b"later"),
        born_timestamp_ms: 1,
        born_host: "10.0.0.1:1".into(),
        sys_flag: sluice_proto::record::SYS_FLAG_SCHEDULED,
        ..Default::default()
    };
    m.properties.push((
        sluice_proto::props::DELIVER_AT.into(),
        4_000_000_000_000i64.to_string(),
    ));
    m.properties
        .push((sluice_proto::props::REAL_TOPIC.into(), "t".into()));
    m.properties
        .push((sluice_proto::props::REAL_QUEUE.into(), "0".into()));
    let batch = sluice_broker::store::AppendBatch {
        topic: "%TIMER%".into(),
        queue_id: 0,
        messages: vec![m],
    };
    sluice_broker::store::encode_for_proposal(&batch, "10.0.0.9:10911", 1_000).unwrap()
}

fn big_send(index: u64, messages: usize) -> Entry {
    entry(
        index,
        1,
        send_data("t", 0, &format!("e{index}"), messages, 700),
    )
}

#[test]
fn a_partially_written_entry_is_dropped_whole() {
    let scenario = FailScenario::setup();
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (store, mut log) = open(&rt, raft_config(dir.path()));
    let mut proposed: Vec<Entry> = (1..=5).map(|i| big_send(i, 2)).collect();
    log.append(&proposed).unwrap();
    let hs = HardState {
        term: 1,
        vote: 1,
        commit: 5,
        ..Default::default()
    };
    log.set_hard_state(&hs).unwrap();
    log.sync().unwrap();
    confirm_through(&store, 5);
    rt.block_on(wait_visible(&store, "t", 0, 10));
    // Not synced: must not be what recovery finds.
    log.set_hard_state(&HardState {
        commit: 6,
        ..hs.clone()
    })
    .unwrap();

    // Entry 6 holds eight records; the crash leaves half of them on disk.
    let six = big_send(6, 8);
    fail::cfg("store::writer::partial_write", "return").unwrap();
    assert!(log.append(std::slice::from_ref(&six)).is_err());
    fail::remove("store::writer::partial_write");
    drop((store, log));

    let (store, mut log) = open(&rt, raft_config(dir.path()));
    assert_eq!(log.last_index().unwrap(), 5);
    assert_log_is_prefix(&store, &log, &proposed);
    assert_eq!(log.initial_state().unwrap().hard_state, hs);
    // Raft re-sends entry 6; its messages take the queue offsets the lost ones would have.
    log.append(std::slice::from_ref(&six)).unwrap();
    proposed.push(six);
    let r = store.entry_results(6).unwrap();
    assert_eq!(
        r.iter().map(|a| a.queue_offset).collect::<Vec<_>>(),
        (10..18).collect::<Vec<_>>()
    );
    confirm_through(&store, 6);
    rt.block_on(wait_visible(&store, "t", 0, 18));
    assert_queues_consistent(&store, "t", 1);
    assert_log_is_prefix(&store, &log, &proposed);
    scenario.teardown();
}

#[test]
fn a_torn_multi_entry_write_keeps_a_prefix_of_whole_entries() {
    let scenario = FailScenario::setup();
    let rt = rt();
    // Several tear points: half of differently composed writes.
    for (round, sizes) in [[1usize, 6, 2, 5], [5, 1, 1, 1], [2, 2, 9, 1]]
        .iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut log) = open(&rt, raft_config(dir.path()));
        let mut proposed: Vec<Entry> = (1..=3).map(|i| big_send(i, 1)).collect();
        log.append(&proposed).unwrap();
        log.sync().unwrap();
        let batch: Vec<Entry> = sizes
            .iter()
            .enumerate()
            .map(|(k, n)| big_send(4 + k as u64, *n))
            .collect();
        fail::cfg("store::writer::partial_write", "return").unwrap();
        assert!(log.append(&batch).is_err());
        fail::remove("store::writer::partial_write");
        drop((store, log));

        let (store, mut log) = open(&rt, raft_config(dir.path()));
        let last = log.last_index().unwrap();
        assert!((3..7).contains(&last), "round {round}: last index {last}");
        proposed.extend(batch);
        assert_log_is_prefix(&store, &log, &proposed);
        log.append(&proposed[last as usize..]).unwrap();
        assert_eq!(log.last_index().unwrap(), 7);
        assert_log_is_prefix(&store, &log, &proposed);
        confirm_through(&store, 7);
        let total: usize = 3 + sizes.iter().sum::<usize>();
        rt.block_on(wait_visible(&store, "t", 0, total as u64));
        assert_queues_consistent(&store, "t", 1);
    }
    scenario.teardown();
}

#[test]
fn an_interrupted_snapshot_install_is_finished_on_restart() {
    let scenario = FailScenario::setup();
    // Right after the install is recorded, and after the old log is gone.
    for fp in ["store::raft::install_begin", "store::raft::install"] {
        interrupted_install(fp);
    }
    scenario.teardown();
}

fn interrupted_install(fp: &str) {
    let rt = rt();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, mut a) = open(&rt, raft_config(da.path()));
    a.append(&mixed_entries(1, 240, 1, "a")).unwrap();
    a.sync().unwrap();
    confirm_through(&sa, 240);
    rt.block_on(wait_all_dispatched(&sa));
    a.compact(201).unwrap();
    let snap = a.snapshot(0, 2).unwrap();
    let restart_at = sa.entry_end_offset(200).unwrap();

    // B holds other (committed, visible) data when the snapshot arrives, and a delayed
    // message still pending.
    let (sb, mut b) = open(&rt, raft_config(db.path()));
    let mut stale = mixed_entries(1, 30, 1, "stale");
    stale.push(entry(31, 1, scheduled_data("stale-timer")));
    b.append(&stale).unwrap();
    b.sync().unwrap();
    confirm_through(&sb, 31);
    rt.block_on(wait_all_dispatched(&sb));
    assert_eq!(sb.timers_pending(), 1);
    fail::cfg(fp, "return").unwrap();
    assert!(b
        .apply_snapshot_data(snap.get_metadata(), &snap.data)
        .is_err());
    fail::remove(fp);
    drop((sb, b));

    let (sb, mut b) = open(&rt, raft_config(db.path()));
    assert_eq!(
        (b.first_index().unwrap(), b.last_index().unwrap()),
        (201, 200)
    );
    assert_eq!(b.term(200).unwrap(), 1);
    assert_eq!(sb.commit_log_range(), (restart_at, restart_at));
    // The stale timer went with its log: it would hold retention below the log's start.
    assert_eq!((sb.timers_pending(), sb.timer_floor()), (0, u64::MAX));
    for q in 0..3 {
        let (min, max) = sb.queue_offsets("orders", q);
        assert_eq!(min, max, "stale messages are gone");
        assert!(sb
            .read_queue("orders", q, min, 10, usize::MAX)
            .unwrap()
            .records
            .is_empty());
    }
    let tail = a
        .entries(201, 241, None, GetEntriesContext::empty(false))
        .unwrap();
    b.append(&tail).unwrap();
    confirm_through(&sb, 240);
    rt.block_on(wait_all_dispatched(&sb));
    for q in 0..3 {
        let (bmin, bmax) = sb.queue_offsets("orders", q);
        assert_eq!(bmax, sa.queue_offsets("orders", q).1);
        let b_recs = read_all(&sb, "orders", q);
        assert_eq!(b_recs.len() as u64, bmax - bmin);
        for r in &b_recs {
            let on_a = sa
                .read_queue("orders", q, r.queue_offset, 1, usize::MAX)
                .unwrap();
            assert_eq!(on_a.records[0], *r);
        }
    }
}
