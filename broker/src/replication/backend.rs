//! The broker's commit log as a replica group uses it: how sends and metadata operations
//! become entry data, what applying a committed entry does to the store, and where a
//! producer's offsets come from.

use bytes::Bytes;

use super::io::CommittedEntry;
use super::log_store::RaftLogStore;
use crate::store::{AppendBatch, Appended, StoreError};

/// The request handlers' side: turning requests into entry data, and answering producers.
pub trait EntryCodec: Send + Sync + 'static {
    /// Entry data for a send (validated and encoded on the caller's task).
    fn encode_send(&self, batch: &AppendBatch, now_ms: i64) -> Result<Bytes, StoreError>;

    /// Entry data for a metadata operation (`body` is an encoded `MetaOp`).
    fn encode_meta(&self, body: &[u8], now_ms: i64) -> Bytes;

    /// Entry data for a mixed batch (state ops first, then messages of any queues).
    fn encode_mixed(
        &self,
        _batch: &crate::store::MixedBatch,
        _now_ms: i64,
    ) -> Result<Bytes, StoreError> {
        Err(StoreError::Invalid(
            "mixed batches are not supported here".into(),
        ))
    }

    /// Queue and commit-log offsets of each message of the persisted entry `index` (a send).
    fn entry_results(&self, index: u64) -> Result<Vec<Appended>, StoreError>;
}

/// What the replica needs from the commit log.
pub trait LogBackend: EntryCodec + Clone {
    /// The Raft log the replica persists to.
    type Log: RaftLogStore + Send + 'static;

    /// Opens the Raft view of the log (once, at start).
    fn raft_log(&self) -> Result<Self::Log, StoreError>;

    /// The metadata operation bodies an entry carries (none for a send).
    fn meta_bodies(&self, data: &[u8]) -> Result<Vec<Bytes>, StoreError>;

    /// What a send entry's first record announces (an idempotent batch's sequence, a
    /// transaction's half messages): state to apply.
    fn marks(&self, _data: &[u8]) -> crate::store::BatchMarks {
        crate::store::BatchMarks::default()
    }

    /// At start: entries up to `applied` were committed and applied before the restart; make
    /// them visible again.
    fn resume(&self, applied: u64) -> Result<(), StoreError>;

    /// `entries` are committed (in order, after the previous call's): make their messages
    /// visible to consumers. Called on the replica thread, may block.
    fn commit(&self, entries: &[CommittedEntry]) -> Result<(), StoreError>;

    /// A snapshot up to `index` was installed in the log: what it covers is committed.
    fn commit_snapshot(&self, index: u64) -> Result<(), StoreError>;
}
