//! Proposals waiting for their answer, in log order.

use std::collections::VecDeque;

use sluice_proto::{ApiError, ErrorCode};
use tokio::sync::oneshot;

use super::config::AckPolicy;

/// Where an entry sits in the Raft log. Two entries with the same id are the same entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub term: u64,
    pub index: u64,
}

/// Why a proposal was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Refused before entering the log: this replica is not the leader.
    #[error("not the leader (leader: {leader_id:?})")]
    NotLeader { leader_id: Option<u64> },
    /// The entry was appended but this replica stopped being leader before it committed. It
    /// may still commit under the new leader: the outcome is unknown.
    #[error("leadership lost before entry {index} (term {term}) committed; outcome unknown")]
    LeadershipLost { term: u64, index: u64 },
    /// A new leader committed a different entry at this index: the proposal is definitely
    /// not in the log.
    #[error("entry {index} (term {term}) was overwritten by term {by_term}")]
    Overwritten { term: u64, index: u64, by_term: u64 },
    /// Raft refused the proposal (a leader transfer is under way, or too many uncommitted
    /// bytes): it is not in the log.
    #[error("proposal dropped: {0}")]
    Dropped(String),
    /// The proposal named the term it was made for, and this replica's term is another one
    /// (a leader deposed and elected again in between): it is not in the log.
    #[error("proposal for term {expected} refused in term {term}")]
    TermOver { expected: u64, term: u64 },
    /// The replica stopped (shut down or failed) before answering; the outcome is unknown.
    #[error("replica stopped: {0}")]
    Stopped(String),
}

impl ProposeError {
    /// True when the proposal is certainly not in the log, so a retry cannot duplicate it.
    pub fn definitely_absent(&self) -> bool {
        matches!(
            self,
            ProposeError::NotLeader { .. }
                | ProposeError::Overwritten { .. }
                | ProposeError::TermOver { .. }
                | ProposeError::Dropped(_)
        )
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match &e {
            // The broker maps leader ids to addresses; this is the fallback without one.
            ProposeError::NotLeader { .. } => ApiError::not_master(""),
            ProposeError::LeadershipLost { .. }
            | ProposeError::Overwritten { .. }
            | ProposeError::TermOver { .. } => ApiError::new(ErrorCode::NotMaster, e.to_string()),
            ProposeError::Dropped(_) | ProposeError::Stopped(_) => {
                ApiError::new(ErrorCode::Unavailable, e.to_string())
            }
        }
    }
}

/// Answers a proposal with its entry id once acknowledged.
pub type Completion = oneshot::Sender<Result<EntryId, ProposeError>>;

struct Pending {
    id: EntryId,
    policy: AckPolicy,
    done: Completion,
}

/// Outstanding proposals of the current leadership, ascending by index.
#[derive(Default)]
pub(crate) struct Proposals {
    queue: VecDeque<Pending>,
}

impl Proposals {
    pub(crate) fn push(&mut self, id: EntryId, policy: AckPolicy, done: Completion) {
        self.queue.push_back(Pending { id, policy, done });
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// The entries `persisted` were durably appended locally: answer leader-acked proposals
    /// among them.
    pub(crate) fn on_persisted(&mut self, persisted: &[(u64, u64)]) {
        let (Some(&(lo, _)), Some(&(hi, _))) = (persisted.first(), persisted.last()) else {
            return;
        };
        let mut keep = VecDeque::with_capacity(self.queue.len());
        for p in self.queue.drain(..) {
            if p.policy != AckPolicy::Leader || p.id.index < lo || p.id.index > hi {
                keep.push_back(p);
                continue;
            }
            let term = persisted[(p.id.index - lo) as usize].1;
            let answer = if term == p.id.term {
                Ok(p.id)
            } else {
                Err(ProposeError::Overwritten {
                    term: p.id.term,
                    index: p.id.index,
                    by_term: term,
                })
            };
            // The proposer may have given up waiting; nothing to do then.
            let _ = p.done.send(answer);
        }
        self.queue = keep;
    }

    /// Entry (`index`, `term`) was committed and applied.
    pub(crate) fn on_committed(&mut self, index: u64, term: u64) {
        while let Some(front) = self.queue.front() {
            if front.id.index > index {
                break;
            }
            let Some(p) = self.queue.pop_front() else {
                break;
            };
            let answer = if p.id.index < index {
                // Skipped past without being seen (cannot happen without a snapshot).
                Err(ProposeError::LeadershipLost {
                    term: p.id.term,
                    index: p.id.index,
                })
            } else if p.id.term == term {
                Ok(p.id)
            } else {
                Err(ProposeError::Overwritten {
                    term: p.id.term,
                    index: p.id.index,
                    by_term: term,
                })
            };
            let _ = p.done.send(answer);
        }
    }

    /// Fails every outstanding proposal with `make(id)`.
    pub(crate) fn fail_all(&mut self, make: impl Fn(EntryId) -> ProposeError) {
        for p in self.queue.drain(..) {
            let _ = p.done.send(Err(make(p.id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(
        q: &mut Proposals,
        term: u64,
        index: u64,
        policy: AckPolicy,
    ) -> oneshot::Receiver<Result<EntryId, ProposeError>> {
        let (tx, rx) = oneshot::channel();
        q.push(EntryId { term, index }, policy, tx);
        rx
    }

    #[test]
    fn quorum_proposals_resolve_on_commit_by_term() {
        let mut q = Proposals::default();
        let mut a = pending(&mut q, 2, 5, AckPolicy::Quorum);
        let mut b = pending(&mut q, 2, 6, AckPolicy::Quorum);
        q.on_persisted(&[(5, 2), (6, 2)]);
        assert!(a.try_recv().is_err(), "quorum proposals wait for commit");
        q.on_committed(5, 2);
        assert_eq!(a.try_recv().unwrap(), Ok(EntryId { term: 2, index: 5 }));
        q.on_committed(6, 3);
        assert_eq!(
            b.try_recv().unwrap(),
            Err(ProposeError::Overwritten {
                term: 2,
                index: 6,
                by_term: 3
            })
        );
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn leader_proposals_resolve_on_persist() {
        let mut q = Proposals::default();
        let mut a = pending(&mut q, 4, 10, AckPolicy::Leader);
        let mut b = pending(&mut q, 4, 11, AckPolicy::Leader);
        q.on_persisted(&[(9, 4), (10, 4)]);
        assert_eq!(a.try_recv().unwrap(), Ok(EntryId { term: 4, index: 10 }));
        assert!(b.try_recv().is_err());
        q.fail_all(|id| ProposeError::LeadershipLost {
            term: id.term,
            index: id.index,
        });
        assert_eq!(
            b.try_recv().unwrap(),
            Err(ProposeError::LeadershipLost { term: 4, index: 11 })
        );
    }

    #[test]
    fn errors_map_to_wire_codes() {
        let e: ApiError = ProposeError::NotLeader { leader_id: Some(2) }.into();
        assert_eq!(e.code, ErrorCode::NotMaster);
        let e: ApiError = ProposeError::Dropped("x".into()).into();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(ProposeError::Overwritten {
            term: 1,
            index: 1,
            by_term: 2
        }
        .definitely_absent());
        assert!(!ProposeError::LeadershipLost { term: 1, index: 1 }.definitely_absent());
    }
}
