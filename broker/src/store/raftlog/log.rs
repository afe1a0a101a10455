//! [`CommitLogRaft`]: the commit log seen as a [`RaftLogStore`].

use std::path::Path;
use std::sync::{mpsc, Arc};

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::{read_entries, LocErr, RaftShared};
use crate::replication::{LogStoreError, RaftLogStore};
use crate::store::writer::{RaftOp, WriterCmd};
use crate::store::{FlushMode, MessageStore};

/// The Raft view of a store opened in raft mode (`MessageStore::raft_log`). Reads come from
/// the entry index and the log; writes go through the store's single writer, and block the
/// calling thread until it has done them (call it from a thread that may block, not from an
/// async task). Keeps the store open while it exists.
///
/// Round trip: `entries()` gives back index, term and type as appended. Data of no-ops (empty)
/// and of anything that is not a run of records (membership changes) comes back exactly as
/// appended. A send or metadata entry comes back in its stored form: the records as the
/// writer filled them in (positions, term, index, entry-end mark). So an entry appended in
/// stored form (read from a peer) reads back byte for byte, and a proposal reads back as the
/// filled form of the same records (`decode_entry` yields the same messages).
#[derive(Clone)]
pub struct CommitLogRaft {
    store: MessageStore,
    raft: Arc<RaftShared>,
    /// A hard state or membership the control file does not hold yet was handed to the
    /// writer since the last `sync`.
    control_pending: bool,
}

fn storage_err(e: LocErr) -> raft::Error {
    match e {
        LocErr::Compacted => raft::Error::Store(StorageError::Compacted),
        LocErr::Unavailable => raft::Error::Store(StorageError::Unavailable),
        LocErr::Corrupt(why) => {
            raft::Error::Store(StorageError::Other(Box::new(LogStoreError::Corrupt(why))))
        }
    }
}

impl CommitLogRaft {
    pub(crate) fn new(store: MessageStore, raft: Arc<RaftShared>) -> Self {
        CommitLogRaft {
            store,
            raft,
            control_pending: false,
        }
    }

    /// The store this log belongs to.
    pub fn store(&self) -> &MessageStore {
        &self.store
    }

    pub fn data_dir(&self) -> &Path {
        &self.store.shared().config.data_dir
    }

    fn raft(&self) -> &RaftShared {
        &self.raft
    }

    /// Hands `op` to the writer and waits for its answer.
    fn call(&self, op: RaftOp) -> Result<(), LogStoreError> {
        let (tx, rx) = mpsc::channel();
        let closed = || LogStoreError::Io(std::io::Error::other("the store is closed"));
        // `futures`' executor parks this thread; unlike tokio's blocking calls it also works
        // when the caller happens to run inside a runtime.
        futures::executor::block_on(self.store.to_writer(WriterCmd::Raft { op, reply: tx }))
            .map_err(|_| closed())?;
        rx.recv().map_err(|_| closed())?
    }
}

impl raft::Storage for CommitLogRaft {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let v = self.raft().view.read();
        Ok(RaftState::new(v.hard_state.clone(), v.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let r = self.raft();
        if low < r.first_index() {
            return Err(StorageError::Compacted.into());
        }
        if high > r.last_index() + 1 || low > high {
            return Err(StorageError::Unavailable.into());
        }
        if low == high {
            return Ok(Vec::new());
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        read_entries(self.store.shared(), r, low, (high - low) as usize, max).map_err(storage_err)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.raft().term(idx).map_err(storage_err)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.raft().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.raft().last_index())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let v = self.raft().view.read();
        if v.cp.index == 0 {
            return Err(StorageError::SnapshotTemporarilyUnavailable.into());
        }
        let mut snap = Snapshot {
            data: super::control::encode_snapshot(v.cp.phy, &v.cp.table).into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = v.cp.index;
        meta.term = v.cp.term;
        meta.set_conf_state(v.conf_state.clone());
        Ok(snap)
    }
}

impl RaftLogStore for CommitLogRaft {
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogStoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.call(RaftOp::Append(entries.to_vec()))
    }

    /// A change of the commit index alone is recorded in the view without a trip to the writer:
    /// only term and vote must reach the control file (see `RaftOp::HardState`), and this
    /// happens on every commit advance.
    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogStoreError> {
        {
            let mut v = self.raft().view.write();
            if v.hard_state.term == hs.term && v.hard_state.vote == hs.vote {
                v.hard_state.commit = hs.commit;
                return Ok(());
            }
        }
        self.control_pending = true;
        self.call(RaftOp::HardState(hs.clone()))
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogStoreError> {
        self.control_pending = true;
        self.call(RaftOp::ConfState(cs.clone()))
    }

    /// Without data the log restarts where it ends now, with the queue offsets it has (a
    /// metadata-only snapshot cannot say where the leader's bytes are).
    fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError> {
        self.call(RaftOp::InstallSnapshot {
            meta: meta.clone(),
            data: None,
        })
    }

    fn apply_snapshot_data(
        &mut self,
        meta: &SnapshotMetadata,
        data: &[u8],
    ) -> Result<(), LogStoreError> {
        let point = super::control::decode_snapshot(data).map_err(LogStoreError::Corrupt)?;
        self.call(RaftOp::InstallSnapshot {
            meta: meta.clone(),
            data: Some(point),
        })
    }

    fn compact(&mut self, index: u64) -> Result<(), LogStoreError> {
        self.call(RaftOp::Compact(index))
    }

    fn sync(&mut self) -> Result<(), LogStoreError> {
        // With async flush and nothing for the control file the writer has nothing to do
        // (entries are acknowledged from the page cache): skip the round trip.
        if !self.control_pending && self.store.shared().config.flush == FlushMode::Async {
            return Ok(());
        }
        self.call(RaftOp::Sync)?;
        self.control_pending = false;
        Ok(())
    }
}
