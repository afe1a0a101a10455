//! Pull, committed offsets and queue positions over `sluice.v1`: wire <-> `messaging::consume`;
//! consumer-group membership.

use std::time::{Duration, Instant};

use sluice_proto::names::{validate_group_name, validate_topic_name};
use sluice_proto::v1::*;
use sluice_proto::{record, ApiError, ErrorCode};

use super::convert::{now_ms, to_wire};
use super::BrokerService;
use crate::messaging::consume::{
    PullCommand, ResetTarget, DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGES, MAX_BYTES, MAX_MESSAGES,
};
use crate::messaging::filter::FilterSpec;
use crate::state::CommittedOffset;
use crate::store::MessageStore;
use sluice_filter::Kind;

/// Answer this much before the caller's deadline so the reply is not lost to the timeout.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

impl BrokerService {
    pub(super) async fn do_pull(
        &self,
        req: PullRequest,
        deadline: Option<Duration>,
    ) -> Result<PullResponse, ApiError> {
        let mut wait = Duration::from_millis(req.poll_timeout_ms as u64).min(self.limits.max_poll);
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_sub(DEADLINE_MARGIN));
        }
        let specs: Vec<FilterSpec> = req
            .filters
            .iter()
            .map(|f| {
                let kind = match FilterKind::try_from(f.kind) {
                    Ok(FilterKind::Tag) => Kind::Tag,
                    Ok(FilterKind::Sql) => Kind::Sql,
                    Err(_) => {
                        return Err(ApiError::new(
                            ErrorCode::InvalidFilter,
                            format!("filter kind {} of topic {} is unknown", f.kind, f.topic),
                        ))
                    }
                };
                Ok(FilterSpec {
                    topic: f.topic.clone(),
                    kind,
                    expression: f.expression.clone(),
                })
            })
            .collect::<Result<_, ApiError>>()?;
        let filter = self.consuming.filters().for_pull(&req.topic, &specs)?;
        let cmd = PullCommand {
            filter,
            group: req.group,
            topic: req.topic,
            queue_id: req.queue_id,
            offset: req.offset,
            max_messages: match req.max_messages as usize {
                0 => DEFAULT_MAX_MESSAGES,
                n => n.min(MAX_MESSAGES),
            },
            max_bytes: match req.max_bytes as usize {
                0 => DEFAULT_MAX_BYTES,
                n => n.min(MAX_BYTES),
            },
            wait,
        };
        // Raw records only for a client that parses the format the log is written in; others
        // (built before the format changed) get decoded messages.
        if req.raw_records && req.record_format >= record::RECORD_FORMAT {
            let p = self
                .consuming
                .pull(&cmd, MessageStore::read_queue_raw_where)
                .await?;
            return Ok(PullResponse {
                messages: Vec::new(),
                records: p.read.records.into_iter().map(|r| r.bytes).collect(),
                next_offset: p.read.next_offset,
                min_offset: p.read.min_offset,
                max_offset: p.read.max_offset,
                hint: p.hint.map(Into::into),
            });
        }
        let p = self
            .consuming
            .pull(&cmd, MessageStore::read_queue_where)
            .await?;
        Ok(PullResponse {
            messages: p.read.records.into_iter().map(to_wire).collect(),
            records: Vec::new(),
            next_offset: p.read.next_offset,
            min_offset: p.read.min_offset,
            max_offset: p.read.max_offset,
            hint: p.hint.map(Into::into),
        })
    }

    pub(super) async fn do_commit_offsets(
        &self,
        req: CommitOffsetsRequest,
    ) -> Result<CommitOffsetsResponse, ApiError> {
        let entries: Vec<CommittedOffset> = req
            .offsets
            .into_iter()
            .map(|o| CommittedOffset {
                topic: o.topic,
                queue_id: o.queue_id,
                offset: o.offset,
            })
            .collect();
        self.consuming
            .commit_offsets(
                &req.group,
                &entries,
                req.reset_epoch,
                &req.lock_owner,
                now_ms(),
            )
            .await?;
        Ok(CommitOffsetsResponse {})
    }

    pub(super) async fn do_reset_offsets(
        &self,
        req: ResetOffsetsRequest,
    ) -> Result<ResetOffsetsResponse, ApiError> {
        let to = match ResetTo::try_from(req.to).unwrap_or(ResetTo::Unspecified) {
            ResetTo::Unspecified => {
                return Err(ApiError::invalid(format!(
                    "reset target {} is not one of earliest, latest, time, offset",
                    req.to
                )))
            }
            ResetTo::Earliest => ResetTarget::Earliest,
            ResetTo::Latest => ResetTarget::Latest,
            ResetTo::Time => ResetTarget::Time(req.value),
            ResetTo::Offset => ResetTarget::Offset(
                u64::try_from(req.value)
                    .map_err(|_| ApiError::invalid(format!("offset {} is negative", req.value)))?,
            ),
        };
        let topic = (!req.topic.is_empty()).then_some(req.topic.as_str());
        let (plan, reset_epoch) = self
            .consuming
            .reset_offsets(&req.group, topic, to, req.dry_run, now_ms())
            .await?;
        Ok(ResetOffsetsResponse {
            queues: plan
                .into_iter()
                .map(|p| QueueReset {
                    topic: p.topic,
                    queue_id: p.queue_id,
                    from_offset: p.from,
                    to_offset: p.to,
                })
                .collect(),
            reset_epoch,
        })
    }

    pub(super) fn do_query_offset(
        &self,
        req: QueryOffsetRequest,
    ) -> Result<QueryOffsetResponse, ApiError> {
        let found = self
            .consuming
            .committed_offset(&req.group, &req.topic, req.queue_id)?;
        Ok(QueryOffsetResponse {
            found: found.is_some(),
            offset: found.unwrap_or(0),
        })
    }

    pub(super) fn do_get_queue_offsets(
        &self,
        req: GetQueueOffsetsRequest,
    ) -> Result<GetQueueOffsetsResponse, ApiError> {
        let queues = self
            .consuming
            .queue_positions(&req.topic)?
            .into_iter()
            .map(|q| QueueOffsets {
                queue_id: q.queue_id,
                min_offset: q.min_offset,
                max_offset: q.max_offset,
                last_store_timestamp_ms: q.last_store_timestamp_ms.unwrap_or(0),
            })
            .collect();
        Ok(GetQueueOffsetsResponse {
            broker_name: self.identity.broker_name.clone(),
            queues,
        })
    }

    pub(super) fn do_search_offset(
        &self,
        req: SearchOffsetRequest,
    ) -> Result<SearchOffsetResponse, ApiError> {
        Ok(SearchOffsetResponse {
            offset: self
                .consuming
                .offset_at(&req.topic, req.queue_id, req.timestamp_ms)?,
        })
    }

    pub(super) fn do_consumer_heartbeat(
        &self,
        req: ConsumerHeartbeatRequest,
    ) -> Result<ConsumerHeartbeatResponse, ApiError> {
        if req.client_id.is_empty() || req.client_id.len() > 256 {
            return Err(ApiError::invalid("client_id must be 1..=256 bytes"));
        }
        let now = Instant::now();
        let mut reset_epochs = std::collections::HashMap::new();
        for s in req.subscriptions {
            validate_group_name(&s.group)?;
            for t in &s.topics {
                validate_topic_name(t)?;
            }
            reset_epochs.insert(s.group.clone(), self.consuming.reset_epoch(&s.group)?);
            self.groups
                .heartbeat(&s.group, &req.client_id, s.topics, s.orderly, now);
        }
        Ok(ConsumerHeartbeatResponse {
            expiry_ms: self.groups.expiry().as_millis() as u64,
            reset_epochs,
        })
    }

    pub(super) fn do_list_groups(&self) -> Result<ListGroupsResponse, ApiError> {
        let mut by_name: std::collections::BTreeMap<String, GroupSummary> = Default::default();
        for g in self.groups.live(Instant::now()) {
            by_name.insert(
                g.name.clone(),
                GroupSummary {
                    name: g.name,
                    members: g.members,
                    topics: g.topics,
                    orderly: g.orderly,
                    locks: Vec::new(),
                },
            );
        }
        let offsets = &self.write.state().offsets;
        for name in offsets.groups()? {
            let mut topics: Vec<String> = offsets
                .list(&name, None)?
                .into_iter()
                .map(|o| o.topic)
                .collect();
            let g = by_name.entry(name.clone()).or_insert_with(|| GroupSummary {
                name,
                ..GroupSummary::default()
            });
            topics.append(&mut g.topics);
            topics.sort();
            topics.dedup();
            g.topics = topics;
        }
        let now = self.locks.clock_ms();
        for g in by_name.values_mut() {
            g.locks = self
                .locks
                .list(&g.name, now)?
                .into_iter()
                .map(|(l, remaining_ms)| QueueLockInfo {
                    topic: l.topic,
                    queue_id: l.queue_id,
                    holder: l.holder,
                    remaining_ms,
                })
                .collect();
        }
        Ok(ListGroupsResponse {
            groups: by_name.into_values().collect(),
        })
    }

    pub(super) async fn do_delete_group(
        &self,
        req: DeleteGroupRequest,
    ) -> Result<DeleteGroupResponse, ApiError> {
        validate_group_name(&req.group)?;
        self.write.require_writer()?;
        let members = self.groups.members(&req.group, Instant::now());
        if !members.is_empty() && !req.force {
            return Err(ApiError::invalid(format!(
                "group {} has {} live member(s) ({}); stop them first, or force",
                req.group,
                members.len(),
                members.join(", ")
            )));
        }
        let applied = self
            .write
            .apply(crate::state::delete_group_op(&req.group), now_ms())
            .await?;
        if applied == crate::state::Applied::Unchanged && members.is_empty() {
            return Err(ApiError::new(
                ErrorCode::GroupNotFound,
                format!("group {} has no offsets or settings here", req.group),
            ));
        }
        Ok(DeleteGroupResponse {})
    }

    pub(super) fn do_get_consumer_list(
        &self,
        req: GetConsumerListRequest,
    ) -> Result<GetConsumerListResponse, ApiError> {
        validate_group_name(&req.group)?;
        Ok(GetConsumerListResponse {
            client_ids: self.groups.members(&req.group, Instant::now()),
        })
    }

    pub(super) fn do_get_group_offsets(
        &self,
        req: GetGroupOffsetsRequest,
    ) -> Result<GetGroupOffsetsResponse, ApiError> {
        let topic = (!req.topic.is_empty()).then_some(req.topic.as_str());
        Ok(GetGroupOffsetsResponse {
            offsets: self
                .consuming
                .group_offsets(&req.group, topic)?
                .into_iter()
                .map(|o| OffsetEntry {
                    topic: o.topic,
                    queue_id: o.queue_id,
                    offset: o.offset,
                })
                .collect(),
        })
    }
}
