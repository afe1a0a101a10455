//! A deterministic in-process Raft cluster (tikv style): real `ReplicaNode`s over `MemLogStore`s,
//! a virtual clock, and a simulated network that drops, delays, duplicates, reorders and
//! partitions messages. Everything random comes from one seed, so a failing seed replays.

#![allow(dead_code)] // each test file uses a different part of the harness

mod checks;
mod faults;

// Each test binary includes this module and uses a part of it.
#[allow(unused_imports)]
pub use faults::seeded_runs;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::mpsc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_broker::replication::{
    AckPolicy, Applier, ApplyError, CommittedEntry, EntryId, EntryKind, MemLogStore, ProposeError,
    ReplicaConfig, ReplicaNode, Role, RoleState, SendError, Transport,
};
use tokio::sync::oneshot;

pub type Node = ReplicaNode<MemLogStore, SimTransport, Recorder>;

/// A message on the simulated wire.
pub struct Envelope {
    pub from: u64,
    pub to: u64,
    pub msg: Bytes,
}

/// Hands messages to the simulated network.
pub struct SimTransport {
    from: u64,
    tx: mpsc::Sender<Envelope>,
}

impl Transport for SimTransport {
    fn send(&mut self, to: u64, msg: Bytes) -> Result<(), SendError> {
        self.tx
            .send(Envelope {
                from: self.from,
                to,
                msg,
            })
            .map_err(|_| SendError::Unreachable(to))
    }
}

/// The state machine of a simulated replica: it records what was applied and checks the
/// `Applier` contract (contiguous delivery). It survives crashes, like a durable one.
#[derive(Default, Clone)]
pub struct Recorder {
    /// Applied entries with data, in order.
    pub entries: Vec<CommittedEntry>,
    /// Snapshot points installed (index, term).
    pub snapshots: Vec<(u64, u64)>,
    pub applied: u64,
    pub applied_term: u64,
}

impl Applier for Recorder {
    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn apply(&mut self, entries: &[CommittedEntry]) -> Result<(), ApplyError> {
        for e in entries {
            if e.index != self.applied + 1 {
                return Err(ApplyError(format!(
                    "entry {} delivered after {}",
                    e.index, self.applied
                )));
            }
            if e.term < self.applied_term {
                return Err(ApplyError(format!(
                    "entry {} has term {} below the previous {}",
                    e.index, e.term, self.applied_term
                )));
            }
            if (e.kind == EntryKind::LeaderNoop) != e.data.is_empty() {
                return Err(ApplyError(format!("entry {} has the wrong kind", e.index)));
            }
            self.applied = e.index;
            self.applied_term = e.term;
            self.entries.push(e.clone());
        }
        Ok(())
    }

    fn apply_snapshot(&mut self, index: u64, term: u64) -> Result<(), ApplyError> {
        if index <= self.applied {
            return Err(ApplyError(format!(
                "snapshot at {index} does not move past applied {}",
                self.applied
            )));
        }
        self.snapshots.push((index, term));
        self.applied = index;
        self.applied_term = term;
        Ok(())
    }
}

/// Knobs of a simulated cluster.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub tick_ms: u64,
    pub election_ticks: usize,
    pub max_election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    pub drop_rate: f64,
    pub dup_rate: f64,
    pub ack_policy: AckPolicy,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            tick_ms: 100,
            election_ticks: 10,
            max_election_ticks: 20,
            heartbeat_ticks: 1,
            min_delay_ms: 1,
            max_delay_ms: 5,
            drop_rate: 0.0,
            dup_rate: 0.0,
            ack_policy: AckPolicy::Quorum,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
        }
    }
}

enum Slot {
    Up {
        node: Box<Node>,
        next_tick: u64,
    },
    /// Crashed: what it persisted.
    Down(Box<(MemLogStore, Recorder)>),
    /// Transient while switching states.
    Gone,
}

/// A message in flight: (delivery time, sequence number, from, to, bytes), earliest first.
type InFlight = Reverse<(u64, u64, u64, u64, Bytes)>;

/// A proposal and what became of it.
pub struct Ticket {
    pub node: u64,
    pub data: Bytes,
    rx: Option<oneshot::Receiver<Result<EntryId, ProposeError>>>,
    pub outcome: Option<Result<EntryId, ProposeError>>,
}

/// One simulated replica group.
pub struct Cluster {
    pub seed: u64,
    pub rng: StdRng,
    /// Virtual time, ms.
    pub now: u64,
    pub opts: SimOptions,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    nodes: BTreeMap<u64, Slot>,
    restarts: HashMap<u64, u64>,
    queue: BinaryHeap<InFlight>,
    seq: u64,
    /// Directed links that lose everything.
    cut: HashSet<(u64, u64)>,
    out_rx: mpsc::Receiver<Envelope>,
    out_tx: mpsc::Sender<Envelope>,
    pub tickets: Vec<Ticket>,
    /// Messages refused by a replica (must stay 0: peers only send well-formed messages).
    pub step_errors: Vec<String>,
    pub delivered: u64,
}

