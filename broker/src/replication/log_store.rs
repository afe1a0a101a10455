//! The replicated log a [`super::ReplicaNode`] persists to.

use raft::prelude::{ConfState, Entry, HardState, SnapshotMetadata};

/// Why a log store operation failed. Any error from a write makes the replica stop (it can no
/// longer promise what it told its peers), so implementations should only fail on real faults.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("append at index {first} leaves a gap after the last index {last}")]
    Gap { first: u64, last: u64 },
    #[error("index {index} is compacted (the log starts at {first_index})")]
    Compacted { index: u64, first_index: u64 },
    #[error("entries are not contiguous: index {got} follows {prev}")]
    NotContiguous { prev: u64, got: u64 },
    #[error("compaction to {index} is beyond the last index {last}")]
    CompactBeyondLog { index: u64, last: u64 },
    #[error("corrupt log: {0}")]
    Corrupt(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<LogStoreError> for raft::Error {
    fn from(e: LogStoreError) -> Self {
        match e {
            LogStoreError::Compacted { .. } => raft::Error::Store(raft::StorageError::Compacted),
            other => raft::Error::Store(raft::StorageError::Other(Box::new(other))),
        }
    }
}

/// A durable Raft log: the read side raft-rs needs ([`raft::Storage`]) plus the writes the
/// Ready loop makes. Entry data is opaque bytes; the store must be able to answer `term(i)`
/// and `entries(lo, hi, max_size)` from its own files after a restart.
///
/// # Log shape
///
/// The log holds the entries `first_index() ..= last_index()` (empty when
/// `last_index() == first_index() - 1`). The entries before `first_index()` are compacted,
/// but the term of `first_index() - 1` (the *compaction point*) is kept: `term(i)` answers
/// for every `i` in `first_index() - 1 ..= last_index()`, with `term(0) == 0` for a fresh log.
/// `first_index()` is 1 for a log that was never compacted.
///
/// # What an implementation must guarantee
///
/// * **Visibility**: every write is visible to the read methods as soon as it returns.
/// * **Durability**: after [`sync`](Self::sync) returns `Ok`, every earlier write survives a
///   crash or power loss. The driver calls `sync` before it sends any message that depends
///   on the writes (votes, append acks) and before it acknowledges a proposal. A store in an
///   asynchronous-flush mode may make `sync` cheaper than an fsync, but then a crash can lose
///   acknowledged entries and votes (Raft safety then rests on the other replicas).
/// * **Atomic ordering**: a crash never leaves a later write durable while an earlier one is
///   lost (the log after recovery is a prefix-closed state of the writes).
/// * **Truncation**: `append(entries)` with `entries[0].index == i` first discards every
///   entry at index `>= i`, then appends. This is how a follower drops the uncommitted tail a
///   deposed leader left behind. `i` must lie in `first_index() ..= last_index() + 1`.
/// * **Round trip**: `entries()` returns entries with the same index, term, type and data as
///   appended (the `context` field is never set by the driver and need not be stored).
/// * **Reads**: `entries(lo, hi, max_size, _)` returns `[lo, hi)` cut after the first entry
///   whose cumulative size exceeds `max_size` (at least one entry when `lo < hi`); it returns
///   `StorageError::Compacted` for `lo < first_index()` and `StorageError::Unavailable` for
///   `hi > last_index() + 1`. `term(i)` returns `Compacted` below the compaction point and
///   `Unavailable` above the last index. Reads never panic.
/// * **Snapshot**: `snapshot()` describes the compaction point (`index = first_index() - 1`,
///   its term, the current [`ConfState`]), or returns `SnapshotTemporarilyUnavailable` when
///   the log was never compacted. Its `data` is the store's own business (empty for
///   [`super::MemLogStore`]; the commit log puts there where its bytes restart and the next
///   queue offsets): it reaches the follower's [`RaftLogStore::apply_snapshot_data`] as is.
/// * **Initial state**: `initial_state()` returns the last persisted [`HardState`] and
///   [`ConfState`]; a fresh store returns defaults (an empty `ConfState` means "not
///   bootstrapped", and the driver then writes the configured membership).
pub trait RaftLogStore: raft::Storage {
    /// Appends `entries` (contiguous, ascending indexes), first discarding every entry at or
    /// after `entries[0].index`. An empty slice is a no-op.
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogStoreError>;

    /// Replaces the persisted term, vote and commit index.
    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogStoreError>;

    /// Replaces the persisted membership.
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogStoreError>;

    /// Installs a snapshot received from the leader: discards the whole log and makes
    /// `meta.index` the compaction point (with `meta.term`), so `first_index()` becomes
    /// `meta.index + 1`; replaces the membership with `meta.conf_state` and raises the
    /// persisted commit index to `meta.index` if it was lower.
    fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError>;

    /// Installs a snapshot that carries `data` (what this kind of store's `snapshot()` put in
    /// it, produced by the leader). This is what the driver calls; stores whose snapshots carry
    /// data override it (and may implement [`Self::apply_snapshot`] as a call with no data).
    /// The default takes metadata-only snapshots and refuses data it would otherwise drop.
    fn apply_snapshot_data(
        &mut self,
        meta: &SnapshotMetadata,
        data: &[u8],
    ) -> Result<(), LogStoreError> {
        if !data.is_empty() {
            return Err(LogStoreError::Corrupt(format!(
                "snapshot at {} carries {} bytes of data this log cannot install",
                meta.index,
                data.len()
            )));
        }
        self.apply_snapshot(meta)
    }

    /// Discards the entries before `index` (which becomes `first_index()`), keeping the term of
    /// `index - 1`. A no-op when `index <= first_index()`; an error when
    /// `index > last_index() + 1`. The driver only compacts applied entries.
    fn compact(&mut self, index: u64) -> Result<(), LogStoreError>;

    /// Makes every earlier write durable (see the trait docs).
    fn sync(&mut self) -> Result<(), LogStoreError>;
}
