//! Encoding of Raft messages and the checks every message from a peer passes before it reaches
//! the Raft state machine. raft-rs trusts its peers and panics on some inconsistent messages;
//! a broker must not, so whatever the state machine would choke on is refused here.

use bytes::Bytes;
use protobuf::Message as _;
use raft::prelude::{EntryType, Message, MessageType};
use raft::{Raft, StateRole, Storage};

/// Why a message from a peer was refused. The node keeps running either way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("undecodable raft message: {0}")]
    Decode(String),
    #[error("message addressed to {to}, this replica is {me}")]
    WrongRecipient { to: u64, me: u64 },
    #[error("message from {from}, which is not a member of this group")]
    UnknownSender { from: u64 },
    #[error("message from {from} in a batch from replica {sender}")]
    ForgedSender { from: u64, sender: u64 },
    #[error("message type {0:?} is not accepted from peers")]
    UnexpectedType(MessageType),
    #[error("malformed {kind:?} from {from}: {reason}")]
    Malformed {
        kind: MessageType,
        from: u64,
        reason: String,
    },
    #[error("raft refused the message: {0}")]
    Refused(String),
    #[error("replica has failed: {0}")]
    Failed(String),
}

/// Largest snapshot data accepted from a peer (queue offsets and broker metadata, not messages).
pub const MAX_SNAPSHOT_DATA: usize = 256 << 20;

/// Encodes a Raft message for the wire.
pub fn encode_message(msg: &Message) -> Result<Bytes, String> {
    msg.write_to_bytes()
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// Decodes a Raft message received from a peer. Entry data is sliced out of `bytes`, not
/// copied (a follower used to copy every replicated byte here before storing it).
pub fn decode_message(bytes: &Bytes) -> Result<Message, StepError> {
    Message::parse_from_carllerche_bytes(bytes).map_err(|e| StepError::Decode(e.to_string()))
}

/// Checks `m` (from a peer, for replica `me`) against what raft-rs assumes of its input.
pub(crate) fn check_incoming<S: Storage>(
    me: u64,
    raft: &Raft<S>,
    m: &Message,
) -> Result<(), StepError> {
    let kind = m.get_msg_type();
    let bad = |reason: String| StepError::Malformed {
        kind,
        from: m.from,
        reason,
    };
    if m.to != me {
        return Err(StepError::WrongRecipient { to: m.to, me });
    }
    if m.from == 0 || m.from == me || raft.prs().get(m.from).is_none() {
        return Err(StepError::UnknownSender { from: m.from });
    }
    use MessageType::*;
    match kind {
        MsgAppend
        | MsgAppendResponse
        | MsgRequestVote
        | MsgRequestVoteResponse
        | MsgRequestPreVote
        | MsgRequestPreVoteResponse
        | MsgSnapshot
        | MsgHeartbeat
        | MsgHeartbeatResponse => {}
        // Local-only types, and the features this group does not use (proposal forwarding,
        // read-index, leader transfer): a peer never sends them.
        other => return Err(StepError::UnexpectedType(other)),
    }
    if m.term == 0 {
        return Err(bad("term is 0".into()));
    }
    if kind != MsgAppend && !m.entries.is_empty() {
        return Err(bad("carries entries".into()));
    }
    let last_index = raft.raft_log.last_index();
    match kind {
        MsgAppend => check_append(m).map_err(bad)?,
        // Only a leader in the message's term acts on an ack (raft-rs would then read entries
        // past its log); stale acks are ignored by raft-rs itself.
        MsgAppendResponse
            if !m.reject
                && raft.state == StateRole::Leader
                && m.term == raft.term
                && m.index > last_index =>
        {
            return Err(bad(format!(
                "acknowledges index {} beyond the last index {last_index}",
                m.index
            )));
        }
        // A heartbeat of a current or newer leader moves the commit index (raft-rs asserts it
        // is within the log); stale ones are ignored.
        MsgHeartbeat if m.term >= raft.term && m.commit > last_index => {
            return Err(bad(format!(
                "commit {} beyond the last index {last_index}",
                m.commit
            )));
        }
        MsgSnapshot => check_snapshot(raft, m).map_err(bad)?,
        _ => {}
    }
    Ok(())
}

fn check_append(m: &Message) -> Result<(), String> {
    let mut prev_index = m.index;
    let mut prev_term = m.log_term;
    for e in m.entries.iter() {
        if e.index != prev_index + 1 {
            return Err(format!("entry {} does not follow {prev_index}", e.index));
        }
        if e.term < prev_term || e.term > m.term {
            return Err(format!(
                "entry {} has term {} outside [{prev_term}, {}]",
                e.index, e.term, m.term
            ));
        }
        if e.get_entry_type() != EntryType::EntryNormal {
            return Err(format!(
                "entry {} is a membership change, which this group does not support",
                e.index
            ));
        }
        prev_index = e.index;
        prev_term = e.term;
    }
    Ok(())
}

fn check_snapshot<S: Storage>(raft: &Raft<S>, m: &Message) -> Result<(), String> {
    let Some(snap) = m.snapshot.as_ref() else {
        return Err("no snapshot".into());
    };
    let meta = snap.get_metadata();
    if meta.index == 0 || meta.term == 0 || meta.term > m.term {
        return Err(format!(
            "snapshot index {} / term {} is invalid at term {}",
            meta.index, meta.term, m.term
        ));
    }
    // The data is the log store's and the applier's to check (they decode it); bound it here.
    if snap.data.len() > MAX_SNAPSHOT_DATA {
        return Err(format!(
            "snapshot data of {} bytes exceeds {MAX_SNAPSHOT_DATA}",
            snap.data.len()
        ));
    }
    let mut ours = raft.prs().conf().to_conf_state();
    let mut theirs = meta.get_conf_state().clone();
    for cs in [&mut ours, &mut theirs] {
        cs.voters.sort_unstable();
        cs.learners.sort_unstable();
    }
    if ours.voters != theirs.voters
        || ours.learners != theirs.learners
        || !theirs.voters_outgoing.is_empty()
        || !theirs.learners_next.is_empty()
    {
        return Err(format!(
            "snapshot membership {:?}/{:?} differs from ours {:?}/{:?}",
            theirs.voters, theirs.learners, ours.voters, ours.learners
        ));
    }
    Ok(())
}
