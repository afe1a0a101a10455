//! Resetting a consumer group's offsets on every broker group (`sluice group reset`).

use futures::future::join_all;
use serde::Serialize;
use sluice_proto::v1::{ResetOffsetsRequest, ResetTo};
use sluice_proto::{names, ApiError, ErrorCode};

use super::Admin;
use crate::error::{Error, Result};
use crate::rpc;

/// Where `reset_offsets` moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetPosition {
    Earliest,
    Latest,
    /// The first message stored at or after this time (ms since the epoch).
    Time(i64),
    /// This offset, clamped to each queue's range.
    Offset(u64),
}

/// One queue of a reset.
#[derive(Debug, Clone, Serialize)]
pub struct QueueResetRow {
    pub broker_name: String,
    pub topic: String,
    pub queue_id: u32,
    /// The committed offset before (None: none).
    pub from: Option<u64>,
    pub to: u64,
}

impl Admin {
    /// Moves `group`'s offsets (of `topic`, or of every topic it has offsets for but its retry
    /// topic) on every broker group to `to`. Live consumers of the group drop their positions
    /// and resume from the new offsets at their next heartbeat; their commits from before the
    /// reset are ignored. With `dry_run`, only reports what would change.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: Option<&str>,
        to: ResetPosition,
        dry_run: bool,
    ) -> Result<Vec<QueueResetRow>> {
        names::validate_group_name(group)?;
        let brokers: Vec<(String, String)> = match topic {
            Some(t) => {
                names::validate_topic_name(t)?;
                let route = self.topic_route(t).await?;
                route
                    .brokers
                    .iter()
                    .map(|b| {
                        let addr = b.master_address.clone().ok_or_else(|| {
                            Error::no_route(
                                t,
                                &format!("broker group {} has no master", b.broker_name),
                            )
                        })?;
                        Ok((b.broker_name.clone(), addr))
                    })
                    .collect::<Result<_>>()?
            }
            None => self
                .masters(None)
                .await?
                .into_iter()
                .map(|b| (b.broker_name, b.address))
                .collect(),
        };
        let (kind, value) = match to {
            ResetPosition::Earliest => (ResetTo::Earliest, 0),
            ResetPosition::Latest => (ResetTo::Latest, 0),
            ResetPosition::Time(ms) => (ResetTo::Time, ms),
            ResetPosition::Offset(o) => (
                ResetTo::Offset,
                i64::try_from(o)
                    .map_err(|_| Error::InvalidArgument(format!("offset {o} is too large")))?,
            ),
        };
        let t = self.core.timeout();
        let calls = brokers.iter().map(|(_, addr)| async move {
            let mut client = self.core.broker(addr)?;
            let req = ResetOffsetsRequest {
                group: group.to_string(),
                topic: topic.unwrap_or_default().to_string(),
                to: kind as i32,
                value,
                dry_run,
            };
            rpc::call(addr, t, client.reset_offsets(rpc::request(req, t))).await
        });
        let mut rows = Vec::new();
        let mut none_here = 0;
        for ((broker, _), r) in brokers.iter().zip(join_all(calls).await) {
            match r {
                Ok(resp) => rows.extend(resp.queues.into_iter().map(|q| QueueResetRow {
                    broker_name: broker.clone(),
                    topic: q.topic,
                    queue_id: q.queue_id,
                    from: q.from_offset,
                    to: q.to_offset,
                })),
                // The group has no offsets on that broker group: nothing to reset there.
                Err(Error::Api(e)) if e.code == ErrorCode::GroupNotFound && topic.is_none() => {
                    none_here += 1;
                }
                Err(e) => {
                    let code = e.code().unwrap_or(ErrorCode::Unavailable);
                    return Err(Error::Api(ApiError::new(
                        code,
                        format!("reset of group {group} failed on broker group {broker}: {e}"),
                    )));
                }
            }
        }
        if none_here == brokers.len() {
            return Err(Error::Api(ApiError::new(
                ErrorCode::GroupNotFound,
                format!("group {group} has no committed offsets; name the topic to reset"),
            )));
        }
        Ok(rows)
    }
}
