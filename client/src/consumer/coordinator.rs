//! Group membership for one consumer: rebalancing, offset commits and the clean goodbye. A
//! single coordinator task owns the assignment; queue workers report their committable offsets
//! through watch channels; a heartbeat task reports member-list changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::allocate::allocate_averagely;
use super::member::{heartbeat_loop, Epochs, Member};
use super::StartPosition;
use crate::client::{AbortOnDrop, ClientCore};
use crate::error::{Error, Result};
use crate::route::{MessageQueue, TopicRouteInfo};

pub(crate) struct GroupSettings {
    pub(crate) group: String,
    pub(crate) topics: Vec<String>,
    pub(crate) client_id: String,
    pub(crate) start: StartPosition,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) rebalance_interval: Duration,
    pub(crate) commit_interval: Duration,
    pub(crate) drain_timeout: Duration,
    /// Ordered consumption: queues are locked on their brokers before they are consumed.
    pub(crate) orderly: bool,
}

/// What a queue worker gets when its queue is assigned.
pub(crate) struct Lease {
    pub(crate) mq: MessageQueue,
    pub(crate) start_offset: u64,
    /// Becomes true when the queue is taken away (or the consumer shuts down).
    pub(crate) stop: watch::Receiver<bool>,
    /// The worker publishes its committable offset here.
    pub(crate) progress: watch::Sender<u64>,
    /// Ordered consumption: until when this consumer surely holds the queue's lock (the
    /// worker starts no message after it; renewals move it on).
    pub(crate) held_until: Option<watch::Receiver<Instant>>,
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

struct Assigned {
    stop: watch::Sender<bool>,
    progress: watch::Receiver<u64>,
    /// Last offset the broker accepted for this queue.
    committed: Option<u64>,
    task: JoinHandle<()>,
    /// Ordered consumption: where renewals of the queue's lock reach the worker.
    held: Option<watch::Sender<Instant>>,
}

/// How soon a queue whose lock another consumer holds is asked for again.
const LOCK_RETRY: Duration = Duration::from_millis(500);
/// Attempts at the final commit and unlock of an ordered queue given up during a failover.
const RELEASE_TRIES: u32 = 4;
/// Renewal period before the broker's lease is known.
const FIRST_RENEWAL: Duration = Duration::from_secs(2);

struct Coordinator<W> {
    member: Arc<Member>,
    workers: W,
    assigned: BTreeMap<MessageQueue, Assigned>,
    members: watch::Receiver<BTreeMap<String, Vec<String>>>,
    assignment: watch::Sender<Vec<MessageQueue>>,
    heartbeat_stop: watch::Sender<bool>,
    heartbeat: Option<AbortOnDrop>,
    /// Member list of each topic at the last rebalance.
    last_members: HashMap<String, Vec<String>>,
    /// Queues won in a membership change, and when they may be taken.
    deferred: BTreeMap<MessageQueue, Instant>,
    /// The group's reset epoch on each broker group, as the heartbeats report it.
    epochs: watch::Receiver<Epochs>,
    /// The epochs this member's queues were started under (commits carry them).
    known_epochs: Epochs,
    /// Ordered consumption: the brokers' lock lease (once an answer said), and when the
    /// held locks are renewed next.
    lock_lease: Option<Duration>,
    next_renewal: Instant,
}

/// Joins the group and starts heartbeats and the coordinator.
pub(crate) async fn start<W: QueueWorkers>(
    core: Arc<ClientCore>,
    settings: GroupSettings,
    workers: W,
) -> Result<GroupHandle> {
    // Fail early on a misspelt topic or unreachable nameservers (the group's retry topic
    // exists only after its first send-back).
    for topic in settings
        .topics
        .iter()
        .filter(|t| !sluice_proto::names::is_retry_topic(t))
    {
        core.routes.get(topic).await?;
    }
    let member = Arc::new(Member { core, settings });
    // Brokers must know us before we compute our share, or the split would leave us out.
    let (first, first_epochs) = member.heartbeat_all().await;
    let (members_tx, members_rx) = watch::channel(first);
    let (epochs_tx, epochs_rx) = watch::channel(first_epochs.clone());
    let (heartbeat_stop, stop_rx) = watch::channel(false);
    let heartbeat = tokio::spawn(heartbeat_loop(
        member.clone(),
        members_tx,
        epochs_tx,
        stop_rx,
    ));
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
        last_members: HashMap::new(),
        deferred: BTreeMap::new(),
        epochs: epochs_rx,
        known_epochs: first_epochs,
        lock_lease: None,
        next_renewal: Instant::now() + FIRST_RENEWAL,
    };
    let task = tokio::spawn(coordinator.run(commands_rx));
    Ok(GroupHandle {
        commands: commands_tx,
        assignment: assignment_rx,
        task: Some(task),
    })
}

