//! An executable statement of the [`RaftLogStore`] contract, for every implementation's tests.

use bytes::Bytes;
use raft::prelude::{ConfState, Entry, EntryType, HardState, SnapshotMetadata};
use raft::{GetEntriesContext, StorageError};

use super::log_store::RaftLogStore;

fn entry(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        index,
        term,
        entry_type: EntryType::EntryNormal,
        data: Bytes::copy_from_slice(data.as_bytes()),
        ..Default::default()
    }
}

fn same(a: &[Entry], b: &[Entry]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.index == y.index
                && x.term == y.term
                && x.get_entry_type() == y.get_entry_type()
                && x.data == y.data
        })
}

fn is_storage_err(r: &raft::Error, want: StorageError) -> bool {
    matches!(r, raft::Error::Store(e) if *e == want)
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Runs the contract checks against stores made by `fresh` (each call must return an empty
/// store). `reopen` must simulate a restart: drop the store and open it again from whatever
/// it persisted (identity for an in-memory store). Returns the first violation found.
pub fn check_log_store_contract<S: RaftLogStore>(
    mut fresh: impl FnMut() -> S,
    mut reopen: impl FnMut(S) -> S,
) -> Result<(), String> {
    let ctx = || GetEntriesContext::empty(false);
    let err = |e: raft::Error| format!("unexpected error: {e}");

    // A fresh log.
    let mut s = fresh();
    let st = s.initial_state().map_err(err)?;
    ensure!(!st.initialized(), "a fresh store must not be bootstrapped");
    ensure!(
        s.first_index().map_err(err)? == 1,
        "fresh first_index must be 1"
    );
    ensure!(
        s.last_index().map_err(err)? == 0,
        "fresh last_index must be 0"
    );
    ensure!(
        s.term(0).map_err(err)? == 0,
        "term(0) of a fresh log must be 0"
    );
    ensure!(
        s.term(1)
            .is_err_and(|e| is_storage_err(&e, StorageError::Unavailable)),
        "term past the end must be Unavailable"
    );
    ensure!(
        s.snapshot(0, 2)
            .is_err_and(|e| is_storage_err(&e, StorageError::SnapshotTemporarilyUnavailable)),
        "a never-compacted log has no snapshot"
    );

    // Append and read back.
    let first: Vec<Entry> = (1..=5)
        .map(|i| entry(i, i.div_ceil(2), &format!("e{i}")))
        .collect();
    s.append(&first).map_err(|e| e.to_string())?;
    ensure!(s.last_index().map_err(err)? == 5, "last_index after append");
    let got = s.entries(1, 6, None, ctx()).map_err(err)?;
    ensure!(same(&got, &first), "entries must round-trip: {got:?}");
    for e in &first {
        ensure!(s.term(e.index).map_err(err)? == e.term, "term({})", e.index);
    }
    let one = s.entries(2, 6, Some(0), ctx()).map_err(err)?;
    ensure!(
        same(&one, &first[1..2]),
        "max_size 0 must still return one entry"
    );
    let all = s.entries(2, 6, Some(u64::MAX), ctx()).map_err(err)?;
    ensure!(
        same(&all, &first[1..]),
        "max_size must not cut below the limit"
    );
    ensure!(
        s.entries(1, 7, None, ctx())
            .is_err_and(|e| is_storage_err(&e, StorageError::Unavailable)),
        "reading past the end must be Unavailable"
    );

    // Invalid appends are refused and change nothing.
    ensure!(
        s.append(&[entry(7, 3, "gap")]).is_err(),
        "a gap must be refused"
    );
    ensure!(
        s.append(&[entry(6, 3, "a"), entry(8, 3, "b")]).is_err(),
        "non-contiguous entries must be refused"
    );
    ensure!(
        s.last_index().map_err(err)? == 5,
        "refused appends must not change the log"
    );

    // Appending at i discards everything from i on.
    let tail = vec![entry(4, 4, "x4"), entry(5, 4, "x5"), entry(6, 4, "x6")];
    s.append(&tail).map_err(|e| e.to_string())?;
    ensure!(
        s.last_index().map_err(err)? == 6,
        "last_index after overwrite"
    );
    let got = s.entries(3, 7, None, ctx()).map_err(err)?;
    ensure!(
        same(&got[..1], &first[2..3]) && same(&got[1..], &tail),
        "overwritten tail must read back: {got:?}"
    );
    s.append(&[entry(3, 5, "y3")]).map_err(|e| e.to_string())?;
    ensure!(
        s.last_index().map_err(err)? == 3,
        "a shorter overwrite must truncate the log"
    );
    ensure!(
        s.term(3).map_err(err)? == 5,
        "term of the overwritten entry"
    );

    // Hard state and membership.
    let hs = HardState {
        term: 5,
        vote: 2,
        commit: 2,
        ..Default::default()
    };
    s.set_hard_state(&hs).map_err(|e| e.to_string())?;
    let cs = ConfState {
        voters: vec![1, 2, 3],
        learners: vec![4],
        ..Default::default()
    };
    s.set_conf_state(&cs).map_err(|e| e.to_string())?;
    s.sync().map_err(|e| e.to_string())?;
    let mut s = reopen(s);
    let st = s.initial_state().map_err(err)?;
    ensure!(st.hard_state == hs, "hard state must survive a restart");
    ensure!(st.conf_state == cs, "conf state must survive a restart");
    let got = s.entries(1, 4, None, ctx()).map_err(err)?;
    ensure!(
        got.len() == 3 && got[2].term == 5 && got[2].data.as_ref() == b"y3",
        "synced entries must survive a restart: {got:?}"
    );

    // Compaction keeps the term of the compaction point.
    s.append(&[entry(4, 5, "z4"), entry(5, 5, "z5")])
        .map_err(|e| e.to_string())?;
    s.compact(3).map_err(|e| e.to_string())?;
    ensure!(
        s.first_index().map_err(err)? == 3,
        "first_index after compact"
    );
    ensure!(
        s.term(2).map_err(err)? == 1,
        "term of the compaction point must be kept"
    );
    ensure!(
        s.term(1)
            .is_err_and(|e| is_storage_err(&e, StorageError::Compacted)),
        "term below the compaction point must be Compacted"
    );
    ensure!(
        s.entries(2, 4, None, ctx())
            .is_err_and(|e| is_storage_err(&e, StorageError::Compacted)),
        "reading compacted entries must be Compacted"
    );
    s.compact(2).map_err(|e| e.to_string())?;
    ensure!(
        s.first_index().map_err(err)? == 3,
        "compacting backwards is a no-op"
    );
    ensure!(
        s.compact(7).is_err(),
        "compacting past the end must be refused"
    );
    ensure!(
        s.append(&[entry(2, 5, "old")]).is_err(),
        "appending below first_index must be refused"
    );
    let snap = s.snapshot(0, 2).map_err(err)?;
    let meta = snap.get_metadata();
    ensure!(
        meta.index == 2 && meta.term == 1 && *meta.get_conf_state() == cs,
        "snapshot must describe the compaction point: {meta:?}"
    );
    s.compact(6).map_err(|e| e.to_string())?;
    ensure!(
        s.first_index().map_err(err)? == 6 && s.last_index().map_err(err)? == 5,
        "compacting everything leaves an empty log"
    );
    ensure!(
        s.term(5).map_err(err)? == 5,
        "term of the last compacted entry"
    );
    s.append(&[entry(6, 6, "after")])
        .map_err(|e| e.to_string())?;
    s.sync().map_err(|e| e.to_string())?;
    let s = reopen(s);
    ensure!(
        s.first_index().map_err(err)? == 6 && s.term(5).map_err(err)? == 5,
        "the compaction point must survive a restart"
    );

    // Installing a snapshot replaces the log.
    let mut s = fresh();
    s.append(&first).map_err(|e| e.to_string())?;
    let mut meta = SnapshotMetadata {
        index: 10,
        term: 7,
        ..Default::default()
    };
    meta.set_conf_state(cs.clone());
    s.apply_snapshot(&meta).map_err(|e| e.to_string())?;
    s.sync().map_err(|e| e.to_string())?;
    let mut s = reopen(s);
    ensure!(
        s.first_index().map_err(err)? == 11 && s.last_index().map_err(err)? == 10,
        "a snapshot must leave an empty log after its index"
    );
    ensure!(s.term(10).map_err(err)? == 7, "term of the snapshot index");
    let st = s.initial_state().map_err(err)?;
    ensure!(
        st.conf_state == cs,
        "a snapshot must install its membership"
    );
    ensure!(
        st.hard_state.commit >= 10,
        "a snapshot must raise the commit index"
    );
    s.append(&[entry(11, 7, "next")])
        .map_err(|e| e.to_string())?;
    ensure!(
        s.last_index().map_err(err)? == 11,
        "appending after a snapshot"
    );
    Ok(())
}
