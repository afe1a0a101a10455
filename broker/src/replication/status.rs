//! What a replica reports about itself: its role (on a watch channel) and, on request, the
//! full status including the leader's view of every peer.

use raft::ProgressState;

/// The Raft role of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    /// Polling peers before an election (pre-vote); the term is not raised yet.
    PreCandidate,
    Candidate,
    Leader,
    /// The replica hit an unrecoverable fault (log or state machine write failed) and stopped.
    Failed,
}

/// The role summary published on every change. The broker is *master* when `master_ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleState {
    pub id: u64,
    pub role: Role,
    pub term: u64,
    /// The leader this replica currently follows (itself when leader), if known.
    pub leader_id: Option<u64>,
    /// Leader that has committed an entry of its own term and applied its whole log up to it:
    /// only then does it know every committed entry, so only then may it serve as master.
    pub master_ready: bool,
    pub is_learner: bool,
    /// Why the replica failed (`role == Failed`).
    pub failure: Option<String>,
}

/// How the leader is replicating to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Probing for the point where the peer's log matches.
    Probe,
    /// Streaming entries.
    Replicate,
    /// Sending a snapshot.
    Snapshot,
}

impl From<ProgressState> for PeerState {
    fn from(p: ProgressState) -> Self {
        match p {
            ProgressState::Probe => PeerState::Probe,
            ProgressState::Replicate => PeerState::Replicate,
            ProgressState::Snapshot => PeerState::Snapshot,
        }
    }
}

/// The leader's view of one member (including itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: u64,
    /// Highest index known to be stored on the peer.
    pub matched: u64,
    pub next_index: u64,
    pub state: PeerState,
    pub is_learner: bool,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
}

/// A snapshot of a replica's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub role: RoleState,
    pub first_index: u64,
    pub last_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Messages from peers that were refused (garbage, unknown sender, malformed fields).
    pub rejected_messages: u64,
    /// Proposals appended but not yet answered.
    pub pending_proposals: usize,
    /// Filled on the leader only, sorted by id. Lag of a peer = `last_index - matched`.
    pub peers: Vec<PeerProgress>,
}
