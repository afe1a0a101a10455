//! Direct looks at the brokers and nameservers, below the client library: replica status,
//! which replica leads a group, whether a group is healthy, fault injection, raw queue reads.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::fault_request::Fault;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::replication_client::ReplicationClient;
use sluice_proto::v1::{
    BrokerStatus, FaultRequest, GetBrokerStatusRequest, GetTopicRouteRequest, PullRequest, Role,
};
use sluice_proto::{ApiError, ErrorCode};
use tonic::transport::{Channel, Endpoint};

/// Bound on one status or route call: a paused broker accepts connections but never answers.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// One replica of a group: its id, address and the control script's node name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub id: u64,
    pub address: String,
    pub node: String,
}

/// A broker group (broker name) and its replicas, from the control script's node list.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub replicas: Vec<Replica>,
}

impl Group {
    pub fn replica(&self, id: u64) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.id == id)
    }
}

fn endpoint(addr: &str) -> Result<Endpoint> {
    let scheme = if crate::auth::tls().is_some() {
        "https"
    } else {
        "http"
    };
    Ok(Endpoint::from_shared(format!("{scheme}://{addr}"))
        .with_context(|| format!("invalid address {addr:?}"))?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT))
}

async fn channel(addr: &str) -> Result<Channel> {
    let e = endpoint(addr)?;
    let connecting = async {
        match crate::auth::tls() {
            Some(c) => e.connect_with_connector(c).await,
            None => e.connect().await,
        }
    };
    let ch = tokio::time::timeout(CALL_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow!("connecting to {addr} timed out"))?
        .with_context(|| format!("cannot connect to {addr}"))?;
    Ok(ch)
}

/// The broker's own status (fails when it is down, paused or cut off).
pub async fn status(addr: &str) -> Result<BrokerStatus> {
    let mut c = BrokerClient::new(channel(addr).await?);
    let req = crate::auth::signed(
        GetBrokerStatusRequest {},
        addr,
        "/sluice.v1.Broker/GetBrokerStatus",
    );
    let r = tokio::time::timeout(CALL_TIMEOUT, c.get_broker_status(req))
        .await
        .map_err(|_| anyhow!("status of {addr} timed out"))?
        .map_err(|s| anyhow!("status of {addr}: {}", ApiError::from_status(&s)))?;
    Ok(r.into_inner())
}

/// Status of every replica of `group` (`None` for those that do not answer), in order.
pub async fn statuses(group: &Group) -> Vec<Option<BrokerStatus>> {
    let calls = group.replicas.iter().map(|r| status(&r.address));
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::ok)
        .collect()
}

/// The replica that reports itself MASTER with the highest term, among those that answer.
pub async fn find_master(group: &Group) -> Option<(u64, u64)> {
    statuses(group)
        .await
        .into_iter()
        .zip(&group.replicas)
        .filter_map(|(s, r)| s.map(|s| (r.id, s)))
        .filter(|(_, s)| s.role == Role::Master as i32)
        .map(|(id, s)| (id, s.term))
        .max_by_key(|&(_, term)| term)
}

