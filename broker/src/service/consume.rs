//! Pull with long polling, committed offsets, consumer-group membership.

use std::time::{Duration, Instant};

use sluice_proto::names::{validate_group_name, validate_topic_name};
use sluice_proto::v1::*;
use sluice_proto::{perm, record, ApiError, ErrorCode};

use super::convert::{now_ms, to_wire};
use super::read_hint::{Hint, PullFacts};
use super::BrokerService;
use crate::state::topics::require;
use crate::state::{self, CommittedOffset};
use crate::store::{LogPlaced, MessageStore, QueueRead, StoreError};

/// A store read of one queue: topic, queue, offset, max messages, max bytes.
type QueueReader<R> =
    fn(&MessageStore, &str, u32, u64, usize, usize) -> Result<QueueRead<R>, StoreError>;

const DEFAULT_MAX_MESSAGES: usize = 32;
const MAX_MESSAGES: usize = 4096;
const DEFAULT_MAX_BYTES: usize = 4 << 20;
const MAX_BYTES: usize = 32 << 20;
/// Answer this much before the caller's deadline so the reply is not lost to the timeout.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

impl BrokerService {
    fn readable_queue(&self, topic: &str, queue_id: u32) -> Result<(), ApiError> {
        let t = require(&self.topics, topic)?;
        if t.perm & perm::READ == 0 {
            return Err(ApiError::new(
                ErrorCode::NoPermission,
                format!("topic {topic} is not readable"),
            ));
        }
        if queue_id >= t.read_queues {
            return Err(ApiError::new(
                ErrorCode::QueueNotFound,
                format!(
                    "queue {queue_id} does not exist: topic {topic} has {} read queues",
                    t.read_queues
                ),
            ));
        }
        Ok(())
    }

