//! Adds the broker's replicated state to the log store's snapshots. A replica that fell behind
//! the leader's retention installs a snapshot instead of the entries it missed; the commit
//! log's snapshot says where its bytes restart, and this wrapper adds every table of the state
//! (`crate::state`) whole, at the index it is at (as a [`ReplicaSnapshot`]).

use prost::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use sluice_proto::v1::ReplicaSnapshot;

use super::log_store::{LogStoreError, RaftLogStore};
use std::sync::Arc;

use crate::state::StateMachine;

pub struct MetaSnapshotLog<L> {
    inner: L,
    state: Arc<StateMachine>,
}

impl<L: RaftLogStore> MetaSnapshotLog<L> {
    pub fn new(inner: L, state: Arc<StateMachine>) -> Self {
        MetaSnapshotLog { inner, state }
    }
}

/// Splits snapshot data into the log store's part and the metadata.
pub fn decode_snapshot(data: &[u8]) -> Result<ReplicaSnapshot, String> {
    ReplicaSnapshot::decode(data).map_err(|e| format!("undecodable replica snapshot: {e}"))
}

impl<L: RaftLogStore> raft::Storage for MetaSnapshotLog<L> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.inner.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.inner.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.inner.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.inner.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.inner.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut snap = self.inner.snapshot(request_index, to)?;
        // The state as of now (this runs on the raft thread, between applies), at or after the
        // snapshot index: the installing replica skips the state ops of entries up to the
        // dump's own index.
        let state = self.state.dump().map_err(|e| {
            raft::Error::Store(raft::StorageError::Other(Box::new(std::io::Error::other(
                e.to_string(),
            ))))
        })?;
        let data = ReplicaSnapshot {
            store: std::mem::take(&mut snap.data),
            topics: Vec::new(),
            offsets: Vec::new(),
            state: Some(state),
        };
        snap.data = data.encode_to_vec().into();
        Ok(snap)
    }
}

impl<L: RaftLogStore> RaftLogStore for MetaSnapshotLog<L> {
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogStoreError> {
        self.inner.append(entries)
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogStoreError> {
        self.inner.set_hard_state(hs)
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogStoreError> {
        self.inner.set_conf_state(cs)
    }

    fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError> {
        self.inner.apply_snapshot(meta)
    }

    fn apply_snapshot_data(
        &mut self,
        meta: &SnapshotMetadata,
        data: &[u8],
    ) -> Result<(), LogStoreError> {
        let snap = decode_snapshot(data).map_err(LogStoreError::Corrupt)?;
        self.inner.apply_snapshot_data(meta, &snap.store)
    }

    fn compact(&mut self, index: u64) -> Result<(), LogStoreError> {
        self.inner.compact(index)
    }

    fn sync(&mut self) -> Result<(), LogStoreError> {
        self.inner.sync()
    }
}
