//! Consumer retries and dead letters (ARCHITECTURE.md, "Retries and dead letters").
//!
//! A consumer sends a failed message back by reference: the broker copies the record from
//! its own log. Until the group's retries are spent the copy is a delayed message for the
//! group's retry topic `%RETRY%<group>` (due after the group's backoff for that attempt,
//! carrying its reconsume count and where it came from); after that it goes to the group's
//! dead-letter topic `%DLQ%<group>` with the last failure. Consumers of a group read its retry
//! topic without being told. Redrive sends dead letters back to their original topic with a
//! fresh budget; a dead letter counts as redriven once a newer record carries its id.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use sluice_proto::names::{
    dlq_topic, retry_topic, validate_group_name, validate_topic_name, DLQ_PREFIX, RETRY_PREFIX,
};
use sluice_proto::props::{self, cut, FAILURE, ORIGIN_QUEUE, ORIGIN_TOPIC, REDRIVE_OF};
use sluice_proto::record::{SYS_FLAGS_SYSTEM, SYS_FLAGS_TIMER, SYS_FLAG_TIMER_FIRED};
use sluice_proto::v1::send_back_response::Outcome;
use sluice_proto::v1::{GroupConfig, TopicConfig};
use sluice_proto::{perm, ApiError, ErrorCode};

use super::timer::{scheduled_batch, Timers};
use super::WritePath;
use crate::state::{self, groups};
use crate::store::{AppendBatch, AppendMessage, MessageStore, StoreError, StoredRecord};

/// Longest failure text kept with a dead letter.
pub const MAX_FAILURE_LEN: usize = 1024;
/// Most dead letters one redrive looks at.
const REDRIVE_SCAN: usize = 100_000;

/// What a send-back did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentBack {
    pub outcome: Outcome,
    pub reconsume_times: u32,
    pub deliver_at_ms: i64,
}

pub struct Retries {
    store: MessageStore,
    write: WritePath,
    timers: Arc<Timers>,
    /// Counted only when the broker serves metrics.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// A message a consumer failed to process, sent back.
#[derive(Clone, Copy)]
pub struct SendBack<'a> {
    pub group: &'a str,
    /// Where the message is in the commit log.
    pub phy: u64,
    pub message_id: &'a str,
    /// 0: the group's backoff.
    pub delay_ms: u64,
    pub reason: &'a str,
    /// An ordered consumer retried it in place this many times: to the dead-letter topic now.
    pub dead_letter_after: Option<u32>,
    /// Whether the caller may read the message's topic (its original one, for a retry):
    /// sending back copies the message where the group can read it.
    pub may_read: &'a (dyn Fn(&str) -> Result<(), ApiError> + Sync),
}

impl Retries {
    pub fn new(store: MessageStore, write: WritePath, timers: Arc<Timers>) -> Retries {
        Retries {
            store,
            write,
            timers,
            metrics: None,
        }
    }