    pub(super) async fn do_pull(
        &self,
        req: PullRequest,
        deadline: Option<Duration>,
    ) -> Result<PullResponse, ApiError> {
        if !req.group.is_empty() {
            validate_group_name(&req.group)?;
        }
        self.readable_queue(&req.topic, req.queue_id)?;
        let max_messages = match req.max_messages as usize {
            0 => DEFAULT_MAX_MESSAGES,
            n => n.min(MAX_MESSAGES),
        };
        let max_bytes = match req.max_bytes as usize {
            0 => DEFAULT_MAX_BYTES,
            n => n.min(MAX_BYTES),
        };
        let mut wait = Duration::from_millis(req.poll_timeout_ms as u64).min(self.limits.max_poll);
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_sub(DEADLINE_MARGIN));
        }
        let until = tokio::time::Instant::now() + wait;
        let limits = (max_messages, max_bytes);
        // Raw records only for a client that parses the format the log is written in; others
        // (built before the format changed) get decoded messages.
        if req.raw_records && req.record_format >= record::RECORD_FORMAT {
            let (read, hint) = self
                .pull_until(&req, limits, until, MessageStore::read_queue_raw)
                .await?;
            return Ok(PullResponse {
                messages: Vec::new(),
                records: read.records.into_iter().map(|r| r.bytes).collect(),
                next_offset: read.next_offset,
                min_offset: read.min_offset,
                max_offset: read.max_offset,
                hint: hint.map(Into::into),
            });
        }
        let (read, hint) = self
            .pull_until(&req, limits, until, MessageStore::read_queue)
            .await?;
        Ok(PullResponse {
            messages: read.records.into_iter().map(to_wire).collect(),
            records: Vec::new(),
            next_offset: read.next_offset,
            min_offset: read.min_offset,
            max_offset: read.max_offset,
            hint: hint.map(Into::into),
        })
    }

    /// Reads the queue with `read` until it has something, the hint sends the consumer
    /// elsewhere, `until` passes or the broker stops; returns the read and its hint.
    async fn pull_until<R: LogPlaced>(
        &self,
        req: &PullRequest,
        (max_messages, max_bytes): (usize, usize),
        until: tokio::time::Instant,
        read: QueueReader<R>,
    ) -> Result<(QueueRead<R>, Option<Hint>), ApiError> {
        let mut dispatched = self.store.subscribe_dispatched();
        let mut shutdown = self.shutdown.clone();
        loop {
            // Mark the current position seen before reading, so a dispatch that lands after the
            // read still wakes us.
            dispatched.borrow_and_update();
            let (got, lacks_offset) = self.read_for_pull(req, max_messages, max_bytes, read)?;
            let hint = self.write.group().map(|group| {
                self.read_hints.hint(
                    group,
                    &PullFacts {
                        group: &req.group,
                        topic: &req.topic,
                        queue_id: req.queue_id,
                        records: &got.records,
                        log_end: self.store.confirmed_offset(),
                        lacks_offset,
                    },
                )
            });
            // Sent elsewhere with nothing to read here: answer now, the other replica has it.
            let redirected = hint.is_some_and(|h| h.redirects(self.identity.replica_id));
            let done = !got.records.is_empty()
                || redirected
                || tokio::time::Instant::now() >= until
                || *shutdown.borrow();
            if done {
                self.read_hints
                    .served(&got.records, hint, self.identity.replica_id);
                return Ok((got, hint));
            }
            tokio::select! {
                r = dispatched.changed() => if r.is_err() {
                    return Err(ApiError::new(ErrorCode::Unavailable, "store is shutting down"));
                },
                _ = tokio::time::sleep_until(until) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Reads for a pull. A replica that is not the master and does not have the offset yet
    /// (past its queue's end: it is behind the master) answers with nothing and `true`, so the
    /// consumer goes back to the master instead of being told its offset is invalid: only the
    /// master, which has every committed entry, may move a consumer's offset forward.
    fn read_for_pull<R>(
        &self,
        req: &PullRequest,
        max_messages: usize,
        max_bytes: usize,
        read: QueueReader<R>,
    ) -> Result<(QueueRead<R>, bool), ApiError> {
        let got = read(
            &self.store,
            &req.topic,
            req.queue_id,
            req.offset,
            max_messages,
            max_bytes,
        );
        let not_master = self
            .write
            .group()
            .is_some_and(|g| !g.master_state().is_master);
        match got {
            Ok(r) => Ok((r, false)),
            Err(StoreError::OffsetOutOfRange { offset, min, max })
                if not_master && offset > max =>
            {
                Ok((QueueRead::empty(offset, min, max), true))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn do_commit_offsets(
        &self,
        req: CommitOffsetsRequest,
    ) -> Result<CommitOffsetsResponse, ApiError> {
        validate_group_name(&req.group)?;
        let mut entries = Vec::with_capacity(req.offsets.len());
        for o in req.offsets {
            validate_topic_name(&o.topic)?;
            entries.push(CommittedOffset {
                topic: o.topic,
                queue_id: o.queue_id,
                offset: o.offset,
            });
        }
        // The ack promises durability: a committed offset survives kill -9 (flushed
        // standalone, in a quorum's log in a group) and is applied here before the answer.
        self.write
            .apply(state::commit_offsets_op(&req.group, &entries), now_ms())
            .await?;
        Ok(CommitOffsetsResponse {})
    }

    pub(super) fn do_query_offset(
        &self,
        req: QueryOffsetRequest,
    ) -> Result<QueryOffsetResponse, ApiError> {
        validate_group_name(&req.group)?;
        validate_topic_name(&req.topic)?;
        Ok(
            match self.offsets().get(&req.group, &req.topic, req.queue_id)? {
                Some(offset) => QueryOffsetResponse {
                    found: true,
                    offset,
                },
                None => QueryOffsetResponse {
                    found: false,
                    offset: 0,
                },
            },
        )
    }

    pub(super) fn do_get_queue_offsets(
        &self,
        req: GetQueueOffsetsRequest,
    ) -> Result<GetQueueOffsetsResponse, ApiError> {
        let t = require(&self.topics, &req.topic)?;
        let queues = (0..t.read_queues.max(t.write_queues))
            .map(|q| {
                let (min_offset, max_offset) = self.store.queue_offsets(&t.name, q);
                QueueOffsets {
                    queue_id: q,
                    min_offset,
                    max_offset,
                    last_store_timestamp_ms: self
                        .store
                        .last_store_timestamp(&t.name, q)
                        .unwrap_or(0),
                }
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
        self.readable_queue(&req.topic, req.queue_id)?;
        Ok(SearchOffsetResponse {
            offset: self
                .store
                .offset_for_timestamp(&req.topic, req.queue_id, req.timestamp_ms),
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
        for s in req.subscriptions {
            validate_group_name(&s.group)?;
            for t in &s.topics {
                validate_topic_name(t)?;
            }
            self.groups
                .heartbeat(&s.group, &req.client_id, s.topics, now);
        }
        Ok(ConsumerHeartbeatResponse {
            expiry_ms: self.groups.expiry().as_millis() as u64,
        })
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
        validate_group_name(&req.group)?;
        let topic = if req.topic.is_empty() {
            None
        } else {
            validate_topic_name(&req.topic)?;
            Some(req.topic.as_str())
        };
        Ok(GetGroupOffsetsResponse {
            offsets: self
                .offsets()
                .list(&req.group, topic)?
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
