//! Cluster status and consumer-group lag.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::future::join_all;
use serde::Serialize;
use sluice_proto::v1::{
    BrokerStatus, GetBrokerStatusRequest, GetGroupOffsetsRequest, GetQueueOffsetsRequest,
    ReadHintReason, ReadStats, Role,
};
use sluice_proto::{names, ApiError, ErrorCode};

use super::Admin;
use crate::error::{Error, Result};
use crate::route::role_name;
use crate::rpc;

/// One broker replica, as the nameservers know it and (if reachable) as it reports itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BrokerStatusRow {
    pub cluster_name: String,
    pub broker_name: String,
    pub replica_id: u64,
    pub role: String,
    pub address: String,
    /// The broker's data port (framed TCP for sends and Raft traffic), if it has one.
    pub data_address: Option<String>,
    /// Data-port connections open now and sends served through it since start.
    pub data_port_connections: Option<u64>,
    pub data_port_sends: Option<u64>,
    /// Data-port connections a standalone broker moved off its writer's thread since start.
    pub data_port_moved: Option<u64>,
    pub term: u64,
    /// Commit-log max offset: from the broker itself, else from its last registration.
    pub max_offset: u64,
    pub last_heartbeat_ago_ms: u64,
    pub topic_count: u32,
    pub reachable: bool,
    pub confirmed_offset: Option<u64>,
    pub min_offset: Option<u64>,
    pub disk_usage_ratio: Option<f64>,
    pub flush_mode: Option<String>,
    /// Raft role (LEADER, FOLLOWER, ...) of a replicated broker.
    pub raft_role: Option<String>,
    /// Raft commit and applied indexes of a replicated broker.
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// When a replicated broker acks a send: "quorum" or "leader".
    pub ack_policy: Option<String>,
    /// On a group's master: how far each replica of the group has the log.
    pub replicas: Vec<ReplicaProgressRow>,
    /// What the replica served to pulls (brokers that report it).
    pub reads: Option<ReadRow>,
    /// Delayed messages waiting on the broker.
    pub timers_pending: Option<u64>,
    /// Resident memory of the broker process.
    pub rss_bytes: Option<u64>,
    /// Why the broker could not be asked, when it could not.
    pub error: Option<String>,
}

/// A replica's progress as its group's master sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaProgressRow {
    pub replica_id: u64,
    pub address: String,
    /// Highest log index known to be stored on the replica.
    pub match_index: u64,
    /// Entries it is behind the master's last index.
    pub lag: u64,
    pub learner: bool,
    pub active: bool,
    /// PROBE, REPLICATE or SNAPSHOT.
    pub state: String,
}

/// Pulls a replica served, the read hints it gave, and its share of its group's reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReadRow {
    pub pulls: u64,
    pub messages: u64,
    pub bytes: u64,
    pub recent_messages_per_sec: f64,
    /// Pulls answered with a hint naming another replica.
    pub redirects: u64,
    /// Hints given, by reason (STAY, CONSUMER_BEHIND, ...).
    pub hints: BTreeMap<String, u64>,
    pub slave_read_enable: bool,
    /// The group's recent append rate as this replica measures it.
    pub write_bytes_per_sec: f64,
    pub write_pressure: bool,
    /// Share of the messages its group served: over the last seconds when the group served
    /// any recently, else since the replicas started. `None` when the group served nothing.
    pub read_share: Option<f64>,
}

/// Lag of a group on one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LagRow {
    pub topic: String,
    pub broker_name: String,
    pub queue_id: u32,
    pub min_offset: u64,
    pub max_offset: u64,
    /// None when the group never committed on this queue.
    pub committed_offset: Option<u64>,
    /// Messages not consumed yet: max - committed (max - min without a commit).
    pub lag: u64,
}

impl Admin {
    /// Every registered broker replica, sorted by cluster, broker name and replica id.
    pub async fn cluster_status(&self) -> Result<Vec<BrokerStatusRow>> {
        let info = self.core.nameservers.cluster_info().await?;
        let t = self.core.timeout();
        let calls = info.brokers.iter().map(|b| async move {
            let mut client = self.core.broker(&b.address)?;
            rpc::call(
                &b.address,
                t,
                client.get_broker_status(rpc::request(GetBrokerStatusRequest {}, t)),
            )
            .await
        });
        let statuses = join_all(calls).await;
        let mut rows: Vec<BrokerStatusRow> = info
            .brokers
            .into_iter()
            .zip(statuses)
            .map(|(b, status)| {
                let mut row = BrokerStatusRow {
                    cluster_name: b.cluster_name,
                    broker_name: b.broker_name,
                    replica_id: b.replica_id,
                    role: role_name(b.role).to_string(),
                    address: b.address,
                    data_address: (!b.data_address.is_empty()).then_some(b.data_address),
                    term: b.term,
                    max_offset: b.max_offset,
                    last_heartbeat_ago_ms: b.last_heartbeat_ago_ms,
                    topic_count: b.topic_count,
                    // The broker's own report (filled in below) or the error reaching it.
                    ..Default::default()
                };
                match status {
                    Ok(s) => merge_status(&mut row, s),
                    Err(e) => row.error = Some(e.to_string()),
                }
                row
            })
            .collect();
        rows.sort_by(|a, b| {
            (&a.cluster_name, &a.broker_name, a.replica_id).cmp(&(
                &b.cluster_name,
                &b.broker_name,
                b.replica_id,
            ))
        });
        fill_read_shares(&mut rows);
        Ok(rows)
    }

