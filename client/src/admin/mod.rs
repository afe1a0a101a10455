//! Administration: topics, routes, cluster status, consumer lag and message lookups.

mod acl;
mod dlq;
mod groups;
mod query;
mod reset;
mod status;
mod topics;
mod trace;
mod txn;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use serde::Serialize;
use sluice_proto::v1::{BrokerInfo, CreateTopicRequest, Role, TopicConfig};
use sluice_proto::{names, perm, ApiError, ErrorCode};

pub use acl::{AclChange, PolicyRow, UserRow};
pub use dlq::{DeadLetter, GroupPolicy, Redriven};
pub use groups::{GroupDescription, GroupRow, HeldQueue, QueueLockRow};
pub use reset::{QueueResetRow, ResetPosition};
pub use status::{BrokerStatusRow, LagRow, ReadRow, ReplicaProgressRow};
pub use topics::{QueueOffsetsRow, TopicUpdate, TopicUpdated};
pub use trace::MessageTrace;
pub use txn::TransactionRow;

use crate::client::ClientCore;
use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::route::TopicRouteInfo;
use crate::rpc;

/// Most queues a topic may have per broker group.
pub const MAX_QUEUES: u32 = 1024;

/// The outcome of creating a topic on one broker group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicCreated {
    pub broker_name: String,
    pub address: String,
    /// False when an identical topic already existed there.
    pub created: bool,
}

/// Admin operations against a cluster, through its nameservers. Cheap to clone (clones share
/// connections).
#[derive(Clone)]
pub struct Admin {
    core: Arc<ClientCore>,
    route_wait: Duration,
}

impl Admin {
    /// Must be called inside a tokio runtime.
    pub fn new(config: ClientConfig) -> Result<Self> {
        Ok(Admin {
            core: ClientCore::new(config)?,
            route_wait: Duration::from_secs(15),
        })
    }

    /// How long `create_topic` waits for the nameservers to show the new topic (default 15 s).
    pub fn route_wait(mut self, wait: Duration) -> Self {
        self.route_wait = wait;
        self
    }

    /// Creates a topic with `queues` read and write queues on every master broker (of one
    /// cluster, if given), then waits until every reachable nameserver routes it.
    pub async fn create_topic(
        &self,
        name: &str,
        queues: u32,
        cluster: Option<&str>,
    ) -> Result<Vec<TopicCreated>> {
        names::validate_topic_name(name)?;
        if queues == 0 || queues > MAX_QUEUES {
            return Err(Error::InvalidArgument(format!(
                "queue count must be within 1..={MAX_QUEUES}, not {queues}"
            )));
        }
        let masters = self.masters(cluster).await?;
        let config = TopicConfig {
            name: name.to_string(),
            read_queues: queues,
            write_queues: queues,
            perm: perm::READ_WRITE,
        };
        let t = self.core.timeout();
        let calls = masters.iter().map(|b| {
            let req = CreateTopicRequest {
                config: Some(config.clone()),
            };
            async move {
                let mut client = self.core.broker(&b.address)?;
                rpc::call(&b.address, t, client.create_topic(rpc::request(req, t))).await
            }
        });
        let mut created = Vec::new();
        let mut failures = Vec::new();
        for (b, result) in masters.iter().zip(join_all(calls).await) {
            match result {
                Ok(resp) => created.push(TopicCreated {
                    broker_name: b.broker_name.clone(),
                    address: b.address.clone(),
                    created: resp.created,
                }),
                Err(e) => failures.push((b, e)),
            }
        }
        if let Some((_, first)) = failures.first() {
            if failures.len() == 1 && created.is_empty() {
                return Err(first.clone());
            }
            let list: Vec<String> = failures
                .iter()
                .map(|(b, e)| format!("{} ({}): {e}", b.broker_name, b.address))
                .collect();
            let code = first.code().unwrap_or(ErrorCode::Unavailable);
            return Err(Error::Api(ApiError::new(
                code,
                format!(
                    "topic {name} was not created on every broker: {}",
                    list.join("; ")
                ),
            )));
        }
        let brokers: Vec<&str> = created.iter().map(|c| c.broker_name.as_str()).collect();
        self.wait_for_route(name, &brokers).await?;
        Ok(created)
    }

    /// Current master of each broker group, optionally of one cluster only.
    async fn masters(&self, cluster: Option<&str>) -> Result<Vec<BrokerInfo>> {
        let info = self.core.nameservers.cluster_info().await?;
        let mut by_group: BTreeMap<(String, String), BrokerInfo> = BTreeMap::new();
        for b in info.brokers {
            if b.role != Role::Master as i32 || cluster.is_some_and(|c| c != b.cluster_name) {
                continue;
            }
            let key = (b.cluster_name.clone(), b.broker_name.clone());
            // A deposed master may linger until it re-registers; trust the newest term.
            match by_group.get(&key) {
                Some(existing) if existing.term >= b.term => {}
                _ => {
                    by_group.insert(key, b);
                }
            }
        }
        if by_group.is_empty() {
            let scope =
                cluster.map_or_else(|| "registered".to_string(), |c| format!("in cluster {c}"));
            return Err(Error::Api(ApiError::new(
                ErrorCode::NoRoute,
                format!("no master broker {scope}"),
            )));
        }
        Ok(by_group.into_values().collect())
    }

    /// Polls every nameserver until its route for `topic` lists all `brokers`. Nameservers that
    /// cannot be reached are skipped (they learn the topic when the brokers re-register).
    async fn wait_for_route(&self, topic: &str, brokers: &[&str]) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.route_wait;
        let mut waiting: Vec<String> = self.core.nameservers.addrs().to_vec();
        loop {
            let checks = waiting.iter().map(|addr| async move {
                match self.core.nameservers.topic_route_from(addr, topic).await {
                    Ok(route) => brokers
                        .iter()
                        .all(|b| route.brokers.iter().any(|r| r.broker_name == *b)),
                    Err(Error::Api(e)) if e.code == ErrorCode::TopicNotFound => false,
                    Err(e) => {
                        tracing::warn!(nameserver = %addr, error = %e, "nameserver unreachable; not waiting for it");
                        true
                    }
                }
            });
            let done = join_all(checks).await;
            waiting = waiting
                .into_iter()
                .zip(done)
                .filter(|(_, ok)| !ok)
                .map(|(a, _)| a)
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Api(ApiError::new(
                    ErrorCode::NoRoute,
                    format!(
                        "topic {topic} was created but nameserver(s) {} did not route it within {:?}",
                        waiting.join(", "),
                        self.route_wait
                    ),
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// All topic names known to the nameservers, sorted.
    pub async fn list_topics(&self) -> Result<Vec<String>> {
        let mut topics = self.core.nameservers.list_topics().await?;
        topics.sort();
        Ok(topics)
    }

    /// The topic's current route, fetched from the nameservers (not from a cache).
    /// (broker group, address to read from) for each broker group of `topic`'s route.
    pub(crate) async fn route_readers(&self, topic: &str) -> Result<Vec<(String, String)>> {
        let route = self.topic_route(topic).await?;
        Ok(route
            .brokers
            .iter()
            .filter_map(|b| {
                b.read_address()
                    .map(|a| (b.broker_name.clone(), a.to_string()))
            })
            .collect())
    }

    pub async fn topic_route(&self, topic: &str) -> Result<TopicRouteInfo> {
        names::validate_topic_name(topic)?;
        let route = self.core.nameservers.topic_route(topic).await?;
        Ok(TopicRouteInfo::from_proto(route))
    }
}
