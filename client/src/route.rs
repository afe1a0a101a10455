//! Topic routes as the client uses them, and the cache that keeps them fresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use sluice_proto::perm;
use sluice_proto::v1::{Role, TopicRoute};
use sluice_proto::ErrorCode;

use crate::error::Result;
use crate::nameserver::NameServers;

/// One queue of a topic on one broker group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct MessageQueue {
    pub topic: String,
    pub broker_name: String,
    pub queue_id: u32,
}

impl std::fmt::Display for MessageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.topic, self.broker_name, self.queue_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaInfo {
    pub replica_id: u64,
    pub address: String,
    pub role: String,
    /// The replica's data port (framed TCP, sends only); `None` when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_address: Option<String>,
}

/// A broker group serving the topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerRouteInfo {
    pub cluster_name: String,
    pub broker_name: String,
    pub read_queues: u32,
    pub write_queues: u32,
    pub perm: u32,
    /// Address of the master replica, if the group has one right now.
    pub master_address: Option<String>,
    pub replicas: Vec<ReplicaInfo>,
}

impl BrokerRouteInfo {
    /// Where to read from: the master, else any replica.
    pub fn read_address(&self) -> Option<&str> {
        self.master_address
            .as_deref()
            .or_else(|| self.replicas.first().map(|r| r.address.as_str()))
    }

    /// Replica id of the master, if the group has one right now.
    pub fn master_replica_id(&self) -> Option<u64> {
        let master = self.master_address.as_deref()?;
        self.replicas
            .iter()
            .find(|r| r.address == master)
            .map(|r| r.replica_id)
    }

    /// Where to read from, in order: the `preferred` replica (a read hint) if the route still
    /// has it, then the master, then every other replica. Each entry is (replica id, address).
    pub fn read_order(&self, preferred: Option<u64>) -> Vec<(u64, &str)> {
        let master = self.master_replica_id();
        let mut order: Vec<(u64, &str)> = Vec::with_capacity(self.replicas.len());
        let mut push = |id: u64| {
            if order.iter().all(|&(i, _)| i != id) {
                if let Some(r) = self.replicas.iter().find(|r| r.replica_id == id) {
                    order.push((id, r.address.as_str()));
                }
            }
        };
        for id in preferred.into_iter().chain(master) {
            push(id);
        }
        for r in &self.replicas {
            push(r.replica_id);
        }
        order
    }
}

/// A topic's route, with broker groups sorted by name.
#[derive(Debug, Clone, Serialize)]
pub struct TopicRouteInfo {
    pub topic: String,
    pub brokers: Vec<BrokerRouteInfo>,
    /// Increases with every fetch, so callers can tell whether the route changed since they looked.
    #[serde(skip)]
    pub(crate) generation: u64,
    #[serde(skip)]
    pub(crate) fetched_at: Instant,
    /// Precomputed: producers look at it on every send.
    #[serde(skip)]
    writable: Vec<MessageQueue>,
}

pub(crate) fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Master) => "MASTER",
        Ok(Role::Slave) => "SLAVE",
        _ => "UNKNOWN",
    }
}

impl TopicRouteInfo {
    pub fn from_proto(route: TopicRoute) -> Self {
        Self::with_generation(route, 0)
    }

    pub(crate) fn with_generation(route: TopicRoute, generation: u64) -> Self {
        let mut brokers: Vec<BrokerRouteInfo> = route
            .brokers
            .into_iter()
            .map(|b| {
                let master_address = (b.master_replica_id != 0)
                    .then(|| {
                        b.replicas
                            .iter()
                            .find(|r| r.replica_id == b.master_replica_id)
                            .map(|r| r.address.clone())
                    })
                    .flatten();
                let mut replicas: Vec<ReplicaInfo> = b
                    .replicas
                    .iter()
                    .map(|r| ReplicaInfo {
                        replica_id: r.replica_id,
                        address: r.address.clone(),
                        role: role_name(r.role).to_string(),
                        data_address: (!r.data_address.is_empty()).then(|| r.data_address.clone()),
                    })
                    .collect();
                replicas.sort_by_key(|r| r.replica_id);
                BrokerRouteInfo {
                    cluster_name: b.cluster_name,
                    broker_name: b.broker_name,
                    read_queues: b.read_queues,
                    write_queues: b.write_queues,
                    perm: b.perm,
                    master_address,
                    replicas,
                }
            })
            .collect();
        brokers.sort_by(|a, b| a.broker_name.cmp(&b.broker_name));
        let mut info = TopicRouteInfo {
            topic: route.topic,
            brokers,
            generation,
            fetched_at: Instant::now(),
            writable: Vec::new(),
        };
        info.writable = info
            .brokers
            .iter()
            .filter(|b| b.perm & perm::WRITE != 0 && b.master_address.is_some())
            .flat_map(|b| (0..b.write_queues).map(|q| info.queue(&b.broker_name, q)))
            .collect();
        info
    }

