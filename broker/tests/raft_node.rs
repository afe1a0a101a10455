//! One replica on its own: bootstrap and restart checks, and how it fails when its log does.

use bytes::Bytes;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};
use sluice_broker::replication::{
    Applier, ApplyError, CommittedEntry, LogStoreError, MemLogStore, NodeError, ProposeError,
    RaftLogStore, ReplicaConfig, ReplicaNode, Role, SendError, Transport,
};
use tokio::sync::oneshot;

struct NoPeers;

impl Transport for NoPeers {
    fn send(&mut self, to: u64, _msg: Bytes) -> Result<(), SendError> {
        Err(SendError::UnknownPeer(to))
    }
}

#[derive(Default)]
struct Counter {
    applied: u64,
}

impl Applier for Counter {
    fn applied_index(&self) -> u64 {
        self.applied
    }
    fn apply(&mut self, entries: &[CommittedEntry]) -> Result<(), ApplyError> {
        self.applied = entries.last().map_or(self.applied, |e| e.index);
        Ok(())
    }
    fn apply_snapshot(&mut self, index: u64, _term: u64) -> Result<(), ApplyError> {
        self.applied = index;
        Ok(())
    }
}

/// A MemLogStore whose appends start failing on demand.
#[derive(Default)]
struct FlakyStore {
    inner: MemLogStore,
    broken: bool,
    /// Entry reads fail: raft-rs treats that as a fatal invariant violation and panics.
    broken_reads: bool,
}

impl Storage for FlakyStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.inner.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if self.broken_reads {
            return Err(raft::StorageError::Unavailable.into());
        }
        self.inner.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.inner.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.inner.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.inner.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.inner.snapshot(request_index, to)
    }
}

impl RaftLogStore for FlakyStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogStoreError> {
        if self.broken {
            return Err(LogStoreError::Io(std::io::Error::other("disk on fire")));
        }
        self.inner.append(entries)
    }
    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogStoreError> {
        self.inner.set_hard_state(hs)
    }
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogStoreError> {
        self.inner.set_conf_state(cs)
    }
    fn apply_snapshot(
        &mut self,
        meta: &raft::prelude::SnapshotMetadata,
    ) -> Result<(), LogStoreError> {
        self.inner.apply_snapshot(meta)
    }
    fn compact(&mut self, index: u64) -> Result<(), LogStoreError> {
        self.inner.compact(index)
    }
    fn sync(&mut self) -> Result<(), LogStoreError> {
        self.inner.sync()
    }
}

fn solo() -> ReplicaConfig {
    ReplicaConfig::new(1, vec![1], vec![])
}

/// Ticks a single-voter replica until it is master.
fn make_master<S: RaftLogStore>(node: &mut ReplicaNode<S, NoPeers, Counter>) {
    for _ in 0..100 {
        node.tick();
        node.process_ready();
        if node.role().master_ready {
            return;
        }
    }
    panic!("no master: {:?}", node.role());
}

fn propose<S: RaftLogStore>(
    node: &mut ReplicaNode<S, NoPeers, Counter>,
    data: &'static [u8],
) -> oneshot::Receiver<Result<sluice_broker::replication::EntryId, ProposeError>> {
    let (tx, rx) = oneshot::channel();
    node.propose(Bytes::from_static(data), tx);
    node.process_ready();
    rx
}

#[test]
fn a_failing_log_stops_the_replica_and_fails_its_proposals() {
    let mut node =
        ReplicaNode::new(&solo(), FlakyStore::default(), NoPeers, Counter::default()).unwrap();
    make_master(&mut node);
    let mut ok = propose(&mut node, b"fine");
    assert!(ok.try_recv().unwrap().is_ok());

    // Restart on a broken disk: the new term's first append fails, and the replica stops and
    // says why.
    let (s, t, a) = node.into_parts();
    let mut node = ReplicaNode::new(
        &solo(),
        FlakyStore {
            inner: s.inner,
            broken: true,
            broken_reads: false,
        },
        t,
        a,
    )
    .unwrap();
    let role = node.subscribe();
    for _ in 0..100 {
        node.tick();
        node.process_ready();
        if node.role().role == Role::Failed {
            break;
        }
    }
    let r = node.role();
    assert_eq!(r.role, Role::Failed, "{r:?}");
    assert!(
        r.failure.as_deref().unwrap_or("").contains("disk on fire"),
        "{r:?}"
    );
    assert!(role.has_changed().unwrap());
    let mut late = propose(&mut node, b"late");
    assert!(matches!(
        late.try_recv().unwrap(),
        Err(ProposeError::Stopped(_))
    ));
    assert!(node.step(&bytes::Bytes::from_static(b"anything")).is_err());
    assert!(matches!(node.compact(1), Err(NodeError::Failed(_))));
    assert_eq!(node.status().role.role, Role::Failed);
}