impl Cluster {
    pub fn new(seed: u64, voters: &[u64], learners: &[u64], opts: SimOptions) -> Cluster {
        let (out_tx, out_rx) = mpsc::channel();
        let mut c = Cluster {
            seed,
            rng: StdRng::seed_from_u64(seed),
            now: 0,
            opts,
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            nodes: BTreeMap::new(),
            restarts: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            cut: HashSet::new(),
            out_rx,
            out_tx,
            tickets: Vec::new(),
            step_errors: Vec::new(),
            delivered: 0,
        };
        for &id in voters.iter().chain(learners) {
            c.nodes.insert(
                id,
                Slot::Down(Box::new((MemLogStore::new(), Recorder::default()))),
            );
            c.restart(id);
        }
        c
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn config(&self, id: u64) -> ReplicaConfig {
        let mut cfg = ReplicaConfig::new(id, self.voters.clone(), self.learners.clone());
        cfg.election_ticks = self.opts.election_ticks;
        cfg.max_election_ticks = self.opts.max_election_ticks;
        cfg.heartbeat_ticks = self.opts.heartbeat_ticks;
        cfg.ack_policy = self.opts.ack_policy;
        cfg.max_size_per_msg = self.opts.max_size_per_msg;
        cfg.max_inflight_msgs = self.opts.max_inflight_msgs;
        let restarts = self.restarts.get(&id).copied().unwrap_or(0);
        cfg.rng_seed = Some(
            self.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(id * 1000 + restarts),
        );
        cfg
    }

    pub fn is_up(&self, id: u64) -> bool {
        matches!(self.nodes.get(&id), Some(Slot::Up { .. }))
    }

    pub fn up_ids(&self) -> Vec<u64> {
        self.ids()
            .into_iter()
            .filter(|&id| self.is_up(id))
            .collect()
    }

    pub fn node(&self, id: u64) -> Option<&Node> {
        match self.nodes.get(&id) {
            Some(Slot::Up { node, .. }) => Some(node),
            _ => None,
        }
    }

    pub fn node_mut(&mut self, id: u64) -> Option<&mut Node> {
        match self.nodes.get_mut(&id) {
            Some(Slot::Up { node, .. }) => Some(node),
            _ => None,
        }
    }

    pub fn role(&self, id: u64) -> Option<RoleState> {
        self.node(id).map(|n| n.role())
    }

    pub fn recorder(&self, id: u64) -> &Recorder {
        match self.nodes.get(&id) {
            Some(Slot::Up { node, .. }) => node.applier(),
            Some(Slot::Down(saved)) => &saved.1,
            _ => panic!("node {id} does not exist"),
        }
    }

    /// Up nodes that believe they lead.
    pub fn leaders(&self) -> Vec<u64> {
        self.up_ids()
            .into_iter()
            .filter(|&id| self.role(id).is_some_and(|r| r.role == Role::Leader))
            .collect()
    }

    /// The master: a master-ready leader that a quorum of up voters follows.
    pub fn master(&self) -> Option<u64> {
        let leader = self
            .up_ids()
            .into_iter()
            .filter_map(|id| self.role(id))
            .filter(|r| r.master_ready)
            .max_by_key(|r| r.term)?;
        let followers = self
            .voters
            .iter()
            .filter(|&&v| {
                self.role(v)
                    .is_some_and(|r| r.term == leader.term && r.leader_id == Some(leader.id))
            })
            .count();
        (followers > self.voters.len() / 2).then_some(leader.id)
    }

    /// Simulates a crash: the node's store and state machine survive, everything else is lost.
    pub fn crash(&mut self, id: u64) {
        if !self.is_up(id) {
            return;
        }
        if let Some(slot) = self.nodes.get_mut(&id) {
            if let Slot::Up { node, .. } = std::mem::replace(slot, Slot::Gone) {
                let (store, _transport, recorder) = node.into_parts();
                *slot = Slot::Down(Box::new((store, recorder)));
            }
        }
        self.poll_tickets();
    }

    /// Restarts a crashed node from what it persisted.
    pub fn restart(&mut self, id: u64) {
        if !matches!(self.nodes.get(&id), Some(Slot::Down(_))) {
            return;
        }
        let cfg = self.config(id);
        let tick_ms = self.opts.tick_ms;
        let phase = self.rng.gen_range(1..=tick_ms);
        let Some(slot) = self.nodes.get_mut(&id) else {
            return;
        };
        if let Slot::Down(saved) = std::mem::replace(slot, Slot::Gone) {
            let (store, recorder) = *saved;
            let transport = SimTransport {
                from: id,
                tx: self.out_tx.clone(),
            };
            let node = ReplicaNode::new(&cfg, store, transport, recorder)
                .unwrap_or_else(|e| panic!("seed {}: restarting {id} failed: {e}", self.seed));
            *slot = Slot::Up {
                node: Box::new(node),
                next_tick: self.now + phase,
            };
            *self.restarts.entry(id).or_default() += 1;
        }
    }

    /// Cuts `id` off from everyone, both directions.
    pub fn isolate(&mut self, id: u64) {
        for other in self.ids() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    /// Splits the cluster: nodes in `side` only talk among themselves, as do the others.
    pub fn partition(&mut self, side: &[u64]) {
        for a in self.ids() {
            for b in self.ids() {
                if side.contains(&a) != side.contains(&b) {
                    self.cut.insert((a, b));
                }
            }
        }
    }

    pub fn cut_link(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Proposes `data` on node `id`; the outcome lands in the returned ticket.
    pub fn propose(&mut self, id: u64, data: Bytes) -> usize {
        let (tx, rx) = oneshot::channel();
        let mut ticket = Ticket {
            node: id,
            data: data.clone(),
            rx: Some(rx),
            outcome: None,
        };
        match self.node_mut(id) {
            Some(node) => {
                node.propose(data, tx);
                node.process_ready();
            }
            None => {
                ticket.rx = None;
                ticket.outcome = Some(Err(ProposeError::Stopped("node is down".into())));
            }
        }
        self.tickets.push(ticket);
        self.pump();
        self.poll_tickets();
        self.tickets.len() - 1
    }

    /// Collects the outcomes of answered proposals.
    pub fn poll_tickets(&mut self) {
        for t in &mut self.tickets {
            if let Some(rx) = &mut t.rx {
                match rx.try_recv() {
                    Ok(r) => {
                        t.outcome = Some(r);
                        t.rx = None;
                    }
                    Err(oneshot::error::TryRecvError::Empty) => {}
                    Err(oneshot::error::TryRecvError::Closed) => {
                        t.outcome = Some(Err(ProposeError::Stopped("node crashed".into())));
                        t.rx = None;
                    }
                }
            }
        }
    }

    pub fn outcome(&self, ticket: usize) -> Option<&Result<EntryId, ProposeError>> {
        self.tickets[ticket].outcome.as_ref()
    }

    /// Moves what the nodes sent onto the wire, rolling each message's fate.
    fn pump(&mut self) {
        while let Ok(env) = self.out_rx.try_recv() {
            if self.cut.contains(&(env.from, env.to)) {
                continue;
            }
            if self.opts.drop_rate > 0.0 && self.rng.gen_bool(self.opts.drop_rate) {
                continue;
            }
            let copies = if self.opts.dup_rate > 0.0 && self.rng.gen_bool(self.opts.dup_rate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = self
                    .rng
                    .gen_range(self.opts.min_delay_ms..=self.opts.max_delay_ms);
                self.seq += 1;
                self.queue.push(Reverse((
                    self.now + delay,
                    self.seq,
                    env.from,
                    env.to,
                    env.msg.clone(),
                )));
            }
        }
    }

    fn next_tick_due(&self) -> Option<(u64, u64)> {
        self.nodes
            .iter()
            .filter_map(|(&id, s)| match s {
                Slot::Up { next_tick, .. } => Some((*next_tick, id)),
                _ => None,
            })
            .min()
    }

    /// Runs the earliest event due at or before `limit`; false when there is none.
    fn step_event(&mut self, limit: u64) -> bool {
        let tick = self.next_tick_due();
        let msg_at = self.queue.peek().map(|Reverse(m)| m.0);
        let tick_first = match (tick, msg_at) {
            (Some((t, _)), Some(m)) => t <= m,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return false,
        };
        if tick_first {
            let Some((at, id)) = tick else { return false };
            if at > limit {
                return false;
            }
            self.now = at;
            let tick_ms = self.opts.tick_ms;
            if let Some(Slot::Up { node, next_tick }) = self.nodes.get_mut(&id) {
                node.tick();
                node.process_ready();
                *next_tick += tick_ms;
            }
        } else {
            let Some(Reverse((at, _, from, to, msg))) = self.queue.peek().cloned() else {
                return false;
            };
            if at > limit {
                return false;
            }
            self.queue.pop();
            self.now = at;
            // A partition also loses what was in flight when it started.
            if !self.cut.contains(&(from, to)) {
                if let Some(Slot::Up { node, .. }) = self.nodes.get_mut(&to) {
                    self.delivered += 1;
                    if let Err(e) = node.step(&msg) {
                        self.step_errors.push(format!("{from}->{to}: {e}"));
                    }
                    node.process_ready();
                }
            }
        }
        self.pump();
        self.poll_tickets();
        true
    }

    /// Advances virtual time by `ms`.
    pub fn run_for(&mut self, ms: u64) {
        let limit = self.now + ms;
        while self.step_event(limit) {}
        self.now = limit;
    }

    /// Runs until `cond` holds (checked after every event) or `max_ms` pass; returns the
    /// virtual ms it took.
    pub fn run_until(&mut self, max_ms: u64, cond: impl Fn(&Cluster) -> bool) -> Option<u64> {
        let start = self.now;
        let limit = start + max_ms;
        if cond(self) {
            return Some(0);
        }
        while self.step_event(limit) {
            if cond(self) {
                return Some(self.now - start);
            }
        }
        self.now = limit;
        None
    }

    /// Waits for a master and returns it.
    pub fn await_master(&mut self, max_ms: u64) -> u64 {
        self.run_until(max_ms, |c| c.master().is_some())
            .unwrap_or_else(|| panic!("seed {}: no master within {max_ms} ms", self.seed));
        self.master().unwrap_or_default()
    }
}
