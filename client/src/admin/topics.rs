//! Changing and deleting topics on every broker group that serves them. Each broker applies the
//! change through its log, so every replica of a group holds it and a new master keeps it.

use futures::future::join_all;
use serde::Serialize;
use sluice_proto::v1::{
    CreateTopicRequest, DeleteTopicRequest, GetQueueOffsetsRequest, TopicConfig,
};
use sluice_proto::{names, perm, ApiError, ErrorCode};

use super::{Admin, MAX_QUEUES};
use crate::error::{Error, Result};
use crate::rpc;

/// What to change in a topic; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicUpdate {
    pub write_queues: Option<u32>,
    /// Default: never fewer than before (a queue taken out of writing keeps being read until
    /// it is drained; lower the read queues explicitly afterwards).
    pub read_queues: Option<u32>,
    /// `perm::READ`, `perm::WRITE` or both.
    pub perm: Option<u32>,
}

/// One broker group's topic after an update.
#[derive(Debug, Clone, Serialize)]
pub struct TopicUpdated {
    pub broker_name: String,
    pub read_queues: u32,
    pub write_queues: u32,
    pub perm: u32,
    /// False when nothing changed.
    pub changed: bool,
}

impl Admin {
    /// Updates `name` on every broker group in its route.
    pub async fn update_topic(&self, name: &str, update: TopicUpdate) -> Result<Vec<TopicUpdated>> {
        names::validate_topic_name(name)?;
        let queues = [update.write_queues, update.read_queues];
        if let Some(q) = queues
            .iter()
            .flatten()
            .find(|q| **q == 0 || **q > MAX_QUEUES)
        {
            return Err(Error::InvalidArgument(format!(
                "queue count must be within 1..={MAX_QUEUES}, not {q}"
            )));
        }
        if update
            .perm
            .is_some_and(|p| p == 0 || p & !perm::READ_WRITE != 0)
        {
            return Err(Error::InvalidArgument(
                "permission must be read, write or both".into(),
            ));
        }
        let route = self.topic_route(name).await?;
        let t = self.core.timeout();
        let plans: Vec<(String, Option<String>, TopicConfig)> = route
            .brokers
            .iter()
            .map(|b| {
                let write_queues = update.write_queues.unwrap_or(b.write_queues);
                let read_queues = update
                    .read_queues
                    .unwrap_or(b.read_queues.max(write_queues));
                let cfg = TopicConfig {
                    name: name.to_string(),
                    read_queues,
                    write_queues,
                    perm: update.perm.unwrap_or(b.perm),
                };
                (b.broker_name.clone(), b.master_address.clone(), cfg)
            })
            .collect();
        let calls = plans.iter().map(|(broker, addr, cfg)| async move {
            let addr = addr.as_deref().ok_or_else(|| {
                Error::no_route(name, &format!("broker group {broker} has no master"))
            })?;
            let mut client = self.core.broker(addr)?;
            let req = CreateTopicRequest {
                config: Some(cfg.clone()),
            };
            rpc::call(addr, t, client.create_topic(rpc::request(req, t))).await
        });
        let results = join_all(calls).await;
        let mut out = Vec::new();
        for ((broker, _, cfg), r) in plans.into_iter().zip(results) {
            let resp = r.map_err(|e| partial(name, "updated", &broker, e))?;
            out.push(TopicUpdated {
                broker_name: broker,
                read_queues: cfg.read_queues,
                write_queues: cfg.write_queues,
                perm: cfg.perm,
                changed: resp.created,
            });
        }
        Ok(out)
    }

    /// Deletes `name` from every broker group in its route (its messages are left to retention;
    /// creating the topic again starts its queues where they were).
    pub async fn delete_topic(&self, name: &str) -> Result<Vec<String>> {
        names::validate_topic_name(name)?;
        let route = self.topic_route(name).await?;
        let t = self.core.timeout();
        let calls = route.brokers.iter().map(|b| async move {
            let addr = b.master_address.as_deref().ok_or_else(|| {
                Error::no_route(
                    name,
                    &format!("broker group {} has no master", b.broker_name),
                )
            })?;
            let mut client = self.core.broker(addr)?;
            let req = DeleteTopicRequest {
                topic: name.to_string(),
            };
            rpc::call(addr, t, client.delete_topic(rpc::request(req, t))).await
        });
        let results = join_all(calls).await;
        let mut deleted = Vec::new();
        for (b, r) in route.brokers.iter().zip(results) {
            match r {
                Ok(_) => deleted.push(b.broker_name.clone()),
                // Deleted already (an earlier attempt, or the route lagged behind).
                Err(Error::Api(e)) if e.code == ErrorCode::TopicNotFound => {}
                Err(e) => return Err(partial(name, "deleted", &b.broker_name, e)),
            }
        }
        Ok(deleted)
    }
}

fn partial(topic: &str, what: &str, broker: &str, e: Error) -> Error {
    let code = e.code().unwrap_or(ErrorCode::Unavailable);
    Error::Api(ApiError::new(
        code,
        format!("topic {topic} was not {what} on broker group {broker}: {e}"),
    ))
}

/// One queue of a topic on one broker group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueOffsetsRow {
    pub broker_name: String,
    pub queue_id: u32,
    pub min_offset: u64,
    pub max_offset: u64,
    /// Store time of the newest message, None when the queue is empty.
    pub last_store_timestamp_ms: Option<i64>,
}

impl Admin {
    /// Every queue of `topic` with its offsets, asking a replica of each broker group in its
    /// route; sorted by broker group and queue.
    pub async fn topic_queues(&self, topic: &str) -> Result<Vec<QueueOffsetsRow>> {
        names::validate_topic_name(topic)?;
        let brokers = self.route_readers(topic).await?;
        let t = self.core.timeout();
        let calls = brokers.iter().map(|(_, addr)| async move {
            let mut client = self.core.broker(addr)?;
            let req = GetQueueOffsetsRequest {
                topic: topic.to_string(),
            };
            rpc::call(addr, t, client.get_queue_offsets(rpc::request(req, t))).await
        });
        let mut rows = Vec::new();
        for ((broker, addr), result) in brokers.iter().zip(join_all(calls).await) {
            let resp = result.map_err(|e| {
                Error::Api(ApiError::new(
                    e.code().unwrap_or(ErrorCode::Unavailable),
                    format!("broker {broker} ({addr}): {e}"),
                ))
            })?;
            rows.extend(resp.queues.into_iter().map(|q| QueueOffsetsRow {
                broker_name: broker.clone(),
                queue_id: q.queue_id,
                min_offset: q.min_offset,
                max_offset: q.max_offset,
                last_store_timestamp_ms:
                    (q.last_store_timestamp_ms != 0).then_some(q.last_store_timestamp_ms),
            }));
        }
        rows.sort_by(|a, b| (&a.broker_name, a.queue_id).cmp(&(&b.broker_name, b.queue_id)));
        Ok(rows)
    }
}
