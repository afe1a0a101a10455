//! The replica driver: owns the Raft state machine and runs its Ready loop against the log
//! store, the transport and the applier. It does no I/O of its own and is single-owner: feed it
//! [`Command`]s (from a channel, see [`super::runner`], or by hand in a simulation) and call
//! [`ReplicaNode::process_ready`] after each batch.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use bytes::Bytes;
use raft::prelude::{Entry, EntryType, Message, MessageType, SnapshotMetadata};
use raft::{RawNode, SnapshotStatus, StateRole};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use super::command::{Command, NodeError};
use super::config::{sorted, AckPolicy, ReplicaConfig};
use super::io::{Applier, CommittedEntry, EntryKind, Transport};
use super::log_store::RaftLogStore;
use super::logger::tracing_logger;
use super::proposals::{Completion, EntryId, Proposals, ProposeError};
use super::status::{PeerProgress, ReplicaStatus, Role, RoleState};
use super::validate::{check_incoming, decode_message, encode_message, StepError};

/// Fewest ticks a candidate waits for votes before it campaigns again.
const CANDIDATE_RETRY_MIN: usize = 2;

/// Bounds the Ready rounds of one `process_ready` (each round normally settles the next).
const MAX_READY_ROUNDS: usize = 16;

/// One replica of a replica group.
pub struct ReplicaNode<S: RaftLogStore, T: Transport, A: Applier> {
    id: u64,
    raw: RawNode<S>,
    transport: T,
    applier: A,
    ack_policy: AckPolicy,
    tick_interval: Duration,
    proposals: Proposals,
    role_tx: watch::Sender<RoleState>,
    /// Draws election timeouts, so a seeded run replays exactly.
    rng: StdRng,
    election_range: (usize, usize),
    /// Role and term last seen, to notice transitions.
    observed: (StateRole, u64),
    /// Term of the last applied entry; a leader is master-ready once it equals its term.
    last_applied_term: u64,
    /// Peers a send to failed during the current Ready; reported after it is advanced.
    unreachable: Vec<u64>,
    /// Snapshots handed to the transport during the current Ready (peer, accepted).
    snapshots_sent: Vec<(u64, bool)>,
    rejected_messages: u64,
    failure: Option<String>,
}

impl<S: RaftLogStore, T: Transport, A: Applier> ReplicaNode<S, T, A> {
    /// Opens a replica on `store`. A fresh store is bootstrapped with the configured
    /// membership; an existing one keeps its persisted membership and state.
    pub fn new(
        config: &ReplicaConfig,
        mut store: S,
        transport: T,
        applier: A,
    ) -> Result<Self, NodeError> {
        config.validate()?;
        let state = store.initial_state()?;
        let first = store.first_index()?;
        let last = store.last_index()?;
        let mut hs = state.hard_state.clone();
        if !state.initialized() {
            if last >= first || hs != Default::default() {
                return Err(NodeError::Inconsistent(
                    "the log has entries or a hard state but no membership".into(),
                ));
            }
            store.set_conf_state(&config.conf_state())?;
            store.sync()?;
        } else if sorted(&state.conf_state.voters) != sorted(&config.voters)
            || sorted(&state.conf_state.learners) != sorted(&config.learners)
        {
            tracing::warn!(
                replica = config.id,
                persisted_voters = ?state.conf_state.voters,
                persisted_learners = ?state.conf_state.learners,
                "configured membership differs from the persisted one; the persisted one wins"
            );
        }
        if hs.commit > last {
            return Err(NodeError::Inconsistent(format!(
                "commit index {} beyond the last index {last}",
                hs.commit
            )));
        }
        let applied = applier.applied_index();
        if applied > last || applied + 1 < first {
            return Err(NodeError::Inconsistent(format!(
                "state machine applied up to {applied} but the log holds [{first}, {last}]"
            )));
        }
        // Entries are applied only once committed, but the commit index is persisted lazily:
        // after a crash it may trail what was applied. Applied entries are committed, so
        // raising it is safe (and raft-rs requires applied <= commit).
        if applied > hs.commit {
            hs.commit = applied;
            store.set_hard_state(&hs)?;
            store.sync()?;
        }
        let last_applied_term = store.term(applied).unwrap_or(0);
        let logger = tracing_logger(config.id);
        let raw = RawNode::new(&config.to_raft_config(applied), store, &logger)?;
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let mut node = ReplicaNode {
            id: config.id,
            observed: (raw.raft.state, raw.raft.term),
            raw,
            transport,
            applier,
            ack_policy: config.ack_policy,
            tick_interval: config.tick_interval,
            proposals: Proposals::default(),
            role_tx: watch::Sender::new(RoleState {
                id: config.id,
                role: Role::Follower,
                term: 0,
                leader_id: None,
                master_ready: false,
                is_learner: config.is_learner(),
                failure: None,
            }),
            rng,
            election_range: (config.election_ticks, config.max_election_ticks),
            last_applied_term,
            unreachable: Vec::new(),
            snapshots_sent: Vec::new(),
            rejected_messages: 0,
            failure: None,
        };
        node.redraw_election_timeout();
        node.observe();
        Ok(node)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn tick_interval(&self) -> Duration {
        self.tick_interval
    }

    /// Role changes (role, term, known leader, master readiness) as they happen.
    pub fn subscribe(&self) -> watch::Receiver<RoleState> {
        self.role_tx.subscribe()
    }

    /// The current role summary.
    pub fn role(&self) -> RoleState {
        self.role_tx.borrow().clone()
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    pub fn applier(&self) -> &A {
        &self.applier
    }

    pub fn store(&self) -> &S {
        self.raw.store()
    }

    /// Takes the replica apart (a simulated crash keeps the store and the state machine).
    /// Outstanding proposals are dropped, which their waiters see as the replica stopping.
    pub fn into_parts(self) -> (S, T, A) {
        let RawNode { raft, .. } = self.raw;
        (raft.r.raft_log.store, self.transport, self.applier)
    }

    /// Handles one command. Call [`Self::process_ready`] after a batch of them.
    pub fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Tick => self.tick(),
            Command::Message { from, bytes } => {
                if let Err(e) = self.step_from(&bytes, Some(from)) {
                    tracing::debug!(replica = self.id, error = %e, "refused a raft message");
                }
            }
            Command::Propose { data, term, done } => self.propose_in_term(data, term, done),
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Compact { index, done } => {
                let _ = done.send(self.compact(index));
            }
        }
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.guarded(|n| {
            n.raw.tick();
        });
    }