    /// Per queue: the broker's offsets, the group's committed offset and the lag. Without a
    /// topic, every topic the group has committed offsets for.
    pub async fn group_lag(&self, group: &str, topic: Option<&str>) -> Result<Vec<LagRow>> {
        names::validate_group_name(group)?;
        let topics: Vec<String> = match topic {
            Some(t) => {
                names::validate_topic_name(t)?;
                vec![t.to_string()]
            }
            None => self.group_topics(group).await?,
        };
        let mut rows = Vec::new();
        for topic in &topics {
            rows.extend(self.topic_lag(group, topic).await?);
        }
        Ok(rows)
    }

    /// Topics a group has committed offsets for, on any master broker.
    async fn group_topics(&self, group: &str) -> Result<Vec<String>> {
        let masters = self.masters(None).await?;
        let t = self.core.timeout();
        let calls = masters.iter().map(|b| async move {
            let mut client = self.core.broker(&b.address)?;
            let req = GetGroupOffsetsRequest {
                group: group.to_string(),
                topic: String::new(),
            };
            rpc::call(
                &b.address,
                t,
                client.get_group_offsets(rpc::request(req, t)),
            )
            .await
        });
        let mut topics = BTreeSet::new();
        for (b, result) in masters.iter().zip(join_all(calls).await) {
            match result {
                Ok(resp) => topics.extend(resp.offsets.into_iter().map(|o| o.topic)),
                Err(e) if e.code() == Some(ErrorCode::GroupNotFound) => {}
                Err(e) => {
                    return Err(Error::Api(ApiError::new(
                        e.code().unwrap_or(ErrorCode::Unavailable),
                        format!("broker {} ({}): {e}", b.broker_name, b.address),
                    )))
                }
            }
        }
        if topics.is_empty() {
            return Err(Error::Api(ApiError::new(
                ErrorCode::GroupNotFound,
                format!("group {group} has no committed offsets on any broker"),
            )));
        }
        Ok(topics.into_iter().collect())
    }

    async fn topic_lag(&self, group: &str, topic: &str) -> Result<Vec<LagRow>> {
        let brokers = self.route_readers(topic).await?;
        let t = self.core.timeout();
        let calls = brokers.iter().map(|(_, addr)| async move {
            let mut client = self.core.broker(addr)?;
            let offsets = rpc::call(
                addr,
                t,
                client.get_queue_offsets(rpc::request(
                    GetQueueOffsetsRequest {
                        topic: topic.to_string(),
                    },
                    t,
                )),
            )
            .await?;
            let committed = rpc::call(
                addr,
                t,
                client.get_group_offsets(rpc::request(
                    GetGroupOffsetsRequest {
                        group: group.to_string(),
                        topic: topic.to_string(),
                    },
                    t,
                )),
            )
            .await;
            let committed: HashMap<u32, u64> = match committed {
                Ok(resp) => resp
                    .offsets
                    .into_iter()
                    .filter(|o| o.topic == topic)
                    .map(|o| (o.queue_id, o.offset))
                    .collect(),
                Err(e) if e.code() == Some(ErrorCode::GroupNotFound) => HashMap::new(),
                Err(e) => return Err(e),
            };
            Ok::<_, Error>((offsets, committed))
        });
        let mut rows = Vec::new();
        for ((broker, addr), result) in brokers.iter().zip(join_all(calls).await) {
            let (offsets, committed) = result.map_err(|e| {
                Error::Api(ApiError::new(
                    e.code().unwrap_or(ErrorCode::Unavailable),
                    format!("broker {broker} ({addr}): {e}"),
                ))
            })?;
            let mut queues: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
            for q in offsets.queues {
                queues.insert(q.queue_id, (q.min_offset, q.max_offset));
            }
            for (queue_id, (min, max)) in queues {
                let c = committed.get(&queue_id).copied();
                rows.push(LagRow {
                    topic: topic.to_string(),
                    broker_name: broker.clone(),
                    queue_id,
                    min_offset: min,
                    max_offset: max,
                    committed_offset: c,
                    lag: lag(min, max, c),
                });
            }
        }
        Ok(rows)
    }
}

/// Each replica's share of what its group (cluster, broker name) served.
pub(crate) fn fill_read_shares(rows: &mut [BrokerStatusRow]) {
    let mut totals: BTreeMap<(String, String), (f64, u64)> = BTreeMap::new();
    for r in rows.iter() {
        if let Some(reads) = &r.reads {
            let t = totals
                .entry((r.cluster_name.clone(), r.broker_name.clone()))
                .or_default();
            t.0 += reads.recent_messages_per_sec;
            t.1 += reads.messages;
        }
    }
    for r in rows.iter_mut() {
        let key = (r.cluster_name.clone(), r.broker_name.clone());
        let (Some(reads), Some(&(recent, total))) = (r.reads.as_mut(), totals.get(&key)) else {
            continue;
        };
        reads.read_share = if recent > 0.0 {
            Some(reads.recent_messages_per_sec / recent)
        } else if total > 0 {
            Some(reads.messages as f64 / total as f64)
        } else {
            None
        };
    }
}

