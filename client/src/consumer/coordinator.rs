//! Group membership for one consumer: heartbeats, rebalancing, offset commits and the clean
//! goodbye. A single coordinator task owns the assignment; queue workers report their
//! committable offsets through watch channels.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use sluice_proto::v1::{
    CommitOffsetsRequest, ConsumerHeartbeatRequest, GetConsumerListRequest, GetQueueOffsetsRequest,
    OffsetEntry, QueryOffsetRequest, SearchOffsetRequest, Subscription, UnregisterConsumerRequest,
};
use sluice_proto::ErrorCode;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::allocate::allocate_averagely;
use super::StartPosition;
use crate::client::{AbortOnDrop, ClientCore};
use crate::error::{Error, Result};
use crate::route::{MessageQueue, TopicRouteInfo};
use crate::rpc;

pub(crate) struct GroupSettings {
    pub(crate) group: String,
    pub(crate) topics: Vec<String>,
    pub(crate) client_id: String,
    pub(crate) start: StartPosition,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) rebalance_interval: Duration,
    pub(crate) commit_interval: Duration,
    pub(crate) drain_timeout: Duration,
}

/// What a queue worker gets when its queue is assigned.
pub(crate) struct Lease {
    pub(crate) mq: MessageQueue,
    pub(crate) start_offset: u64,
    /// Becomes true when the queue is taken away (or the consumer shuts down).
    pub(crate) stop: watch::Receiver<bool>,
    /// The worker publishes its committable offset here.
    pub(crate) progress: watch::Sender<u64>,
}

/// Starts the consumption of one queue (push or pull style).
pub(crate) trait QueueWorkers: Send + Sync + 'static {
    fn spawn(&self, lease: Lease) -> JoinHandle<()>;
}

enum Command {
    CommitNow(oneshot::Sender<Result<()>>),
    Shutdown(oneshot::Sender<()>),
}

/// The application's side of a running group member.
pub(crate) struct GroupHandle {
    commands: mpsc::Sender<Command>,
    assignment: watch::Receiver<Vec<MessageQueue>>,
    task: Option<JoinHandle<()>>,
}

impl GroupHandle {
    /// Sends every queue's committable offset to the brokers now.
    pub(crate) async fn commit_now(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::CommitNow(tx))
            .await
            .map_err(|_| Error::Shutdown("consumer"))?;
        rx.await.map_err(|_| Error::Shutdown("consumer"))?
    }

    pub(crate) fn assignment(&self) -> Vec<MessageQueue> {
        self.assignment.borrow().clone()
    }

    /// Gives up every queue (committing), leaves the group on every broker, stops all tasks.
    pub(crate) async fn shutdown(&mut self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// What the heartbeat task and the coordinator share (read-only).
struct Member {
    core: Arc<ClientCore>,
    settings: GroupSettings,
}

struct Assigned {
    stop: watch::Sender<bool>,
    progress: watch::Receiver<u64>,
    /// Last offset the broker accepted for this queue.
    committed: Option<u64>,
    task: JoinHandle<()>,
}

struct Coordinator<W> {
    member: Arc<Member>,
    workers: W,
    assigned: BTreeMap<MessageQueue, Assigned>,
    members: watch::Receiver<BTreeMap<String, Vec<String>>>,
    assignment: watch::Sender<Vec<MessageQueue>>,
    heartbeat_stop: watch::Sender<bool>,
    heartbeat: Option<AbortOnDrop>,
}

/// Joins the group and starts heartbeats and the coordinator.
pub(crate) async fn start<W: QueueWorkers>(
    core: Arc<ClientCore>,
    settings: GroupSettings,
    workers: W,
) -> Result<GroupHandle> {
    // Fail early on a misspelt topic or unreachable nameservers.
    for topic in &settings.topics {
        core.routes.get(topic).await?;
    }
    let member = Arc::new(Member { core, settings });
    // Brokers must know us before we compute our share, or the split would leave us out.
    let first = member.heartbeat_all().await;
    let (members_tx, members_rx) = watch::channel(first);
    let (heartbeat_stop, stop_rx) = watch::channel(false);
    let heartbeat = tokio::spawn(heartbeat_loop(member.clone(), members_tx, stop_rx));
    let (assignment_tx, assignment_rx) = watch::channel(Vec::new());
    let (commands_tx, commands_rx) = mpsc::channel(16);
    let coordinator = Coordinator {
        member,
        workers,
        assigned: BTreeMap::new(),
        members: members_rx,
        assignment: assignment_tx,
        heartbeat_stop,
        heartbeat: Some(AbortOnDrop(heartbeat)),
    };
    let task = tokio::spawn(coordinator.run(commands_rx));
    Ok(GroupHandle {
        commands: commands_tx,
        assignment: assignment_rx,
        task: Some(task),
    })
}

async fn heartbeat_loop(
    member: Arc<Member>,
    members_tx: watch::Sender<BTreeMap<String, Vec<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let period = member.settings.heartbeat_interval;
    let mut tick = interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let lists = member.heartbeat_all().await;
        // Only a change wakes the coordinator; topics whose list could not be read keep the
        // previous one rather than looking like a membership change.
        members_tx.send_if_modified(|current| {
            let mut merged = current.clone();
            merged.extend(lists);
            if merged != *current {
                *current = merged;
                true
            } else {
                false
            }
        });
    }
}

