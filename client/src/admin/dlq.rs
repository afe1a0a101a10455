//! Consumer-group retry policies and dead letters.

use futures::future::join_all;
use serde::Serialize;
use sluice_proto::v1::{
    GetGroupConfigRequest, GetMessageRequest, GroupConfig, PullRequest, RedriveRequest,
    UpdateGroupConfigRequest,
};
use sluice_proto::{names, props, ApiError, ErrorCode};

use super::Admin;
use crate::error::{Error, Result};
use crate::rpc;
use crate::time::format_time;

/// A group's retry policy on one broker group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupPolicy {
    pub broker_name: String,
    pub max_retries: u32,
    pub backoff_ms: Vec<u64>,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub broker_name: String,
    pub message_id: String,
    /// Where it was first consumed from.
    pub topic: String,
    pub queue_id: String,
    /// Failed attempts.
    pub attempts: u32,
    /// The last failure (the handler's error).
    pub failure: String,
    pub keys: Vec<String>,
    pub stored_at: String,
    pub store_timestamp_ms: i64,
    pub body_size: usize,
    /// Sent back to its topic already (a newer record carries its id).
    pub redriven: bool,
    /// Offset in the dead-letter queue.
    pub dlq_offset: u64,
}

/// Redrive on one broker group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redriven {
    pub broker_name: String,
    pub redriven: u32,
    pub skipped: u32,
}

impl Admin {
    /// The group's retry policy on every master broker (defaults where never set).
    pub async fn group_config(&self, group: &str) -> Result<Vec<GroupPolicy>> {
        names::validate_group_name(group)?;
        let t = self.core.timeout();
        let mut out = Vec::new();
        for b in self.masters(None).await? {
            let mut client = self.core.broker(&b.address)?;
            let req = GetGroupConfigRequest {
                group: group.to_string(),
            };
            let c = rpc::call(&b.address, t, client.get_group_config(rpc::request(req, t))).await?;
            out.push(policy(&b.broker_name, c));
        }
        Ok(out)
    }

    /// Sets the group's max retries and/or backoff (None: keep) on every master broker.
    pub async fn update_group_config(
        &self,
        group: &str,
        max_retries: Option<u32>,
        backoff_ms: Option<Vec<u64>>,
    ) -> Result<Vec<GroupPolicy>> {
        names::validate_group_name(group)?;
        if max_retries == Some(0) {
            return Err(Error::InvalidArgument(
                "max retries must be at least 1 (0 on the wire means: keep)".into(),
            ));
        }
        let t = self.core.timeout();
        let masters = self.masters(None).await?;
        let calls = masters.iter().map(|b| {
            let req = UpdateGroupConfigRequest {
                config: Some(GroupConfig {
                    group: group.to_string(),
                    max_retries: max_retries.unwrap_or(0),
                    backoff_ms: backoff_ms.clone().unwrap_or_default(),
                }),
            };
            async move {
                let mut client = self.core.broker(&b.address)?;
                rpc::call(
                    &b.address,
                    t,
                    client.update_group_config(rpc::request(req, t)),
                )
                .await
            }
        });
        let mut out = Vec::new();
        for (b, r) in masters.iter().zip(join_all(calls).await) {
            out.push(policy(&b.broker_name, r?));
        }
        Ok(out)
    }

    /// The group's dead letters, oldest first per broker group (at most `max`).
    pub async fn dead_letters(&self, group: &str, max: usize) -> Result<Vec<DeadLetter>> {
        names::validate_group_name(group)?;
        let topic = names::dlq_topic(group);
        let route = match self.core.routes.get(&topic).await {
            Ok(r) => r,
            Err(e) if e.code() == Some(ErrorCode::TopicNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let t = self.core.timeout();
        let mut out = Vec::new();
        for (broker, addr) in route.masters() {
            let mut client = self.core.broker(&addr)?;
            let mut offset = 0;
            'queue: while out.len() < max {
                let req = PullRequest {
                    topic: topic.clone(),
                    queue_id: 0,
                    offset,
                    max_messages: 256,
                    ..Default::default()
                };
                let r = match rpc::call(&addr, t, client.pull(rpc::request(req, t))).await {
                    Ok(r) => r,
                    Err(Error::Api(e))
                        if e.code == ErrorCode::OffsetOutOfRange && e.min_offset > offset =>
                    {
                        offset = e.min_offset;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if r.messages.is_empty() {
                    break;
                }
                offset = r.next_offset;
                for m in r.messages {
                    if out.len() >= max {
                        break 'queue;
                    }
                    let req = GetMessageRequest {
                        message_id: m.message_id.clone(),
                    };
                    let newest = rpc::call(&addr, t, client.get_message(rpc::request(req, t)))
                        .await?
                        .message;
                    let get = |k: &str| {
                        props::get_map(&m.properties, k)
                            .unwrap_or_default()
                            .to_string()
                    };
                    out.push(DeadLetter {
                        broker_name: broker.clone(),
                        message_id: m.message_id.clone(),
                        topic: get(props::ORIGIN_TOPIC),
                        queue_id: get(props::ORIGIN_QUEUE),
                        attempts: m.reconsume_times,
                        failure: get(props::FAILURE),
                        keys: m.keys.clone(),
                        stored_at: format_time(m.store_timestamp_ms),
                        store_timestamp_ms: m.store_timestamp_ms,
                        body_size: m.body.len(),
                        redriven: newest
                            .is_some_and(|n| n.commit_log_offset != m.commit_log_offset),
                        dlq_offset: m.queue_offset,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Sends dead letters (by id, or all) back to their original topics with a fresh retry
    /// budget, on every broker group holding the group's dead letters.
    pub async fn redrive(&self, group: &str, ids: &[String], all: bool) -> Result<Vec<Redriven>> {
        names::validate_group_name(group)?;
        if ids.is_empty() && !all {
            return Err(Error::InvalidArgument(
                "name dead letters by id, or redrive all".into(),
            ));
        }
        let topic = names::dlq_topic(group);
        let route = match self.core.routes.get(&topic).await {
            Ok(r) => r,
            Err(e) if e.code() == Some(ErrorCode::TopicNotFound) => {
                return Err(Error::Api(ApiError::new(
                    ErrorCode::MessageNotFound,
                    format!("group {group} has no dead letters"),
                )))
            }
            Err(e) => return Err(e),
        };
        let t = self.core.timeout();
        let mut out = Vec::new();
        for (broker, addr) in route.masters() {
            let mut client = self.core.broker(&addr)?;
            let req = RedriveRequest {
                group: group.to_string(),
                message_ids: ids.to_vec(),
                all,
            };
            let r = rpc::call(&addr, t, client.redrive_dead_letters(rpc::request(req, t))).await?;
            out.push(Redriven {
                broker_name: broker,
                redriven: r.redriven,
                skipped: r.skipped,
            });
        }
        Ok(out)
    }
}

fn policy(broker: &str, c: GroupConfig) -> GroupPolicy {
    GroupPolicy {
        broker_name: broker.to_string(),
        max_retries: c.max_retries,
        backoff_ms: c.backoff_ms,
    }
}