fn read_row(s: ReadStats) -> ReadRow {
    ReadRow {
        pulls: s.pulls,
        messages: s.messages,
        bytes: s.bytes,
        recent_messages_per_sec: s.recent_messages_per_sec,
        redirects: s.redirects,
        hints: s
            .hints
            .iter()
            .map(|h| {
                let name =
                    ReadHintReason::try_from(h.reason).map_or("UNKNOWN", |r| r.as_str_name());
                let name = name.strip_prefix("READ_HINT_REASON_").unwrap_or(name);
                (name.to_string(), h.count)
            })
            .collect(),
        slave_read_enable: s.slave_read_enable,
        write_bytes_per_sec: s.write_bytes_per_sec,
        write_pressure: s.write_pressure,
        read_share: None,
    }
}

fn merge_status(row: &mut BrokerStatusRow, s: BrokerStatus) {
    row.reachable = true;
    row.reads = s.read_stats.map(read_row);
    row.max_offset = s.max_offset;
    row.min_offset = Some(s.min_offset);
    row.confirmed_offset = Some(s.confirmed_offset);
    row.disk_usage_ratio = Some(s.disk_usage_ratio);
    row.flush_mode = (!s.flush_mode.is_empty()).then_some(s.flush_mode);
    if !s.data_address.is_empty() {
        row.data_address = Some(s.data_address);
    }
    row.data_port_connections = Some(s.data_port_connections);
    row.data_port_sends = Some(s.data_port_sends);
    row.data_port_moved = Some(s.data_port_moved);
    row.timers_pending = Some(s.timers_pending);
    row.rss_bytes = (s.rss_bytes > 0).then_some(s.rss_bytes);
    // The broker's own view is newer than its last registration.
    if s.role != Role::Unspecified as i32 {
        row.role = role_name(s.role).to_string();
    }
    row.term = s.term;
    row.topic_count = s.topic_count;
    if s.replicated {
        row.raft_role = Some(s.raft_role);
        row.commit_index = Some(s.commit_index);
        row.applied_index = Some(s.applied_index);
        row.ack_policy = (!s.ack_policy.is_empty()).then_some(s.ack_policy);
        row.replicas = s
            .replicas
            .into_iter()
            .map(|p| ReplicaProgressRow {
                replica_id: p.replica_id,
                address: p.address,
                match_index: p.match_index,
                lag: p.lag,
                learner: p.learner,
                active: p.active,
                state: p.state,
            })
            .collect();
    }
}

/// Messages left: from the committed offset, or from the oldest one without a commit. A commit
/// below the queue's minimum (messages expired) counts from the minimum.
pub(crate) fn lag(min: u64, max: u64, committed: Option<u64>) -> u64 {
    max.saturating_sub(committed.unwrap_or(min).max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(broker: &str, id: u64, reads: Option<(f64, u64)>) -> BrokerStatusRow {
        BrokerStatusRow {
            cluster_name: "c".into(),
            broker_name: broker.into(),
            replica_id: id,
            role: "SLAVE".into(),
            address: format!("h:{id}"),
            term: 1,
            max_offset: 0,
            last_heartbeat_ago_ms: 0,
            reachable: true,
            reads: reads.map(|(recent, messages)| {
                read_row(ReadStats {
                    recent_messages_per_sec: recent,
                    messages,
                    hints: vec![sluice_proto::v1::ReadHintCount {
                        reason: ReadHintReason::ConsumerBehind as i32,
                        count: 2,
                    }],
                    ..Default::default()
                })
            }),
            ..Default::default()
        }
    }

    #[test]
    fn read_share_per_group_prefers_recent_rates() {
        let mut rows = vec![
            row("a", 1, Some((10.0, 100))),
            row("a", 2, Some((30.0, 0))),
            row("a", 3, None),
            row("b", 1, Some((0.0, 30))),
            row("b", 2, Some((0.0, 10))),
            row("c", 1, Some((0.0, 0))),
        ];
        fill_read_shares(&mut rows);
        let share = |i: usize| rows[i].reads.as_ref().and_then(|r| r.read_share);
        assert_eq!(share(0), Some(0.25));
        assert_eq!(share(1), Some(0.75));
        assert_eq!(share(2), None);
        assert_eq!(share(3), Some(0.75));
        assert_eq!(share(4), Some(0.25));
        assert_eq!(share(5), None);
        assert_eq!(rows[0].reads.as_ref().unwrap().hints["CONSUMER_BEHIND"], 2);
    }

    #[test]
    fn lag_counts_from_the_commit_or_the_oldest_message() {
        assert_eq!(lag(0, 100, Some(40)), 60);
        assert_eq!(lag(10, 100, None), 90);
        assert_eq!(lag(50, 100, Some(20)), 50);
        assert_eq!(lag(0, 100, Some(150)), 0);
    }
}
