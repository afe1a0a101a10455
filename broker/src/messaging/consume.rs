//! Pull (long polling, read hints), committed offsets and queue positions, protocol-neutral:
//! commands and results are domain types; `service/consume.rs` converts `sluice.v1`.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::names::{validate_group_name, validate_topic_name};
use sluice_proto::record::DispatchView;
use sluice_proto::v1::TopicConfig;
use sluice_proto::{perm, ApiError, ErrorCode};
use tokio::sync::watch;

use super::filter::{Filters, PullFilter};
use super::read_hint::{Hint, PullFacts, ReadHints};
use super::WritePath;
use crate::state::topics::require;
use crate::state::{self, CommittedOffset};
use crate::store::{LogPlaced, MessageStore, QueueFilter, QueueRead, StoreError};

/// A store read of one queue: topic, queue, offset, max messages, max bytes, filter.
pub type QueueReader<R> = fn(
    &MessageStore,
    &str,
    u32,
    u64,
    usize,
    usize,
    Option<&QueueFilter<'_>>,
) -> Result<QueueRead<R>, StoreError>;

/// Consume-queue entries one filtered read looks at, and one pull in all before it answers
/// with the offset it reached (so a queue of messages nobody takes never holds a consumer).
pub const SCAN_PER_READ: usize = 4096;
pub const SCAN_PER_PULL: u64 = 64 * 1024;

pub const DEFAULT_MAX_MESSAGES: usize = 32;
pub const MAX_MESSAGES: usize = 4096;
pub const DEFAULT_MAX_BYTES: usize = 4 << 20;
pub const MAX_BYTES: usize = 32 << 20;

/// One pull.
#[derive(Debug, Clone)]
pub struct PullCommand {
    /// The consumer group (empty: none, e.g. an admin read).
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
    pub max_messages: usize,
    pub max_bytes: usize,
    /// How long to hold the pull when there is nothing to read.
    pub wait: Duration,
    /// What the subscription takes (None: everything).
    pub filter: Option<Arc<PullFilter>>,
}

/// What a pull read, and where the consumer should pull next (replica groups).
pub struct Pulled<R> {
    pub read: QueueRead<R>,
    pub hint: Option<Hint>,
}

/// Where a reset moves a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    Earliest,
    Latest,
    /// The first message stored at or after this time (ms since the epoch).
    Time(i64),
    /// This offset, clamped to each queue's range.
    Offset(u64),
}

/// One queue of a reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueReset {
    pub topic: String,
    pub queue_id: u32,
    /// The committed offset before (None: none).
    pub from: Option<u64>,
    pub to: u64,
}

/// Positions of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePositions {
    pub queue_id: u32,
    pub min_offset: u64,
    pub max_offset: u64,
    pub last_store_timestamp_ms: Option<i64>,
}

pub struct Consuming {
    store: MessageStore,
    write: WritePath,
    read_hints: ReadHints,
    replica_id: u64,
    /// Becomes true when the broker shuts down, ending held pulls.
    shutdown: watch::Receiver<bool>,
    filters: Filters,
    /// Counted only when the broker serves metrics.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Consuming {
    pub fn new(
        store: MessageStore,
        write: WritePath,
        read_hints: ReadHints,
        replica_id: u64,
        shutdown: watch::Receiver<bool>,
    ) -> Consuming {
        Consuming {
            store,
            write,
            read_hints,
            replica_id,
            shutdown,
            filters: Filters::default(),
            metrics: None,
        }
    }

    /// Counts into `metrics` (the broker's).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The compiled filters of subscriptions.
    pub fn filters(&self) -> &Filters {
        &self.filters
    }

    pub fn read_hints(&self) -> &ReadHints {
        &self.read_hints
    }

    fn topic(&self, name: &str) -> Result<TopicConfig, ApiError> {
        require(&self.write.state().topics, name)
    }