impl Member {
    fn group(&self) -> &str {
        &self.settings.group
    }

    fn timeout(&self) -> Duration {
        self.core.timeout()
    }

    /// Master addresses of every broker group hosting a subscribed topic.
    async fn broker_addresses(&self) -> BTreeSet<String> {
        let mut addrs = BTreeSet::new();
        for topic in &self.settings.topics {
            match self.core.routes.get(topic).await {
                Ok(route) => addrs.extend(route.masters().into_iter().map(|(_, a)| a)),
                Err(e) => tracing::warn!(topic, error = %e, "no route for a subscribed topic"),
            }
        }
        addrs
    }

    /// Heartbeats every broker, then reads each topic's member list.
    async fn heartbeat_all(&self) -> BTreeMap<String, Vec<String>> {
        let req = ConsumerHeartbeatRequest {
            client_id: self.settings.client_id.clone(),
            subscriptions: vec![Subscription {
                group: self.settings.group.clone(),
                topics: self.settings.topics.clone(),
            }],
        };
        let addrs = self.broker_addresses().await;
        let calls = addrs.iter().map(|addr| {
            let req = req.clone();
            async move {
                let mut client = self.core.broker(addr)?;
                let r = rpc::request(req, self.timeout());
                rpc::call(addr, self.timeout(), client.consumer_heartbeat(r)).await
            }
        });
        for (addr, result) in addrs.iter().zip(join_all(calls).await) {
            match result {
                Ok(resp) => {
                    let expiry = Duration::from_millis(resp.expiry_ms);
                    if resp.expiry_ms > 0 && expiry <= self.settings.heartbeat_interval {
                        tracing::warn!(broker = %addr, ?expiry, interval = ?self.settings.heartbeat_interval,
                            "heartbeat interval is not below the broker's consumer expiry; membership will flap");
                    }
                }
                Err(e) => tracing::warn!(broker = %addr, error = %e, "consumer heartbeat failed"),
            }
        }
        let mut lists = BTreeMap::new();
        for topic in &self.settings.topics {
            let Ok(route) = self.core.routes.get(topic).await else {
                continue;
            };
            match self.member_list(&route).await {
                Ok(ids) => {
                    lists.insert(topic.clone(), ids);
                }
                Err(e) => tracing::warn!(topic, error = %e, "cannot read the group's members"),
            }
        }
        lists
    }

