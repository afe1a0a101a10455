//! The route table: which broker replicas are alive, which topics they host and which replica
//! of each group is master.
//!
//! Pure logic without I/O or a clock of its own: every call that depends on time takes `now`,
//! so tests drive time explicitly and the gRPC layer passes `Instant::now()`.

mod validate;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sluice_proto::v1::{
    BrokerInfo, BrokerRoute, ClusterInfo, ReplicaRoute, Role, TopicConfig, TopicRoute,
};
use sluice_proto::{ApiError, ErrorCode};

pub use validate::{validate_topic_name, MAX_NAME_LEN, MAX_TOPIC_NAME_LEN};

/// A validated RegisterBroker request.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub cluster_name: String,
    pub broker_name: String,
    /// Never 0: routes use 0 for "no master".
    pub replica_id: u64,
    /// `Role::Master` or `Role::Slave`, never unspecified.
    pub role: Role,
    pub address: String,
    /// The data port's address; empty when the broker has none.
    pub data_address: String,
    pub term: u64,
    pub max_offset: u64,
    /// Topic configs by name (names unique and valid).
    pub topics: BTreeMap<String, TopicConfig>,
}

/// A validated UnregisterBroker request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unregistration {
    pub cluster_name: String,
    pub broker_name: String,
    pub replica_id: u64,
    /// When not empty, the entry is only removed if it still has this address, so a late
    /// unregister from an old incarnation cannot drop a restarted replica.
    pub address: String,
}

/// What a registration changed about the group's master, for logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterChange {
    Unchanged,
    /// The registering replica became master; `previous` is the replica it displaced.
    Elected {
        previous: Option<u64>,
    },
    /// A MASTER claim with a term below the group's master term, recorded as SLAVE.
    StaleClaim {
        claimed_term: u64,
        master_term: u64,
    },
    /// The master re-registered as SLAVE: the group has no master now.
    SteppedDown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterOutcome {
    /// First registration of this replica (or the first since it expired or unregistered).
    pub new_replica: bool,
    pub master_change: MasterChange,
}

/// A replica removed by an expiry scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredReplica {
    pub cluster_name: String,
    pub broker_name: String,
    pub replica_id: u64,
    pub address: String,
    pub was_master: bool,
    pub silent_for: Duration,
}

#[derive(Debug)]
struct Replica {
    cluster_name: String,
    address: String,
    data_address: String,
    term: u64,
    max_offset: u64,
    last_seen: Instant,
    topics: BTreeMap<String, TopicConfig>,
}

/// All replicas sharing one broker name.
#[derive(Debug, Default)]
struct Group {
    replicas: BTreeMap<u64, Replica>,
    master: Option<u64>,
    /// Term of the latest accepted master. Kept after the master leaves (for as long as the
    /// group has any replica) so a deposed master that has not noticed yet cannot take the
    /// routes back with its old term.
    master_term: u64,
}

impl Group {
    fn role_of(&self, replica_id: u64) -> Role {
        if self.master == Some(replica_id) {
            Role::Master
        } else {
            Role::Slave
        }
    }

    fn apply_role(&mut self, replica_id: u64, role: Role, term: u64) -> MasterChange {
        let is_master = self.master == Some(replica_id);
        match role {
            // The current master's own registrations are authoritative about itself: the term
            // comparison only arbitrates between different replicas claiming mastership.
            Role::Master if is_master => {
                self.master_term = term;
                MasterChange::Unchanged
            }
            Role::Master if term >= self.master_term => {
                let previous = self.master.replace(replica_id);
                self.master_term = term;
                MasterChange::Elected { previous }
            }
            Role::Master => MasterChange::StaleClaim {
                claimed_term: term,
                master_term: self.master_term,
            },
            _ if is_master => {
                self.master = None;
                MasterChange::SteppedDown
            }
            _ => MasterChange::Unchanged,
        }
    }
}

/// The nameserver's view of the brokers, keyed by broker name.
#[derive(Debug)]
pub struct Registry {
    expiry: Duration,
    groups: BTreeMap<String, Group>,
}

impl Registry {
    /// `expiry`: a replica silent for longer than this is dropped by [`Registry::expire`].
    pub fn new(expiry: Duration) -> Self {
        Registry {
            expiry,
            groups: BTreeMap::new(),
        }
    }

    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// Registration and heartbeat: records the replica, its topics and its liveness at `now`,
    /// and applies the master/term rule.
    pub fn register(
        &mut self,
        reg: Registration,
        now: Instant,
    ) -> Result<RegisterOutcome, ApiError> {
        if let Some(group) = self.groups.get(&reg.broker_name) {
            // A broker name is one group, and a group lives in one cluster. The replica itself
            // may move (it restarted with a new config), other replicas may not disagree.
            let conflict = group
                .replicas
                .iter()
                .find(|(id, r)| **id != reg.replica_id && r.cluster_name != reg.cluster_name);
            if let Some((id, r)) = conflict {
                return Err(ApiError::invalid(format!(
                    "broker name {} is registered in cluster {} (replica {}), not in cluster {}",
                    reg.broker_name, r.cluster_name, id, reg.cluster_name
                )));
            }
        }
        let group = self.groups.entry(reg.broker_name).or_default();
        let replica = Replica {
            cluster_name: reg.cluster_name,
            address: reg.address,
            data_address: reg.data_address,
            term: reg.term,
            max_offset: reg.max_offset,
            last_seen: now,
            topics: reg.topics,
        };
        let new_replica = group.replicas.insert(reg.replica_id, replica).is_none();
        let master_change = group.apply_role(reg.replica_id, reg.role, reg.term);
        Ok(RegisterOutcome {
            new_replica,
            master_change,
        })
    }