/// Waits for a master other than `not` (bounded).
pub async fn await_master(group: &Group, not: Option<u64>, timeout: Duration) -> Result<u64> {
    let start = Instant::now();
    loop {
        if let Some((m, _)) = find_master(group).await.filter(|&(m, _)| Some(m) != not) {
            return Ok(m);
        }
        if start.elapsed() > timeout {
            bail!(
                "group {}: no master{} within {timeout:?}",
                group.name,
                not.map(|n| format!(" other than replica {n}"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The master replica id the nameservers route `topic` to for `group` (first answer wins).
pub async fn routed_master(nameservers: &[String], topic: &str, group: &str) -> Option<u64> {
    for ns in nameservers {
        let Ok(ch) = channel(ns).await else { continue };
        let mut c = NameServerClient::new(ch);
        let call = c.get_topic_route(GetTopicRouteRequest {
            topic: topic.to_string(),
        });
        if let Ok(Ok(r)) = tokio::time::timeout(CALL_TIMEOUT, call).await {
            return r
                .into_inner()
                .brokers
                .iter()
                .find(|b| b.broker_name == group)
                .map(|b| b.master_replica_id)
                .filter(|&m| m != 0);
        }
    }
    None
}

/// One look at a group: its single master, the master's commit index and the lowest applied
/// index of all replicas; or what is wrong with the group's shape.
async fn sample(group: &Group) -> std::result::Result<(u64, u64, u64), String> {
    let all = statuses(group).await;
    let mut master = None;
    for (s, r) in all.iter().zip(&group.replicas) {
        match s {
            None => return Err(format!("replica {} ({}) does not answer", r.id, r.node)),
            Some(s) if s.role == Role::Master as i32 => {
                if let Some(other) = master.replace((r.id, s.commit_index)) {
                    return Err(format!(
                        "replicas {} and {} both report MASTER",
                        other.0, r.id
                    ));
                }
            }
            Some(_) => {}
        }
    }
    let Some((m, commit)) = master else {
        return Err("no replica reports MASTER".into());
    };
    let mut min_applied = u64::MAX;
    for (s, r) in all.iter().zip(&group.replicas) {
        let Some(s) = s else { continue };
        if r.id != m && s.leader_id != m {
            return Err(format!(
                "replica {} follows {} instead of master {m}",
                r.id, s.leader_id
            ));
        }
        min_applied = min_applied.min(s.applied_index);
    }
    Ok((m, commit, min_applied))
}

/// Waits until every replica of `group` answers, exactly one is MASTER and the others follow
/// it, every replica has applied what the master had committed one look earlier (under load
/// the followers always trail the current commit by a round trip), and (with a topic) the
/// nameservers route the topic to it. Returns the master.
pub async fn await_healthy(
    group: &Group,
    nameservers: &[String],
    topic: Option<&str>,
    timeout: Duration,
) -> Result<u64> {
    let start = Instant::now();
    let mut previous: Option<(u64, u64)> = None;
    loop {
        let problem = match sample(group).await {
            Ok((m, commit, min_applied)) => match previous.replace((m, commit)) {
                Some((pm, pc)) if pm == m && min_applied >= pc => {
                    let routed = match topic {
                        Some(t) => routed_master(nameservers, t, &group.name).await,
                        None => Some(m),
                    };
                    if routed == Some(m) {
                        return Ok(m);
                    }
                    format!("nameservers route to {routed:?}, master is {m}")
                }
                Some((pm, pc)) if pm == m => {
                    format!("a replica applied {min_applied} < master {m}'s commit {pc}")
                }
                _ => format!("master {m} seen once; checking again"),
            },
            Err(p) => {
                previous = None;
                p
            }
        };
        if start.elapsed() > timeout {
            bail!(
                "group {} not healthy within {timeout:?}: {problem}",
                group.name
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends an `InjectFault` request to the broker at `addr`; returns the isolated set after it.
pub async fn inject_fault(addr: &str, fault: Fault) -> Result<Vec<u64>> {
    // Signed with the cluster secret under the cluster's name, when there is one.
    let cluster = if crate::auth::has_cluster_secret() {
        status(addr).await?.cluster_name
    } else {
        String::new()
    };
    let mut c = ReplicationClient::new(channel(addr).await?);
    let req = crate::auth::cluster_signed(
        FaultRequest { fault: Some(fault) },
        addr,
        "/sluice.v1.Replication/InjectFault",
        &cluster,
    );
    let r = tokio::time::timeout(CALL_TIMEOUT, c.inject_fault(req))
        .await
        .map_err(|_| anyhow!("fault request to {addr} timed out"))?
        .map_err(|s| anyhow!("fault request to {addr}: {}", ApiError::from_status(&s)))?;
    Ok(r.into_inner().isolated)
}

/// One stored message, as the final log check needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub offset: u64,
    pub message_id: String,
    pub body: bytes::Bytes,
}

/// Every committed message of one queue on one replica, from its min offset.
pub async fn read_queue(addr: &str, topic: &str, queue_id: u32) -> Result<Vec<Stored>> {
    let mut c = BrokerClient::new(channel(addr).await?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let req = PullRequest {
            group: String::new(),
            topic: topic.into(),
            queue_id,
            offset,
            max_messages: 1024,
            max_bytes: 0,
            poll_timeout_ms: 0,
            raw_records: false,
            record_format: 0,
            filters: Vec::new(),
        };
        let req = crate::auth::signed(req, addr, "/sluice.v1.Broker/Pull");
        let r = match tokio::time::timeout(Duration::from_secs(10), c.pull(req)).await {
            Err(_) => bail!("pull of {topic}/{queue_id} at {offset} from {addr} timed out"),
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                let e = ApiError::from_status(&status);
                // Retention or a snapshot moved the start: begin there.
                if out.is_empty() && e.code == ErrorCode::OffsetOutOfRange && e.min_offset > offset
                {
                    offset = e.min_offset;
                    continue;
                }
                bail!("pull of {topic}/{queue_id} at {offset} from {addr}: {e}");
            }
        };
        if r.messages.is_empty() {
            return Ok(out);
        }
        offset = r.next_offset;
        out.extend(r.messages.into_iter().map(|m| Stored {
            offset: m.queue_offset,
            message_id: m.message_id,
            body: m.body,
        }));
    }
}