    pub fn broker(&self, name: &str) -> Option<&BrokerRouteInfo> {
        self.brokers.iter().find(|b| b.broker_name == name)
    }

    pub fn master_address(&self, broker_name: &str) -> Option<&str> {
        self.broker(broker_name)?.master_address.as_deref()
    }

    /// The data port of the group's master, when it has a master and the master a data port.
    pub fn master_data_address(&self, broker_name: &str) -> Option<&str> {
        let b = self.broker(broker_name)?;
        let master = b.master_address.as_deref()?;
        b.replicas
            .iter()
            .find(|r| r.address == master)?
            .data_address
            .as_deref()
    }

    /// Queues a producer may write: every write queue of every writable group with a master,
    /// sorted by (broker name, queue id).
    pub fn writable_queues(&self) -> &[MessageQueue] {
        &self.writable
    }

    /// Queues consumers share, sorted by (broker name, queue id). Groups without a master still
    /// count, so that a master failover does not reshuffle every consumer's assignment.
    pub fn readable_queues(&self) -> Vec<MessageQueue> {
        self.brokers
            .iter()
            .filter(|b| b.perm & perm::READ != 0)
            .flat_map(|b| (0..b.read_queues).map(|q| self.queue(&b.broker_name, q)))
            .collect()
    }

    /// (broker name, master address) of every group with a master, sorted by broker name.
    pub fn masters(&self) -> Vec<(String, String)> {
        self.brokers
            .iter()
            .filter_map(|b| {
                b.master_address
                    .as_ref()
                    .map(|a| (b.broker_name.clone(), a.clone()))
            })
            .collect()
    }

    fn queue(&self, broker: &str, queue_id: u32) -> MessageQueue {
        MessageQueue {
            topic: self.topic.clone(),
            broker_name: broker.to_string(),
            queue_id,
        }
    }
}

/// Routes by topic. Fetched on first use, refreshed in the background every refresh interval and
/// at once when a caller reports a routing error.
pub(crate) struct RouteCache {
    nameservers: Arc<NameServers>,
    routes: RwLock<HashMap<String, Arc<TopicRouteInfo>>>,
    /// One fetch per topic at a time: callers that hit the same stale route wait for one answer.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    generation: AtomicU64,
}

