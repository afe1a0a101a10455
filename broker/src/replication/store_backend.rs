//! The commit log in Raft mode as the replica group's log: the Raft log *is* the commit log
//! (see `docs/replication.md`): a send is proposed as commit-log records, persisted by the
//! store's single writer on every replica (which fills in offsets, term and index), and
//! becomes visible to consumers when the applier moves the confirmed offset past it.

use bytes::Bytes;

use super::backend::{EntryCodec, LogBackend};
use super::io::CommittedEntry;
use crate::store::{self, AppendBatch, Appended, CommitLogRaft, MessageStore, StoreError};

#[derive(Clone)]
pub struct StoreBackend {
    store: MessageStore,
    /// Recorded as the store host of every record this replica proposes.
    host: String,
}

impl StoreBackend {
    pub fn new(store: MessageStore, host: &str) -> Self {
        StoreBackend {
            store,
            host: host.to_string(),
        }
    }

    fn confirm_through(&self, index: u64) -> Result<(), StoreError> {
        let end = self.store.entry_end_offset(index)?;
        self.store.set_confirmed_offset(end);
        Ok(())
    }
}

impl EntryCodec for StoreBackend {
    fn encode_send(&self, batch: &AppendBatch, now_ms: i64) -> Result<Bytes, StoreError> {
        store::encode_for_proposal(batch, &self.host, now_ms)
    }

    fn encode_meta(&self, body: &[u8], now_ms: i64) -> Bytes {
        store::encode_meta_for_proposal(body, &self.host, now_ms)
    }

    fn encode_mixed(&self, batch: &store::MixedBatch, now_ms: i64) -> Result<Bytes, StoreError> {
        store::encode_mixed_for_proposal(batch, &self.host, now_ms)
    }

    fn entry_results(&self, index: u64) -> Result<Vec<Appended>, StoreError> {
        self.store.entry_results(index)
    }
}

impl LogBackend for StoreBackend {
    type Log = CommitLogRaft;

    fn raft_log(&self) -> Result<CommitLogRaft, StoreError> {
        self.store.raft_log()
    }

    fn meta_bodies(&self, data: &[u8]) -> Result<Vec<Bytes>, StoreError> {
        if !store::is_meta_entry(data) {
            return Ok(Vec::new());
        }
        store::meta_bodies(data)
    }

    fn marks(&self, data: &[u8]) -> store::BatchMarks {
        store::entry_marks(data)
    }

    fn resume(&self, applied: u64) -> Result<(), StoreError> {
        if applied == 0 {
            return Ok(());
        }
        // The compaction point answers too (where the log restarts after a snapshot).
        self.confirm_through(applied)
    }

    fn commit(&self, entries: &[CommittedEntry]) -> Result<(), StoreError> {
        match entries.last() {
            Some(last) => self.confirm_through(last.index),
            None => Ok(()),
        }
    }

    fn commit_snapshot(&self, _index: u64) -> Result<(), StoreError> {
        // The commit log restarts where the snapshot says; nothing after it is written yet.
        self.store
            .set_confirmed_offset(self.store.commit_log_range().1);
        Ok(())
    }
}