    /// The group's live members as seen by the first master of the sorted route, falling back
    /// to the next ones.
    async fn member_list(&self, route: &TopicRouteInfo) -> Result<Vec<String>> {
        let mut last = Error::no_route(&route.topic, "no broker group has a master");
        for (_, addr) in route.masters() {
            let result = async {
                let mut client = self.core.broker(&addr)?;
                let req = rpc::request(
                    GetConsumerListRequest {
                        group: self.group().to_string(),
                    },
                    self.timeout(),
                );
                rpc::call(&addr, self.timeout(), client.get_consumer_list(req)).await
            }
            .await;
            match result {
                Ok(resp) => {
                    let mut ids = resp.client_ids;
                    ids.sort();
                    ids.dedup();
                    return Ok(ids);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Where a newly assigned queue starts: the committed offset, else the start position.
    /// Returns the offset and whether it was committed.
    async fn start_offset(&self, route: &TopicRouteInfo, mq: &MessageQueue) -> Result<(u64, bool)> {
        let addr = route
            .broker(&mq.broker_name)
            .and_then(|b| b.master_address.as_deref().or_else(|| b.read_address()))
            .ok_or_else(|| Error::no_route(&mq.topic, "broker group has no replica"))?
            .to_string();
        let mut client = self.core.broker(&addr)?;
        let t = self.timeout();
        let req = rpc::request(
            QueryOffsetRequest {
                group: self.group().to_string(),
                topic: mq.topic.clone(),
                queue_id: mq.queue_id,
            },
            t,
        );
        match rpc::call(&addr, t, client.query_offset(req)).await {
            Ok(resp) if resp.found => return Ok((resp.offset, true)),
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::GroupNotFound) => {}
            Err(e) => return Err(e),
        }
        let offset = match self.settings.start {
            StartPosition::Earliest | StartPosition::Latest => {
                let req = rpc::request(
                    GetQueueOffsetsRequest {
                        topic: mq.topic.clone(),
                    },
                    t,
                );
                let resp = rpc::call(&addr, t, client.get_queue_offsets(req)).await?;
                let q = resp
                    .queues
                    .iter()
                    .find(|q| q.queue_id == mq.queue_id)
                    .ok_or_else(|| {
                        Error::Api(sluice_proto::ApiError::new(
                            ErrorCode::QueueNotFound,
                            format!("broker {addr} does not report queue {mq}"),
                        ))
                    })?;
                if self.settings.start == StartPosition::Earliest {
                    q.min_offset
                } else {
                    q.max_offset
                }
            }
            StartPosition::Timestamp(ts) => {
                let req = rpc::request(
                    SearchOffsetRequest {
                        topic: mq.topic.clone(),
                        queue_id: mq.queue_id,
                        timestamp_ms: ts,
                    },
                    t,
                );
                rpc::call(&addr, t, client.search_offset(req)).await?.offset
            }
        };
        Ok((offset, false))
    }

    /// Sends offsets to the master of each queue's broker group. Returns what was accepted and
    /// the last error.
    async fn send_commits(
        &self,
        entries: Vec<(MessageQueue, u64)>,
    ) -> (Vec<(MessageQueue, u64)>, Option<Error>) {
        let mut by_addr: HashMap<String, Vec<(MessageQueue, u64)>> = HashMap::new();
        let mut error = None;
        for (mq, offset) in entries {
            let addr = self
                .core
                .routes
                .cached(&mq.topic)
                .and_then(|r| r.master_address(&mq.broker_name).map(str::to_string));
            match addr {
                Some(a) => by_addr.entry(a).or_default().push((mq, offset)),
                None => {
                    error = Some(Error::no_route(
                        &mq.topic,
                        &format!("broker group {} has no master to commit to", mq.broker_name),
                    ))
                }
            }
        }
        let calls = by_addr.into_iter().map(|(addr, entries)| async move {
            let req = CommitOffsetsRequest {
                group: self.group().to_string(),
                offsets: entries
                    .iter()
                    .map(|(mq, offset)| OffsetEntry {
                        topic: mq.topic.clone(),
                        queue_id: mq.queue_id,
                        offset: *offset,
                    })
                    .collect(),
            };
            let result = async {
                let mut client = self.core.broker(&addr)?;
                let req = rpc::request(req, self.timeout());
                rpc::call(&addr, self.timeout(), client.commit_offsets(req)).await
            }
            .await;
            (addr, entries, result)
        });
        let mut done = Vec::new();
        for (addr, entries, result) in join_all(calls).await {
            match result {
                Ok(_) => done.extend(entries),
                Err(e) => {
                    tracing::warn!(broker = %addr, error = %e, "offset commit failed");
                    error = Some(e);
                }
            }
        }
        (done, error)
    }

    /// Tells every broker we are gone, so the others take our queues at once.
    async fn unregister(&self) {
        let addrs = self.broker_addresses().await;
        let calls = addrs.iter().map(|addr| async move {
            let mut client = self.core.broker(addr)?;
            let req = rpc::request(
                UnregisterConsumerRequest {
                    client_id: self.settings.client_id.clone(),
                    group: self.group().to_string(),
                },
                self.timeout(),
            );
            rpc::call(addr, self.timeout(), client.unregister_consumer(req)).await
        });
        for (addr, r) in addrs.iter().zip(join_all(calls).await) {
            if let Err(e) = r {
                tracing::warn!(broker = %addr, error = %e, "unregistering the consumer failed");
            }
        }
    }
}

impl<W: QueueWorkers> Coordinator<W> {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let s = &self.member.settings;
        let (ri, ci) = (s.rebalance_interval, s.commit_interval);
        let mut rebalance_tick = interval_at(Instant::now() + ri, ri);
        rebalance_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut commit_tick = interval_at(Instant::now() + ci, ci);
        commit_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut members_alive = true;
        self.rebalance().await;
        loop {
            tokio::select! {
                _ = rebalance_tick.tick() => self.rebalance().await,
                changed = self.members.changed(), if members_alive => {
                    match changed {
                        Ok(()) => self.rebalance().await,
                        Err(_) => members_alive = false,
                    }
                }
                _ = commit_tick.tick() => {
                    let _ = self.commit().await;
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::CommitNow(reply)) => {
                        let _ = reply.send(self.commit().await);
                    }
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    // The consumer was dropped without shutdown: still leave cleanly.
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
            }
        }
    }

    async fn rebalance(&mut self) {
        let member = self.member.clone();
        let me = member.settings.client_id.as_str();
        let mut wanted: BTreeSet<MessageQueue> = BTreeSet::new();
        let mut settled: BTreeSet<&str> = BTreeSet::new();
        let mut routes: HashMap<String, Arc<TopicRouteInfo>> = HashMap::new();
        for topic in &member.settings.topics {
            let route = match member.core.routes.get(topic).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(topic, error = %e, "rebalance skipped: no route");
                    continue;
                }
            };
            let members = match member.member_list(&route).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(topic, error = %e, "rebalance skipped: no member list");
                    continue;
                }
            };
            if !members.iter().any(|m| m == me) {
                // The brokers have not registered our heartbeat (yet, or any more): taking a
                // share the others do not leave us would double-consume.
                tracing::info!(
                    topic,
                    "rebalance skipped: this consumer is not in the member list yet"
                );
                continue;
            }
            wanted.extend(allocate_averagely(&route.readable_queues(), &members, me));
            settled.insert(topic);
            routes.insert(topic.clone(), route);
        }
        let lost: Vec<MessageQueue> = self
            .assigned
            .keys()
            .filter(|q| settled.contains(q.topic.as_str()) && !wanted.contains(*q))
            .cloned()
            .collect();
        let gained: Vec<MessageQueue> = wanted
            .into_iter()
            .filter(|q| !self.assigned.contains_key(q))
            .collect();
        if !lost.is_empty() {
            tracing::info!(group = member.group(), queues = ?lost, "giving up queues");
            self.release(lost).await;
        }
        if !gained.is_empty() {
            tracing::info!(group = member.group(), queues = ?gained, "taking queues");
            let lookups = gained.iter().map(|mq| {
                let route = routes.get(&mq.topic).cloned();
                let member = member.clone();
                async move {
                    match route {
                        Some(r) => member.start_offset(&r, mq).await,
                        None => Err(Error::no_route(&mq.topic, "route vanished")),
                    }
                }
            });
            let offsets = join_all(lookups).await;
            for (mq, result) in gained.into_iter().zip(offsets) {
                match result {
                    Ok((offset, committed)) => self.take(mq, offset, committed),
                    // Retried at the next rebalance.
                    Err(e) => {
                        tracing::warn!(queue = %mq, error = %e, "cannot read the start offset")
                    }
                }
            }
        }
        let now: Vec<MessageQueue> = self.assigned.keys().cloned().collect();
        self.assignment.send_if_modified(|a| {
            if *a != now {
                *a = now;
                true
            } else {
                false
            }
        });
    }

    fn take(&mut self, mq: MessageQueue, offset: u64, committed: bool) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (progress_tx, progress_rx) = watch::channel(offset);
        let task = self.workers.spawn(Lease {
            mq: mq.clone(),
            start_offset: offset,
            stop: stop_rx,
            progress: progress_tx,
        });
        self.assigned.insert(
            mq,
            Assigned {
                stop: stop_tx,
                progress: progress_rx,
                committed: committed.then_some(offset),
                task,
            },
        );
    }

    /// Stops the queues' workers, waits (bounded) for them to drain, commits their final
    /// offsets, and forgets them.
    async fn release(&mut self, queues: Vec<MessageQueue>) {
        let mut leaving: Vec<(MessageQueue, Assigned)> = queues
            .into_iter()
            .filter_map(|q| self.assigned.remove(&q).map(|a| (q, a)))
            .collect();
        for (_, a) in &leaving {
            a.stop.send_replace(true);
        }
        // Workers bound their own drain; the margin covers the final bookkeeping.
        let bound = self.member.settings.drain_timeout + Duration::from_secs(2);
        join_all(leaving.iter_mut().map(|(q, a)| async move {
            if tokio::time::timeout(bound, &mut a.task).await.is_err() {
                tracing::warn!(queue = %q, "queue worker did not stop in time; aborting it");
                a.task.abort();
            }
        }))
        .await;
        let entries: Vec<(MessageQueue, u64)> = leaving
            .iter()
            .filter(|(_, a)| Some(*a.progress.borrow()) != a.committed)
            .map(|(q, a)| (q.clone(), *a.progress.borrow()))
            .collect();
        let (_, error) = self.member.send_commits(entries).await;
        if let Some(e) = error {
            tracing::warn!(error = %e, "final commit of released queues failed; their last messages will be delivered again");
        }
    }

    async fn commit(&mut self) -> Result<()> {
        let entries: Vec<(MessageQueue, u64)> = self
            .assigned
            .iter()
            .filter(|(_, a)| Some(*a.progress.borrow()) != a.committed)
            .map(|(q, a)| (q.clone(), *a.progress.borrow()))
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        let (done, error) = self.member.send_commits(entries).await;
        for (q, offset) in done {
            if let Some(a) = self.assigned.get_mut(&q) {
                a.committed = Some(offset);
            }
        }
        error.map_or(Ok(()), Err)
    }

    async fn shutdown(&mut self) {
        let all: Vec<MessageQueue> = self.assigned.keys().cloned().collect();
        self.release(all).await;
        self.assignment.send_replace(Vec::new());
        // Wait for a heartbeat in flight, or it could re-register us after the goodbye.
        self.heartbeat_stop.send_replace(true);
        if let Some(mut hb) = self.heartbeat.take() {
            let _ = tokio::time::timeout(self.member.timeout() * 2, &mut hb.0).await;
        }
        self.member.unregister().await;
    }
}
