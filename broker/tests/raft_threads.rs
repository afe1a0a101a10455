//! The replica driver on real threads and a real clock: mailboxes, ticking, proposals from
//! async code, failover in wall-clock time, and shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_broker::replication::{
    mailbox, Applier, ApplyError, CommittedEntry, MemLogStore, ReplicaConfig, ReplicaHandle,
    ReplicaNode, Role, RoleState, SendError, Transport,
};
use tokio::sync::watch;

/// Delivers straight into peers' mailboxes, unless either end is switched off.
struct ChannelTransport {
    me: u64,
    peers: HashMap<u64, ReplicaHandle>,
    /// Index = replica id; a set flag cuts the replica off.
    offline: Arc<Vec<AtomicBool>>,
}

impl Transport for ChannelTransport {
    fn send(&mut self, to: u64, msg: Bytes) -> Result<(), SendError> {
        let off = |id: u64| self.offline[id as usize].load(Ordering::SeqCst);
        if off(self.me) || off(to) {
            return Err(SendError::Unreachable(to));
        }
        let peer = self.peers.get(&to).ok_or(SendError::UnknownPeer(to))?;
        if peer.deliver(self.me, msg) {
            Ok(())
        } else {
            Err(SendError::QueueFull(to))
        }
    }
}

#[derive(Default)]
struct Log(Vec<CommittedEntry>);

impl Applier for Log {
    fn applied_index(&self) -> u64 {
        self.0.last().map_or(0, |e| e.index)
    }
    fn apply(&mut self, entries: &[CommittedEntry]) -> Result<(), ApplyError> {
        self.0.extend_from_slice(entries);
        Ok(())
    }
    fn apply_snapshot(&mut self, index: u64, _term: u64) -> Result<(), ApplyError> {
        Err(ApplyError(format!("unexpected snapshot at {index}")))
    }
}

type Node = ReplicaNode<MemLogStore, ChannelTransport, Log>;

struct Group {
    handles: HashMap<u64, ReplicaHandle>,
    roles: HashMap<u64, watch::Receiver<RoleState>>,
    threads: Vec<JoinHandle<Node>>,
    offline: Arc<Vec<AtomicBool>>,
}

impl Group {
    fn start(ids: &[u64], tick: Duration) -> Group {
        let offline = Arc::new((0..=ids.len()).map(|_| AtomicBool::new(false)).collect());
        let mut handles = HashMap::new();
        let mut boxes = Vec::new();
        for &id in ids {
            let (h, mb) = mailbox(1024);
            handles.insert(id, h);
            boxes.push((id, mb));
        }
        let mut roles = HashMap::new();
        let mut threads = Vec::new();
        for (id, mb) in boxes {
            let mut cfg = ReplicaConfig::new(id, ids.to_vec(), vec![]);
            cfg.tick_interval = tick;
            let transport = ChannelTransport {
                me: id,
                peers: handles.clone(),
                offline: Arc::clone(&offline),
            };
            let node =
                ReplicaNode::new(&cfg, MemLogStore::new(), transport, Log::default()).unwrap();
            roles.insert(id, node.subscribe());
            threads.push(node.spawn(mb).unwrap());
        }
        Group {
            handles,
            roles,
            threads,
            offline,
        }
    }

    /// Waits (bounded) until some replica other than `not` is master-ready.
    async fn master(&self, not: Option<u64>, within: Duration) -> u64 {
        let waits = self
            .roles
            .iter()
            .filter(|(id, _)| Some(**id) != not)
            .map(|(&id, rx)| {
                let mut rx = rx.clone();
                Box::pin(async move { rx.wait_for(|r| r.master_ready).await.map(|_| id) })
            });
        let (res, _, _) = tokio::time::timeout(within, futures::future::select_all(waits))
            .await
            .expect("no master in time");
        res.expect("replica thread gone")
    }

    fn stop(self) -> Vec<Node> {
        for h in self.handles.values() {
            h.shutdown();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.threads.iter().all(|t| t.is_finished()) {
            assert!(Instant::now() < deadline, "replica threads did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

/// Stops the replica threads even when an assertion fails midway.
struct StopOnDrop(Option<Group>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            for h in g.handles.values() {
                h.shutdown();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threaded_group_elects_replicates_fails_over_and_stops() {
    elect_replicate_fail_over(Duration::from_millis(20), Duration::from_millis(1_500)).await;
}

/// The production timing: 100 ms ticks, elections after 10-20 silent ticks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_failover_at_production_timing() {
    elect_replicate_fail_over(Duration::from_millis(100), Duration::from_millis(4_000)).await;
}

async fn elect_replicate_fail_over(tick: Duration, max_failover: Duration) {
    let mut guard = StopOnDrop(Some(Group::start(&[1, 2, 3], tick)));
    let g = guard.0.as_ref().unwrap();

    let leader = g.master(None, Duration::from_secs(5)).await;
    let h = g.handles[&leader].clone();
    let acks =
        futures::future::join_all((0..50).map(|i| h.propose(Bytes::from(format!("t{i}"))))).await;
    let mut ids: Vec<_> = acks.into_iter().map(|r| r.unwrap()).collect();
    ids.sort();
    assert!(ids.windows(2).all(|w| w[1].index == w[0].index + 1));
    let status = h.status().await.unwrap();
    assert_eq!(status.role.role, Role::Leader);
    assert!(status.commit_index >= ids.last().unwrap().index);

    // Cut the leader off and time the failover on the wall clock.
    let cut = Instant::now();
    g.offline[leader as usize].store(true, Ordering::SeqCst);
    let new = g.master(Some(leader), Duration::from_secs(5)).await;
    let failover = cut.elapsed();
    println!("wall-clock failover with {tick:?} ticks, election 10-20 ticks: {failover:?}");
    assert!(failover < max_failover, "{failover:?}");
    let mut old_role = g.roles[&leader].clone();
    tokio::time::timeout(
        max_failover + tick * 20,
        old_role.wait_for(|r| r.role != Role::Leader),
    )
    .await
    .expect("isolated leader did not step down")
    .unwrap();

    let last = g.handles[&new]
        .propose(Bytes::from_static(b"after-failover"))
        .await
        .unwrap();
    g.offline[leader as usize].store(false, Ordering::SeqCst);
    // The old leader catches up once reconnected.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = g.handles[&leader].status().await.unwrap();
        if s.applied_index >= last.index {
            assert_eq!(s.role.leader_id, Some(new));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old leader did not catch up: {s:?}"
        );
        tokio::time::sleep(tick).await;
    }

    let nodes = guard.0.take().unwrap().stop();
    let logs: Vec<Vec<(u64, u64, Bytes)>> = nodes
        .into_iter()
        .map(|n| {
            let (_, _, log) = n.into_parts();
            log.0
                .into_iter()
                .filter(|e| e.index <= last.index)
                .map(|e| (e.index, e.term, e.data))
                .collect()
        })
        .collect();
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[1], logs[2]);
    assert_eq!(
        logs[0].last().unwrap().2,
        Bytes::from_static(b"after-failover")
    );
}

#[tokio::test]
async fn handles_report_a_stopped_replica() {
    let g = Group::start(&[1], Duration::from_millis(10));
    let h = g.handles[&1].clone();
    g.master(None, Duration::from_secs(5)).await;
    assert!(h.propose(Bytes::from_static(b"x")).await.is_ok());
    let nodes = g.stop();
    assert_eq!(nodes.len(), 1);
    assert!(h.propose(Bytes::from_static(b"y")).await.is_err());
    assert!(h.status().await.is_err());
    assert!(!h.deliver(2, Bytes::from_static(b"z")));
}
