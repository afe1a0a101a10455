//! Raft mode: the commit log is the Raft log (see `docs/replication.md`).
//!
//! Every raft entry is one or more commit-log records written contiguously into one segment;
//! the writer fills in positions, term and index (`writer/raft_ops.rs`). On top of the log:
//! - the *entry index*: raft index -> (commit-log offset, length, term), fixed 32-byte CRC'd
//!   entries in the consume-queue file format (`raft/entries/`), so `term()` and `entries()`
//!   never scan the log. It is trusted below the checkpoint (the dispatcher fsyncs it with
//!   the log) and rebuilt from the records' term / entry-index fields above it on recovery;
//! - the *control file* (`raft/control`): hard state, membership, compaction point.
//!
//! Only the writer thread changes either; readers (the raft thread's `raft::Storage` calls,
//! producers asking for their offsets) read the shared view below.

use std::sync::atomic::Ordering;

use parking_lot::RwLock;
use raft::prelude::{ConfState, Entry, HardState};

use super::cq::{ConsumeQueue, CqEntry};
use super::shared::Shared;
use super::StoreError;

pub mod control;
mod log;
pub mod recover;

pub use control::{CompactionPoint, QueueTable};
pub use log::CommitLogRaft;

/// Directory of the raft files under the store's data dir.
pub const DIR: &str = "raft";
/// Directory of the entry index under [`DIR`].
pub const ENTRIES_DIR: &str = "entries";

/// What the raft thread and producers read; the writer updates it.
#[derive(Debug, Clone, Default)]
pub struct RaftView {
    /// The last hard state and membership set (durable once `sync` returned).
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub cp: CompactionPoint,
}

pub struct RaftShared {
    /// The entry index: queue offset N is raft index N; `phy`/`size` locate the entry's
    /// records, `tag_hash` holds its term and `store_ts` its index (a consistency check).
    pub entries: ConsumeQueue,
    pub view: RwLock<RaftView>,
}

/// Where an entry's records are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryLoc {
    pub offset: u64,
    pub len: u32,
    pub term: u64,
}

impl EntryLoc {
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }

    pub fn to_cq(self, index: u64) -> CqEntry {
        CqEntry {
            phy: self.offset,
            size: self.len,
            tag_hash: self.term,
            store_ts: index as i64,
        }
    }
}

/// Why an entry could not be located.
#[derive(Debug)]
pub enum LocErr {
    Compacted,
    Unavailable,
    Corrupt(String),
}

impl From<std::io::Error> for LocErr {
    fn from(e: std::io::Error) -> Self {
        LocErr::Corrupt(format!("entry index read failed: {e}"))
    }
}

fn loc_of(index: u64, e: Option<CqEntry>) -> Option<EntryLoc> {
    e.filter(|e| e.store_ts == index as i64).map(|e| EntryLoc {
        offset: e.phy,
        len: e.size,
        term: e.tag_hash,
    })
}

impl RaftShared {
    pub fn first_index(&self) -> u64 {
        self.view.read().cp.index + 1
    }

    pub fn last_index(&self) -> u64 {
        let first = self.first_index();
        self.entries.max().max(first) - 1
    }

    /// Where entry `index` is; `Compacted` below the first index, `Unavailable` past the last.
    pub fn locate(&self, index: u64) -> Result<EntryLoc, LocErr> {
        if index < self.first_index() {
            return Err(LocErr::Compacted);
        }
        if index > self.last_index() {
            return Err(LocErr::Unavailable);
        }
        match loc_of(index, self.entries.entry(index)?) {
            Some(l) => Ok(l),
            // Retention may have compacted it meanwhile.
            None if index < self.first_index() => Err(LocErr::Compacted),
            None => Err(LocErr::Corrupt(format!(
                "entry index has no valid entry for index {index}"
            ))),
        }
    }

    /// Locations of up to `n` entries from `low` (fewer only if the log ends or is compacted
    /// meanwhile).
    pub fn locate_range(&self, low: u64, n: usize) -> Result<Vec<EntryLoc>, LocErr> {
        if low < self.first_index() {
            return Err(LocErr::Compacted);
        }
        let got = self.entries.entries(low, n)?;
        let mut out = Vec::with_capacity(got.len());
        for (k, e) in got.into_iter().enumerate() {
            let index = low + k as u64;
            match loc_of(index, Some(e)) {
                Some(l) => out.push(l),
                None => {
                    return Err(LocErr::Corrupt(format!(
                        "entry index entry {index} names another index"
                    )))
                }
            }
        }
        if out.len() < n && low < self.first_index() {
            return Err(LocErr::Compacted);
        }
        Ok(out)
    }

    /// The first entry whose records start at or after commit-log `offset` (one past the
    /// last index when none does).
    pub fn first_at_or_after(&self, offset: u64) -> Result<u64, LocErr> {
        let (mut lo, mut hi) = (self.first_index(), self.last_index() + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.locate(mid)?.offset < offset {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The term of `index`: the compaction point's or the entry's.
    pub fn term(&self, index: u64) -> Result<u64, LocErr> {
        {
            let v = self.view.read();
            if index == v.cp.index {
                return Ok(v.cp.term);
            }
            if index < v.cp.index {
                return Err(LocErr::Compacted);
            }
        }
        self.locate(index).map(|l| l.term)
    }
}

/// Bytes fetched with one read at most (unless one entry is larger).
const MAX_READ: u64 = 4 << 20;

/// Reads entries `[low, low + n)` (cut by `max_size`, at least one) as raft entries.
pub fn read_entries(
    shared: &Shared,
    raft: &RaftShared,
    low: u64,
    n: usize,
    max_size: u64,
) -> Result<Vec<Entry>, LocErr> {
    let locs = raft.locate_range(low, n)?;
    if locs.len() < n {
        return Err(LocErr::Corrupt(format!(
            "entry index holds {} of the {n} entries from {low}",
            locs.len()
        )));
    }
    // Cut by size first (stored length plus a little framing), so nothing past the limit is read.
    let mut total = 0u64;
    let mut take = 0;
    for l in &locs {
        total += u64::from(l.len) + 16;
        if take > 0 && total > max_size {
            break;
        }
        take += 1;
    }
    let locs = &locs[..take];
    let mut out = Vec::with_capacity(take);
    let mut i = 0;
    while i < locs.len() {
        // Neighbouring entries of one segment are contiguous: fetch them with one read.
        let seg = shared
            .log
            .segment_for(locs[i].offset)
            .ok_or(LocErr::Compacted)?;
        let seg_end = seg.base + seg.len.load(Ordering::Acquire);
        let mut j = i + 1;
        let mut end = locs[i].end();
        while j < locs.len()
            && locs[j].offset == end
            && locs[j].end() <= seg_end
            && locs[j].end() - locs[i].offset <= MAX_READ
        {
            end = locs[j].end();
            j += 1;
        }
        let start = locs[i].offset;
        let buf = shared
            .log
            .read_exact(start, (end - start) as usize)
            .map_err(|e| match e {
                StoreError::OffsetOutOfRange { .. } if low < raft.first_index() => {
                    LocErr::Compacted
                }
                other => LocErr::Corrupt(other.to_string()),
            })?;
        for (k, l) in locs[i..j].iter().enumerate() {
            let at = (l.offset - start) as usize;
            let bytes = buf.slice(at..at + l.len as usize);
            let e = super::entry::to_raft_entry(low + (i + k) as u64, l.term, bytes)
                .map_err(LocErr::Corrupt)?;
            out.push(e);
        }
        i = j;
    }
    Ok(out)
}
