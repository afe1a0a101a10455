//! What a replica is asked to do ([`Command`]) and how it can fail ([`NodeError`]).

use bytes::Bytes;
use tokio::sync::oneshot;

use super::config::ConfigError;
use super::io::ApplyError;
use super::log_store::LogStoreError;
use super::proposals::Completion;
use super::status::ReplicaStatus;

/// Work for a replica.
#[derive(Debug)]
pub enum Command {
    /// One logical clock tick (elections, heartbeats, check-quorum).
    Tick,
    /// An encoded Raft message that came in a batch from peer `from` (under mutual TLS, the
    /// replica the connection's certificate stands for): one whose own `from` says otherwise
    /// is refused.
    Message { from: u64, bytes: Bytes },
    /// Append `data` as one entry (if the term is still `term`, when given); answered per
    /// the ack policy.
    Propose {
        data: Bytes,
        term: Option<u64>,
        done: Completion,
    },
    /// Read the replica's status.
    Status(oneshot::Sender<ReplicaStatus>),
    /// Discard the log before `index` (which must be applied).
    Compact {
        index: u64,
        done: oneshot::Sender<Result<(), NodeError>>,
    },
}

/// Errors of the replica itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("log store: {0}")]
    Store(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("inconsistent persisted state: {0}")]
    Inconsistent(String),
    #[error("cannot compact to {index}: only entries up to {applied} are applied")]
    CompactBeyondApplied { index: u64, applied: u64 },
    #[error("replica has failed: {0}")]
    Failed(String),
}

impl From<LogStoreError> for NodeError {
    fn from(e: LogStoreError) -> Self {
        NodeError::Store(e.to_string())
    }
}

impl From<raft::Error> for NodeError {
    fn from(e: raft::Error) -> Self {
        NodeError::Raft(e.to_string())
    }
}
