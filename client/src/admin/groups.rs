//! Consumer groups for operators: list, describe (members, who holds which queue, lag) and
//! delete, over every master broker.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use serde::Serialize;
use sluice_proto::v1::{DeleteGroupRequest, ListGroupsRequest};
use sluice_proto::{names, ErrorCode};

use super::Admin;
use crate::consumer::allocate_averagely;
use crate::error::{Error, Result};
use crate::rpc;

/// A group as the brokers know it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupRow {
    pub group: String,
    /// clustering, orderly (a live member consumes orderly), or broadcast (an instance's
    /// own group, `GROUP|INSTANCE`).
    pub mode: &'static str,
    pub members: Vec<String>,
    pub topics: Vec<String>,
    /// Ordered consumption: the queue locks held, by broker group.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<QueueLockRow>,
}

/// A queue lock of ordered consumption.
#[derive(Debug, Clone, Serialize)]
pub struct QueueLockRow {
    pub broker_name: String,
    pub topic: String,
    pub queue_id: u32,
    pub holder: String,
    /// Left of the lease (0: lapsed).
    pub remaining_ms: u64,
}

/// One queue of a described group.
#[derive(Debug, Clone, Serialize)]
pub struct HeldQueue {
    pub topic: String,
    pub broker_name: String,
    pub queue_id: u32,
    /// The member that holds it (the group's rebalancing rule over its live members).
    pub member: Option<String>,
    pub committed_offset: Option<u64>,
    pub max_offset: u64,
    pub lag: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupDescription {
    #[serde(flatten)]
    pub group: GroupRow,
    pub total_lag: u64,
    pub queues: Vec<HeldQueue>,
}

fn mode(group: &str, orderly: bool) -> &'static str {
    if group.contains('|') {
        "broadcast"
    } else if orderly {
        "orderly"
    } else {
        "clustering"
    }
}

#[derive(Default)]
struct Merged {
    members: BTreeSet<String>,
    topics: BTreeSet<String>,
    orderly: bool,
    locks: Vec<QueueLockRow>,
}

impl Admin {
    /// Every group any master knows (live members or committed offsets), merged, sorted.
    pub async fn list_groups(&self) -> Result<Vec<GroupRow>> {
        let masters = self.masters(None).await?;
        let t = self.core.timeout();
        let calls = masters.iter().map(|b| async move {
            let mut client = self.core.broker(&b.address)?;
            let req = rpc::request(ListGroupsRequest {}, t);
            rpc::call(&b.address, t, client.list_groups(req)).await
        });
        let mut merged: BTreeMap<String, Merged> = BTreeMap::new();
        let mut last_error = None;
        let mut answered = 0;
        for (b, r) in masters.iter().zip(join_all(calls).await) {
            match r {
                Ok(resp) => {
                    answered += 1;
                    for g in resp.groups {
                        let e = merged.entry(g.name).or_default();
                        e.members.extend(g.members);
                        e.topics.extend(g.topics);
                        e.orderly |= g.orderly;
                        e.locks.extend(g.locks.into_iter().map(|l| QueueLockRow {
                            broker_name: b.broker_name.clone(),
                            topic: l.topic,
                            queue_id: l.queue_id,
                            holder: l.holder,
                            remaining_ms: l.remaining_ms,
                        }));
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        if answered == 0 {
            if let Some(e) = last_error {
                return Err(e);
            }
        }
        Ok(merged
            .into_iter()
            .map(|(group, m)| GroupRow {
                mode: mode(&group, m.orderly),
                group,
                members: m.members.into_iter().collect(),
                topics: m.topics.into_iter().collect(),
                locks: m.locks,
            })
            .collect())
    }

    /// Members, the queue each holds, committed offsets and lag of `group`.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        names::validate_group_name(group)?;
        let row = self
            .list_groups()
            .await?
            .into_iter()
            .find(|g| g.group == group)
            .ok_or_else(|| {
                Error::Api(sluice_proto::ApiError::new(
                    ErrorCode::GroupNotFound,
                    format!("no broker knows group {group}"),
                ))
            })?;
        let mut holder = BTreeMap::new();
        // Ordered: the broker's locks say who holds a queue; the split is only the plan.
        let locked: BTreeMap<(String, String, u32), String> = row
            .locks
            .iter()
            .filter(|l| l.remaining_ms > 0)
            .map(|l| {
                let q = (l.broker_name.clone(), l.topic.clone(), l.queue_id);
                (q, l.holder.clone())
            })
            .collect();
        for topic in row.topics.iter().filter(|_| locked.is_empty()) {
            let Ok(route) = self.topic_route(topic).await else {
                continue;
            };
            let queues = route.readable_queues();
            for m in &row.members {
                for q in allocate_averagely(&queues, &row.members, m) {
                    holder.insert((q.broker_name, q.topic, q.queue_id), m.clone());
                }
            }
        }
        let lag = match self.group_lag(group, None).await {
            Ok(rows) => rows,
            Err(Error::Api(e)) if e.code == ErrorCode::GroupNotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        holder.extend(locked);
        let queues: Vec<HeldQueue> = lag
            .into_iter()
            .map(|r| HeldQueue {
                member: holder
                    .get(&(r.broker_name.clone(), r.topic.clone(), r.queue_id))
                    .cloned(),
                topic: r.topic,
                broker_name: r.broker_name,
                queue_id: r.queue_id,
                committed_offset: r.committed_offset,
                max_offset: r.max_offset,
                lag: r.lag,
            })
            .collect();
        Ok(GroupDescription {
            total_lag: queues.iter().map(|q| q.lag).sum(),
            group: row,
            queues,
        })
    }

    /// Forgets `group` on every master: committed offsets, reset epoch, retry policy. Refused
    /// while it has live members, unless `force`.
    pub async fn delete_group(&self, group: &str, force: bool) -> Result<Vec<String>> {
        names::validate_group_name(group)?;
        if !force {
            // Every broker group first, so a refusal leaves the group whole everywhere.
            let live = self.list_groups().await?;
            if let Some(g) = live
                .iter()
                .find(|g| g.group == group && !g.members.is_empty())
            {
                return Err(Error::InvalidArgument(format!(
                    "group {group} has {} live member(s) ({}); stop them first, or force",
                    g.members.len(),
                    g.members.join(", ")
                )));
            }
        }
        let masters = self.masters(None).await?;
        let t = self.core.timeout();
        let calls = masters.iter().map(|b| async move {
            let mut client = self.core.broker(&b.address)?;
            let req = rpc::request(
                DeleteGroupRequest {
                    group: group.to_string(),
                    force,
                },
                t,
            );
            rpc::call(&b.address, t, client.delete_group(req)).await
        });
        let mut deleted = Vec::new();
        for (b, r) in masters.iter().zip(join_all(calls).await) {
            match r {
                Ok(_) => deleted.push(b.broker_name.clone()),
                Err(Error::Api(e)) if e.code == ErrorCode::GroupNotFound => {}
                Err(e) => return Err(e),
            }
        }
        if deleted.is_empty() {
            return Err(Error::Api(sluice_proto::ApiError::new(
                ErrorCode::GroupNotFound,
                format!("no broker knows group {group}"),
            )));
        }
        Ok(deleted)
    }
}
