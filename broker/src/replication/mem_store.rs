//! An in-memory [`RaftLogStore`] for tests and simulations: every write is "durable" at once,
//! so a simulated crash (keeping the store, dropping the node) loses nothing that was written.

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::log_store::{LogStoreError, RaftLogStore};

/// The in-memory log. `entries[k]` has index `snap_index + 1 + k`.
#[derive(Debug, Clone, Default)]
pub struct MemLogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The compaction point: index and term of the last discarded entry.
    snap_index: u64,
    snap_term: u64,
    entries: Vec<Entry>,
    syncs: u64,
}

impl MemLogStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times [`RaftLogStore::sync`] was called (tests check the driver syncs).
    pub fn sync_count(&self) -> u64 {
        self.syncs
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    fn first(&self) -> u64 {
        self.snap_index + 1
    }

    fn last(&self) -> u64 {
        self.snap_index + self.entries.len() as u64
    }
}

impl raft::Storage for MemLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(StorageError::Compacted.into());
        }
        if high > self.last() + 1 || low > high {
            return Err(StorageError::Unavailable.into());
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity(hi - lo);
        let mut size = 0u64;
        for e in &self.entries[lo..hi] {
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_index {
            return Ok(self.snap_term);
        }
        if idx < self.snap_index {
            return Err(StorageError::Compacted.into());
        }
        if idx > self.last() {
            return Err(StorageError::Unavailable.into());
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snap_index == 0 {
            return Err(StorageError::SnapshotTemporarilyUnavailable.into());
        }
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = self.snap_index;
        meta.term = self.snap_term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}

impl RaftLogStore for MemLogStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogStoreError> {
        let Some(head) = entries.first() else {
            return Ok(());
        };
        for w in entries.windows(2) {
            if w[1].index != w[0].index + 1 {
                return Err(LogStoreError::NotContiguous {
                    prev: w[0].index,
                    got: w[1].index,
                });
            }
        }
        if head.index < self.first() {
            return Err(LogStoreError::Compacted {
                index: head.index,
                first_index: self.first(),
            });
        }
        if head.index > self.last() + 1 {
            return Err(LogStoreError::Gap {
                first: head.index,
                last: self.last(),
            });
        }
        self.entries.truncate((head.index - self.first()) as usize);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogStoreError> {
        self.hard_state = hs.clone();
        Ok(())
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogStoreError> {
        self.conf_state = cs.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError> {
        self.entries.clear();
        self.snap_index = meta.index;
        self.snap_term = meta.term;
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        Ok(())
    }

    fn compact(&mut self, index: u64) -> Result<(), LogStoreError> {
        if index <= self.first() {
            return Ok(());
        }
        if index > self.last() + 1 {
            return Err(LogStoreError::CompactBeyondLog {
                index,
                last: self.last(),
            });
        }
        let drop = (index - self.first()) as usize;
        self.snap_term = self.entries[drop - 1].term;
        self.snap_index = index - 1;
        self.entries.drain(..drop);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogStoreError> {
        self.syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_store_meets_the_contract() {
        crate::replication::check_log_store_contract(MemLogStore::new, |s| s).unwrap();
    }
}
