//! Raft replica groups: the consensus core that keeps the brokers of one broker name in sync.
//!
//! Shape (tikv style): the Raft state machine (`raft::RawNode`) is owned by one [`ReplicaNode`]
//! that is fed [`Command`]s (ticks, peer messages, proposals, status reads) and, after each
//! batch, handles the resulting `Ready`: it persists entries and hard state through a
//! [`RaftLogStore`], hands outgoing messages to a [`Transport`] as opaque bytes, and hands
//! committed entries to an [`Applier`]. The node does no I/O of its own beyond those three
//! traits, so it can run on a dedicated thread ([`ReplicaNode::spawn`]) or be stepped by hand
//! under a simulated clock and network (the `raft_*` integration tests do that).
//!
//! The Raft log is meant to *be* the commit log (DLedger style): one entry per send, whose
//! data is the send's commit-log records. [`MemLogStore`] is the in-memory log used by tests;
//! the commit-log-backed store implements the same [`RaftLogStore`] trait.

mod config;
mod conformance;
mod io;
mod log_store;
mod logger;
mod mem_store;
mod node;
mod proposals;
mod runner;
mod status;
mod validate;

pub use config::{AckPolicy, ConfigError, ReplicaConfig};
pub use conformance::check_log_store_contract;
pub use io::{Applier, ApplyError, CommittedEntry, EntryKind, SendError, Transport};
pub use log_store::{LogStoreError, RaftLogStore};
pub use logger::tracing_logger;
pub use mem_store::MemLogStore;
pub use node::{Command, NodeError, ReplicaNode};
pub use proposals::{Completion, EntryId, ProposeError};
pub use runner::{mailbox, Mailbox, ReplicaHandle};
pub use status::{PeerProgress, PeerState, ReplicaStatus, Role, RoleState};
pub use validate::{decode_message, encode_message, StepError};