    /// Drops a replica at once. Returns whether it was registered (and removed).
    pub fn unregister(&mut self, unreg: &Unregistration) -> bool {
        let Some(group) = self.groups.get_mut(&unreg.broker_name) else {
            return false;
        };
        let matches = group.replicas.get(&unreg.replica_id).is_some_and(|r| {
            (unreg.cluster_name.is_empty() || r.cluster_name == unreg.cluster_name)
                && (unreg.address.is_empty() || r.address == unreg.address)
        });
        if !matches {
            return false;
        }
        group.replicas.remove(&unreg.replica_id);
        if group.master == Some(unreg.replica_id) {
            group.master = None;
        }
        if group.replicas.is_empty() {
            self.groups.remove(&unreg.broker_name);
        }
        true
    }

    /// Removes every replica silent for longer than the expiry, as of `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<ExpiredReplica> {
        let mut expired = Vec::new();
        for (broker_name, group) in &mut self.groups {
            let silent: Vec<u64> = group
                .replicas
                .iter()
                .filter(|(_, r)| now.saturating_duration_since(r.last_seen) > self.expiry)
                .map(|(id, _)| *id)
                .collect();
            for id in silent {
                let Some(r) = group.replicas.remove(&id) else {
                    continue;
                };
                let was_master = group.master == Some(id);
                if was_master {
                    group.master = None;
                }
                expired.push(ExpiredReplica {
                    cluster_name: r.cluster_name,
                    broker_name: broker_name.clone(),
                    replica_id: id,
                    address: r.address,
                    was_master,
                    silent_for: now.saturating_duration_since(r.last_seen),
                });
            }
        }
        self.groups.retain(|_, g| !g.replicas.is_empty());
        expired
    }

    /// The route of `topic`: every group hosting it, by broker name.
    pub fn topic_route(&self, topic: &str) -> Result<TopicRoute, ApiError> {
        validate_topic_name(topic)?;
        let mut brokers = Vec::new();
        for (broker_name, group) in &self.groups {
            // The master's view of the topic wins; otherwise the lowest replica id hosting it.
            let master_view = group
                .master
                .and_then(|m| group.replicas.get(&m))
                .and_then(|r| r.topics.get(topic).map(|t| (r, t)));
            let source = master_view.or_else(|| {
                group
                    .replicas
                    .values()
                    .find_map(|r| r.topics.get(topic).map(|t| (r, t)))
            });
            let Some((source_replica, config)) = source else {
                continue;
            };
            brokers.push(BrokerRoute {
                cluster_name: source_replica.cluster_name.clone(),
                broker_name: broker_name.clone(),
                read_queues: config.read_queues,
                write_queues: config.write_queues,
                perm: config.perm,
                replicas: group
                    .replicas
                    .iter()
                    .map(|(id, r)| ReplicaRoute {
                        replica_id: *id,
                        address: r.address.clone(),
                        role: group.role_of(*id) as i32,
                        data_address: r.data_address.clone(),
                    })
                    .collect(),
                master_replica_id: group.master.unwrap_or(0),
            });
        }
        if brokers.is_empty() {
            return Err(ApiError::new(
                ErrorCode::TopicNotFound,
                format!("no route for topic {topic}"),
            ));
        }
        Ok(TopicRoute {
            topic: topic.to_string(),
            brokers,
        })
    }

    /// Every topic hosted by any replica, sorted and without duplicates.
    pub fn list_topics(&self) -> Vec<String> {
        let names: BTreeSet<&String> = self
            .groups
            .values()
            .flat_map(|g| g.replicas.values())
            .flat_map(|r| r.topics.keys())
            .collect();
        names.into_iter().cloned().collect()
    }

    /// Every registered replica, sorted by cluster, broker name and replica id.
    pub fn cluster_info(&self, now: Instant) -> ClusterInfo {
        let mut brokers: Vec<BrokerInfo> = self
            .groups
            .iter()
            .flat_map(|(broker_name, group)| {
                group.replicas.iter().map(move |(id, r)| BrokerInfo {
                    cluster_name: r.cluster_name.clone(),
                    broker_name: broker_name.clone(),
                    replica_id: *id,
                    role: group.role_of(*id) as i32,
                    address: r.address.clone(),
                    term: r.term,
                    max_offset: r.max_offset,
                    last_heartbeat_ago_ms: duration_ms(now.saturating_duration_since(r.last_seen)),
                    topic_count: u32::try_from(r.topics.len()).unwrap_or(u32::MAX),
                    data_address: r.data_address.clone(),
                })
            })
            .collect();
        brokers.sort_by(|a, b| {
            (&a.cluster_name, &a.broker_name, a.replica_id).cmp(&(
                &b.cluster_name,
                &b.broker_name,
                b.replica_id,
            ))
        });
        ClusterInfo { brokers }
    }

    /// Number of registered replicas over all groups.
    pub fn replica_count(&self) -> usize {
        self.groups.values().map(|g| g.replicas.len()).sum()
    }
}

/// Milliseconds in `d`, saturating (a u64 of milliseconds outlasts any real uptime).
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