    /// Feeds an encoded message from a peer. Garbage and messages raft-rs cannot take are
    /// refused with an error; the replica is unaffected.
    pub fn step(&mut self, bytes: &Bytes) -> Result<(), StepError> {
        self.step_from(bytes, None)
    }

    /// [`Self::step`] for a message that came from `sender`, when known.
    pub fn step_from(&mut self, bytes: &Bytes, sender: Option<u64>) -> Result<(), StepError> {
        if let Some(f) = &self.failure {
            return Err(StepError::Failed(f.clone()));
        }
        let checked = decode_message(bytes).and_then(|m| match sender {
            Some(s) if s != m.from => Err(StepError::ForgedSender {
                from: m.from,
                sender: s,
            }),
            _ => check_incoming(self.id, &self.raw.raft, &m).map(|()| m),
        });
        let msg = match checked {
            Ok(m) => m,
            Err(e) => {
                self.rejected_messages += 1;
                return Err(e);
            }
        };
        match self.guarded(|n| n.raw.step(msg)) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                self.rejected_messages += 1;
                Err(StepError::Refused(e.to_string()))
            }
            None => Err(StepError::Failed(self.failure.clone().unwrap_or_default())),
        }
    }

    /// Proposes `data` as one entry; `done` receives the entry id once acknowledged.
    pub fn propose(&mut self, data: Bytes, done: Completion) {
        self.propose_in_term(data, None, done)
    }

    /// [`Self::propose`], refused with `TermOver` unless the term is `term` (when given).
    pub fn propose_in_term(&mut self, data: Bytes, term: Option<u64>, done: Completion) {
        if let Some(f) = &self.failure {
            let _ = done.send(Err(ProposeError::Stopped(f.clone())));
            return;
        }
        if data.is_empty() {
            // Empty entries are the leaders' no-ops; the applier tells them apart by that.
            let _ = done.send(Err(ProposeError::Dropped("empty proposal".into())));
            return;
        }
        let policy = self.ack_policy;
        self.guarded(move |n| {
            let r = &n.raw.raft;
            if r.state != StateRole::Leader {
                let leader_id = (r.leader_id != 0).then_some(r.leader_id);
                let _ = done.send(Err(ProposeError::NotLeader { leader_id }));
                return;
            }
            if let Some(expected) = term.filter(|&t| t != r.term) {
                let term = r.term;
                let _ = done.send(Err(ProposeError::TermOver { expected, term }));
                return;
            }
            let before = r.raft_log.last_index();
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgPropose);
            m.from = n.id;
            // Bytes move into the entry without a copy (RawNode::propose would copy).
            let e = Entry {
                data,
                ..Default::default()
            };
            m.set_entries(vec![e].into());
            match n.raw.raft.step(m) {
                Ok(()) => {
                    let index = n.raw.raft.raft_log.last_index();
                    let term = n.raw.raft.term;
                    if index == before + 1 {
                        n.proposals.push(EntryId { term, index }, policy, done);
                    } else {
                        // Not what raft-rs does; where the entry went is unknown.
                        let _ = done.send(Err(ProposeError::LeadershipLost { term, index }));
                    }
                }
                Err(raft::Error::ProposalDropped) => {
                    let _ = done.send(Err(ProposeError::Dropped(
                        "leader transfer in progress or too many uncommitted bytes".into(),
                    )));
                }
                Err(e) => {
                    let _ = done.send(Err(ProposeError::Dropped(e.to_string())));
                }
            }
        });
    }

    /// Discards the log before `index`. Only applied entries can be discarded; a follower that
    /// needs them later gets a snapshot (the compaction point) instead.
    pub fn compact(&mut self, index: u64) -> Result<(), NodeError> {
        if let Some(f) = &self.failure {
            return Err(NodeError::Failed(f.clone()));
        }
        let applied = self.raw.raft.raft_log.applied;
        if index > applied + 1 {
            return Err(NodeError::CompactBeyondApplied { index, applied });
        }
        match self.guarded(|n| n.raw.mut_store().compact(index)) {
            Some(r) => r.map_err(NodeError::from),
            None => Err(NodeError::Failed(self.failure.clone().unwrap_or_default())),
        }
    }

    /// Handles everything the commands made ready: persists, sends, applies, answers.
    pub fn process_ready(&mut self) {
        match self.guarded(|n| n.process_ready_inner()) {
            Some(Ok(())) | None => {}
            Some(Err(e)) => self.fail(e.to_string()),
        }
    }

    /// The replica's status, including the leader's view of its peers.
    pub fn status(&self) -> ReplicaStatus {
        let r = &self.raw.raft;
        let mut peers = Vec::new();
        if r.state == StateRole::Leader && self.failure.is_none() {
            let learners = r.prs().conf().learners();
            peers = r
                .prs()
                .iter()
                .map(|(&id, p)| PeerProgress {
                    id,
                    matched: p.matched,
                    next_index: p.next_idx,
                    state: p.state.into(),
                    is_learner: learners.contains(&id),
                    recent_active: p.recent_active,
                })
                .collect();
            peers.sort_by_key(|p| p.id);
        }
        ReplicaStatus {
            role: self.role(),
            first_index: r.raft_log.first_index(),
            last_index: r.raft_log.last_index(),
            commit_index: r.raft_log.committed,
            applied_index: r.raft_log.applied,
            rejected_messages: self.rejected_messages,
            pending_proposals: self.proposals.len(),
            peers,
        }
    }

    /// Runs `f`, turning a panic inside raft-rs (which asserts on states a faulty peer or
    /// store can produce) into a failed replica instead of a crashed broker.
    fn guarded<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> Option<R> {
        if self.failure.is_some() {
            return None;
        }
        match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(r) => {
                self.observe();
                Some(r)
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                self.fail(format!("raft state machine panicked: {what}"));
                None
            }
        }
    }

    fn fail(&mut self, reason: String) {
        tracing::error!(replica = self.id, %reason, "replica failed and stopped");
        self.proposals
            .fail_all(|_| ProposeError::Stopped(reason.clone()));
        self.failure = Some(reason);
        self.publish_role();
    }

    fn redraw_election_timeout(&mut self) {
        let (lo, hi) = self.election_range;
        let t = self.rng.gen_range(lo..hi);
        self.raw.raft.set_randomized_election_timeout(t);
        if self.raw.raft.state == StateRole::Candidate {
            // A candidate hears back within a few round trips; if it has not won by then,
            // the vote was most likely split with another candidate (both passed pre-vote
            // at once), and waiting a whole election timeout again would double the
            // failover. Retry after a short random wait instead: a few ticks, still
            // randomised so the two candidates drift apart.
            let wait = self
                .rng
                .gen_range(CANDIDATE_RETRY_MIN..(lo / 2).max(1) + CANDIDATE_RETRY_MIN);
            self.raw.raft.election_elapsed = t.saturating_sub(wait);
        }
    }

    /// Notices role/term transitions and publishes the role.
    fn observe(&mut self) {
        let now = (self.raw.raft.state, self.raw.raft.term);
        if now != self.observed {
            // raft-rs re-draws the election timeout from the thread RNG on every role or term
            // transition (and only then); re-draw it from ours so seeded runs replay exactly.
            self.redraw_election_timeout();
            if self.observed.0 == StateRole::Leader {
                // A deposed leader stops acknowledging at once.
                self.proposals.fail_all(|id| ProposeError::LeadershipLost {
                    term: id.term,
                    index: id.index,
                });
            }
            tracing::info!(
                replica = self.id,
                from = ?self.observed,
                to = ?now,
                leader = self.raw.raft.leader_id,
                "raft role changed"
            );
            self.observed = now;
        }
        self.publish_role();
    }

    fn publish_role(&mut self) {
        let r = &self.raw.raft;
        let rs = RoleState {
            id: self.id,
            role: match (&self.failure, r.state) {
                (Some(_), _) => Role::Failed,
                (None, StateRole::Follower) => Role::Follower,
                (None, StateRole::PreCandidate) => Role::PreCandidate,
                (None, StateRole::Candidate) => Role::Candidate,
                (None, StateRole::Leader) => Role::Leader,
            },
            term: r.term,
            leader_id: (r.leader_id != 0 && self.failure.is_none()).then_some(r.leader_id),
            master_ready: self.failure.is_none()
                && r.state == StateRole::Leader
                && self.last_applied_term == r.term,
            is_learner: r.prs().conf().learners().contains(&self.id),
            failure: self.failure.clone(),
        };
        self.role_tx.send_if_modified(|cur| {
            let changed = *cur != rs;
            if changed {
                *cur = rs;
            }
            changed
        });
    }

    fn process_ready_inner(&mut self) -> Result<(), NodeError> {
        for _ in 0..MAX_READY_ROUNDS {
            if !self.raw.has_ready() {
                break;
            }
            self.handle_ready()?;
            for peer in std::mem::take(&mut self.unreachable) {
                self.raw.report_unreachable(peer);
            }
            // A snapshot is complete once sent (it is one message). Until told, raft-rs
            // pauses the peer; if the message is lost, the next probe fails and it resends.
            for (peer, sent) in std::mem::take(&mut self.snapshots_sent) {
                let status = if sent {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(peer, status);
            }
        }
        Ok(())
    }

    fn handle_ready(&mut self) -> Result<(), NodeError> {
        let mut rd = self.raw.ready();
        // A leader sends appends before persisting them (Raft thesis 10.2.1).
        self.send_all(rd.take_messages());
        if !rd.snapshot().is_empty() {
            let meta = rd.snapshot().get_metadata().clone();
            let data = rd.snapshot().data.clone();
            self.install_snapshot(&meta, &data)?;
        }
        let entries = rd.take_entries();
        let store = self.raw.mut_store();
        store.append(&entries)?;
        if let Some(hs) = rd.hs() {
            store.set_hard_state(hs)?;
        }
        if rd.must_sync() {
            store.sync()?;
        }
        let persisted: Vec<(u64, u64)> = entries.iter().map(|e| (e.index, e.term)).collect();
        self.proposals.on_persisted(&persisted);
        // Votes and append acks promise durability: only after the sync above.
        self.send_all(rd.take_persisted_messages());
        self.apply(rd.take_committed_entries())?;
        let mut light = self.raw.advance_append(rd);
        if light.commit_index().is_some() {
            // Persisted before applying, so a restart rarely re-derives it (see `new`).
            let hs = self.raw.raft.hard_state();
            self.raw.mut_store().set_hard_state(&hs)?;
        }
        self.send_all(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        Ok(())
    }

    fn install_snapshot(&mut self, meta: &SnapshotMetadata, data: &[u8]) -> Result<(), NodeError> {
        tracing::info!(
            replica = self.id,
            index = meta.index,
            term = meta.term,
            "installing the leader's compaction point"
        );
        self.raw.mut_store().apply_snapshot_data(meta, data)?;
        self.applier
            .apply_snapshot_data(meta.index, meta.term, data)?;
        // Only followers receive snapshots, and a follower has no pending proposals.
        self.proposals.fail_all(|id| ProposeError::LeadershipLost {
            term: id.term,
            index: id.index,
        });
        self.last_applied_term = meta.term;
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let last_term = last.term;
        let mut batch = Vec::with_capacity(entries.len());
        for e in entries {
            if e.get_entry_type() != EntryType::EntryNormal {
                return Err(NodeError::Inconsistent(format!(
                    "committed entry {} is a membership change, which is not supported",
                    e.index
                )));
            }
            let kind = if e.data.is_empty() {
                EntryKind::LeaderNoop
            } else {
                EntryKind::Normal
            };
            batch.push(CommittedEntry {
                index: e.index,
                term: e.term,
                kind,
                data: e.data,
            });
        }
        self.applier.apply(&batch)?;
        for c in &batch {
            self.proposals.on_committed(c.index, c.term);
        }
        self.last_applied_term = last_term;
        Ok(())
    }

    fn send_all(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            match encode_message(&m) {
                Ok(bytes) => {
                    let sent = self.transport.send(to, bytes);
                    if let Err(e) = &sent {
                        tracing::debug!(replica = self.id, to, error = %e, "raft message dropped");
                        self.unreachable.push(to);
                    }
                    if is_snapshot {
                        self.snapshots_sent.push((to, sent.is_ok()));
                    }
                }
                Err(e) => {
                    tracing::error!(replica = self.id, to, error = %e, "cannot encode raft message");
                }
            }
        }
    }
}
