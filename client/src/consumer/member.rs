//! What a group member says to the brokers: heartbeats, member lists, offsets, goodbye.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use sluice_proto::v1::{
    CommitOffsetsRequest, ConsumerHeartbeatRequest, GetConsumerListRequest, GetQueueOffsetsRequest,
    OffsetEntry, QueryOffsetRequest, SearchOffsetRequest, Subscription, UnregisterConsumerRequest,
};
use sluice_proto::ErrorCode;
use tokio::sync::watch;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::coordinator::GroupSettings;
use super::StartPosition;
use crate::client::ClientCore;
use crate::error::{Error, Result};
use crate::route::{MessageQueue, TopicRouteInfo};
use crate::rpc;

/// What the heartbeat task and the coordinator share (read-only).
pub(crate) struct Member {
    pub(crate) core: Arc<ClientCore>,
    pub(crate) settings: GroupSettings,
}

/// Each broker group's reset epoch of the group, by broker name.
pub(crate) type Epochs = BTreeMap<String, u64>;

pub(crate) async fn heartbeat_loop(
    member: Arc<Member>,
    members_tx: watch::Sender<BTreeMap<String, Vec<String>>>,
    epochs_tx: watch::Sender<Epochs>,
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
        let (lists, epochs) = member.heartbeat_all().await;
        // Epochs only go up: a lagging replica's older answer must not lower one.
        epochs_tx.send_if_modified(|current| {
            let mut changed = false;
            for (broker, e) in epochs {
                let known = current.entry(broker).or_insert(0);
                if e > *known {
                    *known = e;
                    changed = true;
                }
            }
            changed
        });
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
    pub(crate) fn group(&self) -> &str {
        &self.settings.group
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.core.timeout()
    }

    /// Master addresses of every broker group hosting a subscribed topic, with the group's
    /// broker name.
    pub(crate) async fn broker_addresses(&self) -> BTreeMap<String, String> {
        let mut addrs = BTreeMap::new();
        for topic in &self.settings.topics {
            match self.core.routes.get(topic).await {
                Ok(route) => addrs.extend(route.masters().into_iter().map(|(b, a)| (a, b))),
                Err(e) => no_route(topic, &e),
            }
        }
        addrs
    }

    /// Heartbeats every broker, then reads each topic's member list; also returns the group's
    /// reset epoch on each broker group that answered.
    pub(crate) async fn heartbeat_all(&self) -> (BTreeMap<String, Vec<String>>, Epochs) {
        let req = ConsumerHeartbeatRequest {
            client_id: self.settings.client_id.clone(),
            subscriptions: vec![Subscription {
                group: self.settings.group.clone(),
                topics: self.settings.topics.clone(),
                orderly: self.settings.orderly,
            }],
        };
        let addrs = self.broker_addresses().await;
        let mut epochs = Epochs::new();
        let calls = addrs.keys().map(|addr| {
            let req = req.clone();
            async move {
                let mut client = self.core.broker(addr)?;
                let r = rpc::request(req, self.timeout());
                rpc::call(addr, self.timeout(), client.consumer_heartbeat(r)).await
            }
        });
        let mut stale_route = false;
        for ((addr, broker), result) in addrs.iter().zip(join_all(calls).await) {
            match result {
                Ok(resp) => {
                    if let Some(e) = resp.reset_epochs.get(self.group()) {
                        epochs.insert(broker.clone(), *e);
                    }
                    let expiry = Duration::from_millis(resp.expiry_ms);
                    if resp.expiry_ms > 0 && expiry <= self.settings.heartbeat_interval {
                        tracing::warn!(broker = %addr, ?expiry, interval = ?self.settings.heartbeat_interval,
                            "heartbeat interval is not below the broker's consumer expiry; membership will flap");
                    }
                }
                Err(e) => {
                    tracing::warn!(broker = %addr, error = %e, "consumer heartbeat failed");
                    stale_route |= e.is_routing();
                }
            }
        }
        if stale_route {
            for topic in &self.settings.topics {
                self.refresh_route(topic).await;
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
        (lists, epochs)
    }

    /// The group's live members as seen by the first master of the sorted route, falling back
    /// to the next ones.
    pub(crate) async fn member_list(&self, route: &TopicRouteInfo) -> Result<Vec<String>> {
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
    pub(crate) async fn start_offset(
        &self,
        route: &TopicRouteInfo,
        mq: &MessageQueue,
    ) -> Result<(u64, bool)> {
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
        // Everything on a group's retry topic is the group's own unfinished work: start at its
        // beginning whatever the group does for its topics.
        let start = if sluice_proto::names::is_retry_topic(&mq.topic) {
            StartPosition::Earliest
        } else {
            self.settings.start
        };
        let offset = match start {
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
                if start == StartPosition::Earliest {
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
    /// `epochs`: the group's reset epoch on each broker group, sent with its commits so a
    /// commit from before a reset is ignored.
    pub(crate) async fn send_commits(
        &self,
        entries: Vec<(MessageQueue, u64)>,
        epochs: &Epochs,
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
            // A broker group whose epoch this member has not heard counts as never reset: a
            // commit from before a reset there is ignored too, and the next heartbeat's
            // epoch (above 0) reloads the queues.
            let reset_epoch = entries
                .first()
                .map(|(mq, _)| epochs.get(&mq.broker_name).copied().unwrap_or(0));
            let req = CommitOffsetsRequest {
                reset_epoch,
                // Ordered: a queue this member lost keeps its new owner's position.
                lock_owner: if self.settings.orderly {
                    self.settings.client_id.clone()
                } else {
                    String::new()
                },
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
                    if e.is_routing() {
                        let topics: BTreeSet<&str> =
                            entries.iter().map(|(q, _)| q.topic.as_str()).collect();
                        for topic in topics {
                            self.refresh_route(topic).await;
                        }
                    }
                    error = Some(e);
                }
            }
        }
        (done, error)
    }

    /// Fetches the topic's route again after a routing error (once, however many callers).
    pub(crate) async fn refresh_route(&self, topic: &str) {
        let seen = self.core.routes.cached(topic).map_or(0, |r| r.generation);
        if let Err(e) = self.core.routes.refresh(topic, seen).await {
            tracing::debug!(topic, error = %e, "route refresh failed");
        }
    }

    /// Tells every broker we are gone, so the others take our queues at once.
    pub(crate) async fn unregister(&self) {
        let addrs = self.broker_addresses().await;
        let calls = addrs.keys().map(|addr| async move {
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
        for (addr, r) in addrs.keys().zip(join_all(calls).await) {
            if let Err(e) = r {
                tracing::warn!(broker = %addr, error = %e, "unregistering the consumer failed");
            }
        }
    }
}

/// Logs a subscribed topic without a route. A group's retry topic has none until its first
/// send-back: that is normal, not worth a warning.
pub(crate) fn no_route(topic: &str, e: &crate::error::Error) {
    if sluice_proto::names::is_retry_topic(topic) {
        tracing::debug!(topic, error = %e, "no route for the group's retry topic yet");
    } else {
        tracing::warn!(topic, error = %e, "no route for a subscribed topic");
    }
}