    /// Counts into `metrics` (the broker's).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn read(&self, phy: u64) -> Result<StoredRecord, ApiError> {
        let store = self.store.clone();
        let r = tokio::task::spawn_blocking(move || store.read_at(phy))
            .await
            .map_err(|e| ApiError::internal(format!("read task failed: {e}")))?;
        match r {
            Ok(r) => Ok(r),
            Err(StoreError::OffsetOutOfRange { .. }) => Err(ApiError::new(
                ErrorCode::MessageNotFound,
                format!("no message at commit-log offset {phy} (deleted by retention?)"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a group's retry or dead-letter topic (one queue) if it is missing.
    async fn ensure_topic(&self, name: &str, now: i64) -> Result<(), ApiError> {
        validate_topic_name(name)?;
        if self.write.state().topics.get(name).is_some() {
            return Ok(());
        }
        let cfg = TopicConfig {
            name: name.to_string(),
            read_queues: 1,
            write_queues: 1,
            perm: perm::READ_WRITE,
        };
        super::produce::upsert_topic(&self.write, cfg, now).await?;
        Ok(())
    }

    /// Sends the message at `phy` (id `message_id`) back for `group`.
    pub async fn send_back(&self, cmd: SendBack<'_>, now: i64) -> Result<SentBack, ApiError> {
        let SendBack {
            group,
            phy,
            message_id,
            delay_ms,
            reason,
            dead_letter_after,
            may_read,
        } = cmd;
        validate_group_name(group)?;
        self.write.require_writer()?;
        let r = self.read(phy).await?;
        if r.message_id != message_id {
            // Which message is there is not told: the caller may not be allowed to see it.
            return Err(ApiError::invalid(format!(
                "the message at offset {phy} is not {message_id}"
            )));
        }
        // The broker's own topics are never delivered (a retry or dead-letter topic's messages
        // are): sent back, a half message of an open or rolled-back transaction would be.
        let internal = props::is_internal_topic(&r.topic)
            && !r.topic.starts_with(RETRY_PREFIX)
            && !r.topic.starts_with(DLQ_PREFIX);
        if r.sys_flag & (SYS_FLAGS_SYSTEM | (SYS_FLAGS_TIMER & !SYS_FLAG_TIMER_FIRED)) != 0
            || internal
        {
            return Err(ApiError::invalid(format!(
                "offset {phy} holds a record of the broker's, not a delivered message"
            )));
        }
        let policy = self.write.state().retry_policy(group)?;
        let attempts = match dead_letter_after {
            Some(n) => n.max(r.reconsume_times.saturating_add(1)),
            None => r.reconsume_times.saturating_add(1),
        };
        let origin_topic = props::get(&r.properties, ORIGIN_TOPIC)
            .unwrap_or(&r.topic)
            .to_string();
        may_read(&origin_topic)?;
        let origin_queue = props::get(&r.properties, ORIGIN_QUEUE)
            .map(str::to_string)
            .unwrap_or_else(|| r.queue_id.to_string());
        let mut m = copy(r);
        m.reconsume_times = attempts;
        m.properties.push((ORIGIN_TOPIC.into(), origin_topic));
        m.properties.push((ORIGIN_QUEUE.into(), origin_queue));
        if dead_letter_after.is_some() || attempts > policy.max_retries {
            let dlq = dlq_topic(group);
            self.ensure_topic(&dlq, now).await?;
            m.properties
                .push((FAILURE.into(), cut(reason, MAX_FAILURE_LEN).to_string()));
            let batch = AppendBatch {
                topic: dlq,
                queue_id: 0,
                messages: vec![m],
            };
            self.write.append(batch, now).await?;
            if let Some(m) = &self.metrics {
                m.count_sent_back(group, true);
            }
            return Ok(SentBack {
                outcome: Outcome::DeadLetter,
                reconsume_times: attempts,
                deliver_at_ms: 0,
            });
        }
        let retry = retry_topic(group);
        self.ensure_topic(&retry, now).await?;
        self.timers.check_room(1)?;
        let delay = if delay_ms > 0 {
            delay_ms.min(self.timers.settings.max_delay.as_millis() as u64)
        } else {
            policy.delay_ms(attempts)
        };
        let due = now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
        self.write
            .append(scheduled_batch(&retry, 0, vec![(m, due)]), now)
            .await?;
        if let Some(m) = &self.metrics {
            m.count_sent_back(group, false);
        }
        Ok(SentBack {
            outcome: Outcome::Retry,
            reconsume_times: attempts,
            deliver_at_ms: due,
        })
    }

    pub fn group_config(&self, group: &str) -> Result<GroupConfig, ApiError> {
        validate_group_name(group)?;
        Ok(self.write.state().retry_policy(group)?.to_config(group))
    }

    /// Merges `update` (0 / empty: keep) into the group's config.
    pub async fn update_group_config(
        &self,
        update: GroupConfig,
        now: i64,
    ) -> Result<GroupConfig, ApiError> {
        self.write.require_writer()?;
        let max_delay = self.timers.settings.max_delay.as_millis() as u64;
        groups::validate(&update, max_delay)?;
        let mut cfg = self.group_config(&update.group)?;
        if update.max_retries != 0 {
            cfg.max_retries = update.max_retries;
        }
        if !update.backoff_ms.is_empty() {
            cfg.backoff_ms = update.backoff_ms;
        }
        self.write
            .apply(state::set_group_config_op(cfg.clone()), now)
            .await?;
        Ok(cfg)
    }

    /// Sends the group's dead letters named by `ids` (or all with `all`) that were not
    /// redriven yet back to their original topics. Returns (redriven, skipped).
    pub async fn redrive(
        &self,
        group: &str,
        ids: &[String],
        all: bool,
        now: i64,
    ) -> Result<(u32, u32), ApiError> {
        validate_group_name(group)?;
        self.write.require_writer()?;
        if ids.is_empty() && !all {
            return Err(ApiError::invalid("name dead letters by id, or ask for all"));
        }
        let dlq = dlq_topic(group);
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let store = self.store.clone();
        let found = tokio::task::spawn_blocking(move || scan_dead_letters(&store, &dlq))
            .await
            .map_err(|e| ApiError::internal(format!("dead-letter scan failed: {e}")))??;
        let mut batches: BTreeMap<(String, u32), Vec<AppendMessage>> = BTreeMap::new();
        let mut redriven = 0u32;
        let mut matched: HashSet<String> = HashSet::new();
        for r in found {
            if !(all || wanted.contains(r.message_id.as_str())) {
                continue;
            }
            matched.insert(r.message_id.clone());
            let Some(topic) = props::get(&r.properties, ORIGIN_TOPIC).map(str::to_string) else {
                continue;
            };
            let Some(cfg) = self.write.state().topics.get(&topic) else {
                tracing::warn!(topic, id = %r.message_id, "dead letter's topic is gone; not redriven");
                continue;
            };
            let queue = props::get(&r.properties, ORIGIN_QUEUE)
                .and_then(|q| q.parse::<u32>().ok())
                .filter(|q| *q < cfg.write_queues)
                .unwrap_or(0);
            let phy = r.commit_log_offset;
            let mut m = copy(r);
            m.reconsume_times = 0;
            m.properties.push((REDRIVE_OF.into(), phy.to_string()));
            batches.entry((topic, queue)).or_default().push(m);
            redriven += 1;
        }
        for ((topic, queue_id), messages) in batches {
            self.write
                .append(
                    AppendBatch {
                        topic,
                        queue_id,
                        messages,
                    },
                    now,
                )
                .await?;
        }
        let skipped = if all {
            0
        } else {
            wanted.iter().filter(|id| !matched.contains(**id)).count() as u32
        };
        Ok((redriven, skipped))
    }
}

/// The message of a record, without the broker's routing properties (a new copy gets its own).
fn copy(mut r: StoredRecord) -> AppendMessage {
    let properties = std::mem::take(&mut r.properties)
        .into_iter()
        .filter(|(k, _)| !k.starts_with(props::RESERVED_PREFIX))
        .collect();
    r.into_message(properties, 0)
}

/// Dead letters of a DLQ topic not redriven yet: those still the newest record of their id.
fn scan_dead_letters(store: &MessageStore, dlq: &str) -> Result<Vec<StoredRecord>, StoreError> {
    let (min, max) = store.queue_offsets(dlq, 0);
    let mut out = Vec::new();
    let mut at = min;
    while at < max && out.len() < REDRIVE_SCAN {
        let read = match store.read_queue(dlq, 0, at, 1024, 16 << 20) {
            Ok(r) => r,
            Err(StoreError::OffsetOutOfRange { min, .. }) if min > at => {
                at = min;
                continue;
            }
            Err(e) => return Err(e),
        };
        if read.records.is_empty() {
            break;
        }
        at = read.next_offset;
        for r in read.records {
            let newest = store.get_by_id(&r.message_id)?;
            if newest.is_some_and(|n| n.commit_log_offset == r.commit_log_offset) {
                out.push(r);
            }
        }
    }
    Ok(out)
}
