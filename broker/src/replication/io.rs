//! The two outward edges of a replica besides its log: the network and the state machine.

use bytes::Bytes;

/// Why a message could not be queued for a peer. The message is dropped either way; the node
/// tells Raft the peer is unreachable so the leader falls back to probing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("peer {0} is unknown to the transport")]
    UnknownPeer(u64),
    #[error("peer {0} is unreachable")]
    Unreachable(u64),
    #[error("the send queue to peer {0} is full")]
    QueueFull(u64),
}

/// Carries encoded Raft messages to peers.
pub trait Transport {
    /// Queues `msg` (an encoded `raft::eraftpb::Message`) for peer `to`. Must not block: Raft
    /// tolerates loss, so a transport that cannot deliver right now drops the message and says
    /// so.
    fn send(&mut self, to: u64, msg: Bytes) -> Result<(), SendError>;
}

/// What a committed entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A proposal's data (one send of the broker).
    Normal,
    /// The entry every new leader appends to commit its term; it has no data.
    LeaderNoop,
}

/// A committed entry handed to the [`Applier`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEntry {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    pub data: Bytes,
}

/// The state machine failed; the replica stops (it cannot skip an entry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("apply failed: {0}")]
pub struct ApplyError(pub String);

/// Consumes committed entries in log order. For the broker this advances the commit log's
/// confirmed offset (the entries already sit in the log; consume queues are built only from
/// confirmed records).
pub trait Applier {
    /// The last index this state machine has applied (durably, as far as it cares). Read once
    /// when the node starts, so Raft resumes delivering from the next entry.
    fn applied_index(&self) -> u64;

    /// Applies `entries` (non-empty, contiguous, continuing right after the last applied or
    /// snapshot index).
    fn apply(&mut self, entries: &[CommittedEntry]) -> Result<(), ApplyError>;

    /// The leader had compacted the entries this replica lacked and sent a snapshot instead:
    /// the log now starts after `index` (of `term`), and everything up to `index` counts as
    /// applied. Entries after it follow through [`Applier::apply`].
    fn apply_snapshot(&mut self, index: u64, term: u64) -> Result<(), ApplyError>;

    /// Like [`Self::apply_snapshot`], with the snapshot's data (see
    /// [`super::RaftLogStore::apply_snapshot_data`]), already installed in the log store. This
    /// is what the driver calls; the default ignores the data.
    fn apply_snapshot_data(
        &mut self,
        index: u64,
        term: u64,
        data: &[u8],
    ) -> Result<(), ApplyError> {
        let _ = data;
        self.apply_snapshot(index, term)
    }
}