async fn sleep_until_first(deferred: &BTreeMap<MessageQueue, Instant>) {
    if let Some(&at) = deferred.values().min() {
        tokio::time::sleep_until(at).await;
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
        let orderly = s.orderly;
        self.rebalance().await;
        loop {
            tokio::select! {
                _ = rebalance_tick.tick() => self.rebalance().await,
                _ = tokio::time::sleep_until(self.next_renewal), if orderly => {
                    self.renew_locks().await
                }
                _ = sleep_until_first(&self.deferred), if !self.deferred.is_empty() => {
                    self.rebalance().await
                }
                changed = self.members.changed(), if members_alive => {
                    match changed {
                        Ok(()) => self.rebalance().await,
                        Err(_) => members_alive = false,
                    }
                }
                changed = self.epochs.changed(), if members_alive => {
                    if changed.is_ok() {
                        self.follow_resets().await;
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
        // Topics whose membership changed while other members are around.
        let mut handover: BTreeSet<&str> = BTreeSet::new();
        let mut routes: HashMap<String, Arc<TopicRouteInfo>> = HashMap::new();
        for topic in &member.settings.topics {
            let route = match member.core.routes.get(topic).await {
                Ok(r) => r,
                Err(e) => {
                    super::member::no_route(topic, &e);
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
            if members.len() > 1 && self.last_members.get(topic) != Some(&members) {
                handover.insert(topic);
            }
            self.last_members.insert(topic.clone(), members.clone());
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
        // A queue another member may still own is taken only after the handover delay, so
        // that owner can notice the change, finish and commit first (fewer duplicates).
        let now = Instant::now();
        self.deferred
            .retain(|q, _| wanted.contains(q) && !self.assigned.contains_key(q));
        let mut gained: Vec<MessageQueue> = Vec::new();
        for q in wanted {
            if self.assigned.contains_key(&q) {
                continue;
            }
            match self.deferred.get(&q) {
                Some(&at) if at <= now => {
                    self.deferred.remove(&q);
                    gained.push(q);
                }
                Some(_) => {}
                // Ordered queues wait for the old owner's unlock instead.
                None if handover.contains(q.topic.as_str()) && !member.settings.orderly => {
                    self.deferred.insert(q, now + self.handover_delay());
                }
                None => gained.push(q),
            }
        }
        if !lost.is_empty() {
            tracing::info!(group = member.group(), queues = ?lost, "giving up queues");
            self.release(lost).await;
        }
        let mut held_until: HashMap<MessageQueue, Instant> = HashMap::new();
        if member.settings.orderly && !gained.is_empty() {
            let round = member.lock_queues(gained).await;
            self.learn_lease(round.lease);
            // Held by another member (still finishing) or unanswered: asked again shortly.
            let at = Instant::now() + LOCK_RETRY;
            for q in round.refused.into_iter().chain(round.unknown) {
                self.deferred.insert(q, at);
            }
            gained = Vec::new();
            for (q, _, until) in round.held {
                // The lock's answer has the previous owner's last commit: start there (an
                // offset query could reach a replica that has not applied it yet).
                match round.committed.get(&q) {
                    Some(&offset) => self.take(q, offset, true, Some(until)),
                    None => {
                        held_until.insert(q.clone(), until);
                        gained.push(q);
                    }
                }
            }
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
                    Ok((offset, committed)) => {
                        let held = held_until.get(&mq).copied();
                        self.take(mq, offset, committed, held)
                    }
                    // Retried shortly (an ordered queue's lock is held meanwhile).
                    Err(e) => {
                        tracing::warn!(queue = %mq, error = %e, "cannot read the start offset");
                        self.deferred.insert(mq, Instant::now() + LOCK_RETRY);
                    }
                }
            }
        }
        self.publish_assignment();
    }

    /// An operator reset the group's offsets on some broker group: its queues drop their
    /// positions (uncommitted: a commit from before the reset would be ignored anyway) and
    /// start again from the committed offsets.
    async fn follow_resets(&mut self) {
        let epochs = self.epochs.borrow_and_update().clone();
        let reset: BTreeSet<String> = epochs
            .iter()
            .filter(|(b, e)| **e > self.known_epochs.get(*b).copied().unwrap_or(0))
            .map(|(b, _)| b.clone())
            .collect();
        for (b, e) in epochs {
            let known = self.known_epochs.entry(b).or_insert(0);
            *known = (*known).max(e);
        }
        if reset.is_empty() {
            return;
        }
        let queues: Vec<MessageQueue> = self
            .assigned
            .keys()
            .filter(|q| reset.contains(&q.broker_name))
            .cloned()
            .collect();
        tracing::info!(group = self.member.group(), brokers = ?reset, queues = queues.len(),
            "offsets were reset; reloading them");
        self.stop_queues(queues).await;
        self.rebalance().await;
    }

    /// Long enough for the other members to see the change at their next heartbeat and give
    /// the queue up.
    fn handover_delay(&self) -> Duration {
        self.member.settings.heartbeat_interval + Duration::from_millis(500)
    }

    fn take(&mut self, mq: MessageQueue, offset: u64, committed: bool, held: Option<Instant>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (progress_tx, progress_rx) = watch::channel(offset);
        let (held_tx, held_rx) = match held {
            Some(until) => {
                let (tx, rx) = watch::channel(until);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let task = self.workers.spawn(Lease {
            mq: mq.clone(),
            start_offset: offset,
            stop: stop_rx,
            progress: progress_tx,
            held_until: held_rx,
        });
        self.assigned.insert(
            mq,
            Assigned {
                stop: stop_tx,
                progress: progress_rx,
                committed: committed.then_some(offset),
                task,
                held: held_tx,
            },
        );
    }

    /// Stops the queues' workers, waits (bounded) for them to drain, commits their final
    /// offsets, and forgets them.
    async fn release(&mut self, queues: Vec<MessageQueue>) {
        let leaving = self.stop_queues(queues).await;
        let entries: Vec<(MessageQueue, u64)> = leaving
            .iter()
            .filter(|(_, a)| Some(*a.progress.borrow()) != a.committed)
            .map(|(q, a)| (q.clone(), *a.progress.borrow()))
            .collect();
        let orderly = self.member.settings.orderly;
        let mut entries = entries;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let sent = entries.clone();
            let (done, error) = self.member.send_commits(sent, &self.known_epochs).await;
            entries.retain(|e| !done.contains(e));
            let Some(e) = error else { break };
            // Ordered: the next owner starts from this commit, so ride out a failover for a
            // moment rather than leave it a stretch to process again.
            let failover = e.is_master_change() || e.is_routing();
            if orderly && tries < RELEASE_TRIES && failover && !entries.is_empty() {
                tokio::time::sleep(LOCK_RETRY * tries).await;
                self.renew_if_due().await;
                continue;
            }
            tracing::warn!(error = %e, "final commit of released queues failed; their last messages will be delivered again");
            break;
        }
        if orderly {
            // After the commit: the next owner starts where this one stopped.
            let mut queues: Vec<MessageQueue> = leaving.into_iter().map(|(q, _)| q).collect();
            for t in 1..=RELEASE_TRIES {
                queues = self.member.unlock_queues(queues).await;
                if queues.is_empty() || t == RELEASE_TRIES {
                    break;
                }
                tokio::time::sleep(LOCK_RETRY * t).await;
                self.renew_if_due().await;
            }
        }
    }

    fn learn_lease(&mut self, lease: Option<Duration>) {
        if let Some(l) = lease.filter(|l| !l.is_zero()) {
            if self.lock_lease.is_none() {
                self.next_renewal = Instant::now() + l / 6;
            }
            self.lock_lease = Some(l);
        }
    }

    /// Renews the locks of every owned queue, at a sixth of the lease (a holder trusts a lock
    /// for half of it, so two renewals may fail in a row). A queue the broker now says another
    /// member holds stops at once; one without an answer keeps going until its lock lapses
    /// here, and its worker waits from then on.
    async fn renew_locks(&mut self) {
        let period = self.lock_lease.map_or(FIRST_RENEWAL, |l| l / 6);
        self.next_renewal = Instant::now() + period;
        let queues: Vec<MessageQueue> = self.assigned.keys().cloned().collect();
        if queues.is_empty() {
            return;
        }
        let round = self.member.lock_queues(queues).await;
        self.learn_lease(round.lease);
        let mut restart = round.refused;
        for (q, sent, until) in round.held {
            let Some(tx) = self.assigned.get(&q).and_then(|a| a.held.as_ref()) else {
                continue;
            };
            if *tx.borrow() <= sent {
                // This member stopped trusting the lock before it asked again: another may
                // have held the queue in between and moved it on. Start it over from the
                // committed offset rather than from this member's own position.
                restart.push(q);
            } else {
                tx.send_replace(until);
            }
        }
        if !round.unknown.is_empty() {
            // Try again soon rather than a whole period later.
            self.next_renewal = self.next_renewal.min(Instant::now() + LOCK_RETRY * 2);
        }
        if !restart.is_empty() {
            tracing::warn!(group = self.member.group(), queues = ?restart,
                "lock of queues lapsed (renewals failed for too long); starting them over");
            self.stop_queues(restart.clone()).await;
            let at = Instant::now() + LOCK_RETRY;
            for q in restart {
                self.deferred.insert(q, at);
            }
            self.publish_assignment();
        }
    }

    /// Renews the locks now if they are due (long releases call this between their tries).
    async fn renew_if_due(&mut self) {
        if self.member.settings.orderly && Instant::now() >= self.next_renewal {
            self.renew_locks().await;
        }
    }

    fn publish_assignment(&self) {
        let owned: Vec<MessageQueue> = self.assigned.keys().cloned().collect();
        self.assignment.send_if_modified(|a| {
            if *a != owned {
                *a = owned;
                true
            } else {
                false
            }
        });
    }

    /// Stops the queues' workers and waits (bounded) for them to drain; returns them.
    async fn stop_queues(&mut self, queues: Vec<MessageQueue>) -> Vec<(MessageQueue, Assigned)> {
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
        leaving
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
        let (done, error) = self.member.send_commits(entries, &self.known_epochs).await;
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