    /// The topic exists, is readable and has the queue.
    pub fn readable_queue(&self, topic: &str, queue_id: u32) -> Result<(), ApiError> {
        let t = self.topic(topic)?;
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

    /// Reads the queue with `read` until it has something, the hint sends the consumer
    /// elsewhere, the wait passes or the broker stops.
    pub async fn pull<R: LogPlaced>(
        &self,
        cmd: &PullCommand,
        read: QueueReader<R>,
    ) -> Result<Pulled<R>, ApiError> {
        let Some(metrics) = &self.metrics else {
            return self.pull_unmetered(cmd, read).await;
        };
        let started = std::time::Instant::now();
        let r = {
            // Counted down however the pull ends (a client that goes away drops it).
            let _held = crate::metrics::Held::new(&metrics.long_polls_held);
            self.pull_unmetered(cmd, read).await
        };
        if let Ok(p) = &r {
            let records = &p.read.records;
            let bytes = records.iter().map(|r| u64::from(r.store_size())).sum();
            metrics.served(&cmd.group, &cmd.topic, records.len() as u64, bytes);
            if cmd.filter.is_some() {
                let scanned = p.read.next_offset.saturating_sub(cmd.offset);
                metrics
                    .ops
                    .filtered(&cmd.group, &cmd.topic, scanned, records.len() as u64);
            }
        }
        metrics
            .pull_seconds
            .observe(started.elapsed().as_secs_f64());
        r
    }

    async fn pull_unmetered<R: LogPlaced>(
        &self,
        cmd: &PullCommand,
        read: QueueReader<R>,
    ) -> Result<Pulled<R>, ApiError> {
        if !cmd.group.is_empty() {
            validate_group_name(&cmd.group)?;
        }
        self.readable_queue(&cmd.topic, cmd.queue_id)?;
        let until = tokio::time::Instant::now() + cmd.wait;
        let mut dispatched = self.store.subscribe_dispatched();
        let mut shutdown = self.shutdown.clone();
        // A filtered read that took nothing still moves on: the pull goes on from there.
        let mut offset = cmd.offset;
        loop {
            // Mark the current position seen before reading, so a dispatch that lands after the
            // read still wakes us.
            dispatched.borrow_and_update();
            let (got, lacks_offset) = self.read_for_pull(cmd, offset, read)?;
            let skipped = got.records.is_empty() && got.next_offset > offset;
            offset = got.next_offset;
            let hint = self.write.group().map(|group| {
                self.read_hints.hint(
                    group,
                    &PullFacts {
                        group: &cmd.group,
                        topic: &cmd.topic,
                        queue_id: cmd.queue_id,
                        records: &got.records,
                        log_end: self.store.confirmed_offset(),
                        lacks_offset,
                        scanned_to: got.scanned_to.filter(|_| got.records.is_empty()),
                    },
                )
            });
            // Sent elsewhere with nothing to read here: answer now, the other replica has it.
            let redirected = hint.is_some_and(|h| h.redirects(self.replica_id));
            // Skipped messages are answered at once when the scan reaches the end (or its
            // budget), not held for the poll: the consumer commits past them, so its lag
            // stays true.
            let moved = offset > cmd.offset;
            let scanned_enough = offset.saturating_sub(cmd.offset) >= SCAN_PER_PULL;
            let done = !got.records.is_empty()
                || redirected
                || scanned_enough
                || (moved && !skipped)
                || tokio::time::Instant::now() >= until
                || *shutdown.borrow();
            if done {
                self.read_hints.served(&got.records, hint, self.replica_id);
                return Ok(Pulled { read: got, hint });
            }
            if skipped {
                // More may be there already: look before waiting (after letting other tasks
                // run: each read is a synchronous scan of up to SCAN_PER_READ entries).
                tokio::task::yield_now().await;
                continue;
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
        cmd: &PullCommand,
        offset: u64,
        read: QueueReader<R>,
    ) -> Result<(QueueRead<R>, bool), ApiError> {
        let keep = |v: &DispatchView<'_>| cmd.filter.as_ref().is_none_or(|f| f.keep(v));
        let filter = cmd.filter.as_ref().map(|f| QueueFilter {
            tag_hashes: f.tag_hashes(),
            keep: &keep,
            scan_limit: SCAN_PER_READ,
        });
        let got = read(
            &self.store,
            &cmd.topic,
            cmd.queue_id,
            offset,
            cmd.max_messages,
            cmd.max_bytes,
            filter.as_ref(),
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

    /// Commits a group's offsets: durable (flushed standalone, in a quorum's log in a group)
    /// and applied here when it returns.
    /// `reset_epoch`: the group's reset epoch the committer knows; a commit from before a
    /// reset is ignored (None: no check). `lock_owner`: an ordered consumer; only queues whose
    /// lock it holds move ("": no check).
    pub async fn commit_offsets(
        &self,
        group: &str,
        entries: &[CommittedOffset],
        reset_epoch: Option<u64>,
        lock_owner: &str,
        now: i64,
    ) -> Result<(), ApiError> {
        validate_group_name(group)?;
        if lock_owner.len() > state::locks::MAX_CLIENT_ID {
            return Err(ApiError::invalid("lock_owner is longer than a client id"));
        }
        for e in entries {
            validate_topic_name(&e.topic)?;
        }
        self.write
            .apply(
                state::commit_offsets_at(group, entries, reset_epoch, lock_owner),
                now,
            )
            .await?;
        Ok(())
    }

    /// The group's reset epoch here (0: never reset).
    pub fn reset_epoch(&self, group: &str) -> Result<u64, ApiError> {
        Ok(self.write.state().offsets.reset_epoch(group)?)
    }

    /// Moves `group`'s offsets on `topic` (None: every topic it has offsets for here, but
    /// its retry topic) to `to`, through the log (one entry, which also raises the group's
    /// reset epoch so live consumers reload and their older commits are ignored). With
    /// `dry_run`, only says what would change. The master decides.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: Option<&str>,
        to: ResetTarget,
        dry_run: bool,
        now: i64,
    ) -> Result<(Vec<QueueReset>, u64), ApiError> {
        validate_group_name(group)?;
        self.write.require_writer()?;
        let offsets = &self.write.state().offsets;
        let topics: Vec<String> = match topic {
            Some(t) => vec![t.to_string()],
            None => {
                let mut ts: Vec<String> = offsets
                    .list(group, None)?
                    .into_iter()
                    .map(|o| o.topic)
                    .filter(|t| !sluice_proto::names::is_retry_topic(t))
                    .collect();
                ts.dedup();
                ts
            }
        };
        if topics.is_empty() {
            return Err(ApiError::new(
                ErrorCode::GroupNotFound,
                format!("group {group} has no committed offsets here; name the topic to reset"),
            ));
        }
        let mut plan = Vec::new();
        for t in &topics {
            validate_topic_name(t)?;
            let cfg = match self.topic(t) {
                Ok(cfg) => cfg,
                // Offsets left by a deleted topic: nothing to move there.
                Err(e) if topic.is_none() && e.code == ErrorCode::TopicNotFound => continue,
                Err(e) => return Err(e),
            };
            for q in 0..cfg.read_queues {
                let (min, max) = self.store.queue_offsets(t, q);
                let to = match to {
                    ResetTarget::Earliest => min,
                    ResetTarget::Latest => max,
                    ResetTarget::Time(ms) => self.store.offset_for_timestamp(t, q, ms),
                    ResetTarget::Offset(o) => o.clamp(min, max),
                };
                plan.push(QueueReset {
                    topic: t.clone(),
                    queue_id: q,
                    from: offsets.get(group, t, q)?,
                    to,
                });
            }
        }
        if !dry_run {
            let entries: Vec<CommittedOffset> = plan
                .iter()
                .map(|p| CommittedOffset {
                    topic: p.topic.clone(),
                    queue_id: p.queue_id,
                    offset: p.to,
                })
                .collect();
            self.write
                .apply(state::reset_offsets_op(group, &entries), now)
                .await?;
        }
        Ok((plan, offsets.reset_epoch(group)?))
    }

    pub fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
    ) -> Result<Option<u64>, ApiError> {
        validate_group_name(group)?;
        validate_topic_name(topic)?;
        Ok(self.write.state().offsets.get(group, topic, queue_id)?)
    }

    /// Every committed offset of a group, optionally of one topic.
    pub fn group_offsets(
        &self,
        group: &str,
        topic: Option<&str>,
    ) -> Result<Vec<CommittedOffset>, ApiError> {
        validate_group_name(group)?;
        if let Some(t) = topic {
            validate_topic_name(t)?;
        }
        Ok(self.write.state().offsets.list(group, topic)?)
    }

    /// Positions of every queue of a topic.
    pub fn queue_positions(&self, topic: &str) -> Result<Vec<QueuePositions>, ApiError> {
        let t = self.topic(topic)?;
        Ok((0..t.read_queues.max(t.write_queues))
            .map(|q| {
                let (min_offset, max_offset) = self.store.queue_offsets(&t.name, q);
                QueuePositions {
                    queue_id: q,
                    min_offset,
                    max_offset,
                    last_store_timestamp_ms: self.store.last_store_timestamp(&t.name, q),
                }
            })
            .collect())
    }

    /// The first offset of a queue stored at or after `timestamp_ms`.
    pub fn offset_at(
        &self,
        topic: &str,
        queue_id: u32,
        timestamp_ms: i64,
    ) -> Result<u64, ApiError> {
        self.readable_queue(topic, queue_id)?;
        Ok(self
            .store
            .offset_for_timestamp(topic, queue_id, timestamp_ms))
    }
}