impl RouteCache {
    pub(crate) fn new(nameservers: Arc<NameServers>) -> Self {
        RouteCache {
            nameservers,
            routes: RwLock::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    pub(crate) fn cached(&self, topic: &str) -> Option<Arc<TopicRouteInfo>> {
        self.routes.read().get(topic).cloned()
    }

    /// The cached route, fetching it if the topic is new to this client.
    pub(crate) async fn get(&self, topic: &str) -> Result<Arc<TopicRouteInfo>> {
        match self.cached(topic) {
            Some(r) => Ok(r),
            None => self.refresh(topic, 0).await,
        }
    }

    /// Fetches the route again unless someone already did since the caller saw generation `seen`.
    /// If the nameservers cannot be reached the previous route is kept and returned.
    pub(crate) async fn refresh(&self, topic: &str, seen: u64) -> Result<Arc<TopicRouteInfo>> {
        let lock = self
            .fetching
            .lock()
            .entry(topic.to_string())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let current = self.cached(topic);
        if let Some(r) = &current {
            if r.generation > seen {
                return Ok(r.clone());
            }
        }
        match self.nameservers.topic_route(topic).await {
            Ok(route) => {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                let info = Arc::new(TopicRouteInfo::with_generation(route, generation));
                self.routes.write().insert(topic.to_string(), info.clone());
                Ok(info)
            }
            Err(e) if e.code() == Some(ErrorCode::TopicNotFound) => {
                // Deleted topics must stop being served from the cache.
                self.routes.write().remove(topic);
                Err(e)
            }
            Err(e) => match current {
                Some(r) => {
                    tracing::warn!(topic, error = %e, "route refresh failed; keeping the previous route");
                    Ok(r)
                }
                None => Err(e),
            },
        }
    }

    fn topics(&self) -> Vec<(String, u64, Instant)> {
        self.routes
            .read()
            .iter()
            .map(|(t, r)| (t.clone(), r.generation, r.fetched_at))
            .collect()
    }
}

/// Refreshes every cached route each `interval` until the cache is dropped.
pub(crate) async fn refresh_loop(cache: Weak<RouteCache>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        for (topic, generation, fetched_at) in cache.topics() {
            // Routes fetched recently (after an error) need no second fetch yet.
            if fetched_at.elapsed() < interval / 2 {
                continue;
            }
            if let Err(e) = cache.refresh(&topic, generation).await {
                tracing::debug!(topic, error = %e, "periodic route refresh failed");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sluice_proto::v1::{BrokerRoute, ReplicaRoute};

    pub(crate) fn route(brokers: &[(&str, u32, u32, bool)]) -> TopicRouteInfo {
        TopicRouteInfo::from_proto(TopicRoute {
            topic: "t".into(),
            brokers: brokers
                .iter()
                .map(|&(name, queues, perm, has_master)| BrokerRoute {
                    cluster_name: "c".into(),
                    broker_name: name.into(),
                    read_queues: queues,
                    write_queues: queues,
                    perm,
                    replicas: vec![ReplicaRoute {
                        replica_id: 1,
                        address: format!("{name}:1"),
                        role: Role::Master as i32,
                        data_address: format!("{name}:2"),
                    }],
                    master_replica_id: u64::from(has_master),
                })
                .collect(),
        })
    }

    #[test]
    fn queues_follow_permissions_and_masters() {
        let r = route(&[("b", 2, 6, true), ("a", 1, 6, false), ("c", 3, 4, true)]);
        assert_eq!(r.brokers[0].broker_name, "a");
        let w: Vec<_> = r
            .writable_queues()
            .iter()
            .map(|q| (q.broker_name.clone(), q.queue_id))
            .collect();
        assert_eq!(w, [("b".to_string(), 0), ("b".to_string(), 1)]);
        let rd: Vec<_> = r
            .readable_queues()
            .into_iter()
            .map(|q| (q.broker_name, q.queue_id))
            .collect();
        assert_eq!(rd.len(), 6);
        assert_eq!(rd[0], ("a".to_string(), 0));
        assert_eq!(r.master_address("b"), Some("b:1"));
        assert_eq!(r.master_address("a"), None);
        assert_eq!(r.master_data_address("b"), Some("b:2"));
        assert_eq!(r.master_data_address("a"), None);
        assert_eq!(r.broker("a").unwrap().read_address(), Some("a:1"));
    }

    fn group(master: u64) -> BrokerRouteInfo {
        let info = TopicRouteInfo::from_proto(TopicRoute {
            topic: "t".into(),
            brokers: vec![BrokerRoute {
                cluster_name: "c".into(),
                broker_name: "g".into(),
                read_queues: 1,
                write_queues: 1,
                perm: 6,
                replicas: (1..=3)
                    .map(|id| ReplicaRoute {
                        replica_id: id,
                        address: format!("h:{id}"),
                        role: if id == master {
                            Role::Master as i32
                        } else {
                            Role::Slave as i32
                        },
                        data_address: String::new(),
                    })
                    .collect(),
                master_replica_id: master,
            }],
        });
        info.brokers[0].clone()
    }

    #[test]
    fn read_order_follows_the_hint_then_the_master() {
        let g = group(2);
        assert_eq!(g.master_replica_id(), Some(2));
        assert_eq!(g.read_order(None), [(2, "h:2"), (1, "h:1"), (3, "h:3")]);
        assert_eq!(g.read_order(Some(3)), [(3, "h:3"), (2, "h:2"), (1, "h:1")]);
        assert_eq!(g.read_order(Some(2)), [(2, "h:2"), (1, "h:1"), (3, "h:3")]);
        // A hinted replica the route no longer has is skipped.
        assert_eq!(g.read_order(Some(9)), [(2, "h:2"), (1, "h:1"), (3, "h:3")]);
        // No master: any replica, the hinted one first.
        let g = group(0);
        assert_eq!(g.master_replica_id(), None);
        assert_eq!(g.read_order(Some(3)), [(3, "h:3"), (1, "h:1"), (2, "h:2")]);
    }
}