#[test]
fn restart_rejects_inconsistent_persisted_state() {
    // A state machine ahead of the log.
    let err = ReplicaNode::new(&solo(), MemLogStore::new(), NoPeers, Counter { applied: 5 })
        .err()
        .unwrap();
    assert!(matches!(err, NodeError::Inconsistent(_)), "{err}");

    // A log with entries but no membership.
    let mut store = MemLogStore::new();
    store
        .append(&[Entry {
            index: 1,
            term: 1,
            ..Default::default()
        }])
        .unwrap();
    let err = ReplicaNode::new(&solo(), store, NoPeers, Counter::default())
        .err()
        .unwrap();
    assert!(matches!(err, NodeError::Inconsistent(_)), "{err}");

    // A bad config is refused before anything is touched.
    let err = ReplicaNode::new(
        &ReplicaConfig::new(0, vec![1], vec![]),
        MemLogStore::new(),
        NoPeers,
        Counter::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, NodeError::Config(_)), "{err}");
}

#[test]
fn restart_raises_a_lagging_commit_index_to_what_was_applied() {
    let mut node =
        ReplicaNode::new(&solo(), MemLogStore::new(), NoPeers, Counter::default()).unwrap();
    make_master(&mut node);
    let mut rx = propose(&mut node, b"x");
    let id = rx.try_recv().unwrap().unwrap();
    let (mut store, _, applier) = node.into_parts();
    assert_eq!(applier.applied, id.index);
    // Simulate a crash that lost the (unsynced) commit index update.
    let mut hs = store.hard_state().clone();
    hs.commit = 0;
    store.set_hard_state(&hs).unwrap();

    let node = ReplicaNode::new(&solo(), store, NoPeers, applier).unwrap();
    assert_eq!(node.store().hard_state().commit, id.index);
    assert_eq!(node.status().applied_index, id.index);
}

#[test]
fn a_panic_inside_raft_fails_the_replica_instead_of_the_process() {
    let store = FlakyStore {
        broken_reads: true,
        ..FlakyStore::default()
    };
    let mut node = ReplicaNode::new(&solo(), store, NoPeers, Counter::default()).unwrap();
    let mut pending = None;
    for _ in 0..100 {
        node.tick();
        node.process_ready();
        if node.role().role == Role::Leader && pending.is_none() {
            pending = Some(propose(&mut node, b"doomed"));
        }
        if node.role().role == Role::Failed {
            break;
        }
    }
    let r = node.role();
    assert_eq!(r.role, Role::Failed, "{r:?}");
    assert!(
        r.failure.as_deref().unwrap_or("").contains("panicked"),
        "{r:?}"
    );
    if let Some(mut rx) = pending {
        assert!(!matches!(rx.try_recv(), Ok(Ok(_))));
    }
}

#[test]
fn a_proposal_made_for_another_term_is_refused_and_not_logged() {
    let mut node =
        ReplicaNode::new(&solo(), MemLogStore::default(), NoPeers, Counter::default()).unwrap();
    make_master(&mut node);
    let term = node.role().term;
    let last = node.status().last_index;
    let (tx, mut rx) = oneshot::channel();
    node.propose_in_term(Bytes::from_static(b"other"), Some(term + 1), tx);
    node.process_ready();
    match rx.try_recv().unwrap() {
        Err(ProposeError::TermOver {
            expected,
            term: now,
        }) => {
            assert_eq!((expected, now), (term + 1, term));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(node.status().last_index, last);
    let (tx, mut rx) = oneshot::channel();
    node.propose_in_term(Bytes::from_static(b"this"), Some(term), tx);
    node.process_ready();
    assert_eq!(rx.try_recv().unwrap().unwrap().index, last + 1);
}
