//! Send, protocol-neutral: a batch of messages for one queue of a topic, immediate or delayed,
//! validated, the topic auto-created when allowed, written through the write path. Wire APIs
//! (`service/produce.rs` for `sluice.v1`, the data port) convert to and from these types.

use std::sync::Arc;

use sluice_proto::names::validate_topic_name;
use sluice_proto::props;
use sluice_proto::trace::TRACE_TOPIC;
use sluice_proto::v1::TopicConfig;
use sluice_proto::{perm, ApiError, ErrorCode};

use super::idempotence::{AckAt, Idempotence, Sequence};
use super::timer::{self, Delay, Timers};
use super::txn::{Transactions, TxSend};
use super::WritePath;
use crate::state;
use crate::state::topics;
use crate::store::{AppendBatch, AppendMessage};

/// Most messages accepted in one send.
pub const MAX_BATCH: usize = 10_000;

/// A message to send and when it is to be delivered.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub message: AppendMessage,
    pub delay: Delay,
}

/// What the broker stored for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub message_id: String,
    /// For a delayed message: its position on the `%TIMER%` queue.
    pub queue_offset: u64,
    pub commit_log_offset: u64,
    /// A delayed message's cancel handle and due time.
    pub delayed: Option<(String, i64)>,
    /// The store time sealed into the record (for a retry answered from an earlier store:
    /// that store's).
    pub store_timestamp_ms: i64,
}

fn receipts(ids: Vec<String>, entries: Vec<crate::store::Appended>) -> Vec<Receipt> {
    ids.into_iter()
        .zip(entries)
        .map(|(message_id, a)| Receipt {
            message_id,
            queue_offset: a.queue_offset,
            commit_log_offset: a.commit_log_offset,
            delayed: None,
            store_timestamp_ms: a.store_timestamp_ms,
        })
        .collect()
}

/// Settings of the send path.
#[derive(Debug, Clone)]
pub struct SendSettings {
    pub auto_create_topics: bool,
    pub default_queues: u32,
    pub broker_name: String,
    /// Whether sends to the trace topic are taken.
    pub accept_traces: bool,
}

pub struct Producing {
    write: WritePath,
    timers: Arc<Timers>,
    idempotence: Arc<Idempotence>,
    transactions: Arc<Transactions>,
    settings: SendSettings,
    /// Counted only when the broker serves metrics.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// Creates or updates a topic (through the log on a replica group); true when it changed.
pub async fn upsert_topic(write: &WritePath, cfg: TopicConfig, now: i64) -> Result<bool, ApiError> {
    write.require_writer()?;
    topics::validate(&cfg)?;
    if write.state().topics.get(&cfg.name).as_ref() == Some(&cfg) {
        return Ok(false);
    }
    Ok(write.apply(state::upsert_topic_op(cfg), now).await? == state::Applied::Changed)
}

impl Producing {
    pub fn new(
        write: WritePath,
        timers: Arc<Timers>,
        idempotence: Arc<Idempotence>,
        transactions: Arc<Transactions>,
        settings: SendSettings,
    ) -> Producing {
        Producing {
            write,
            timers,
            idempotence,
            transactions,
            settings,
            metrics: None,
        }
    }

    /// Counts into `metrics` (the broker's).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn transactions(&self) -> &Arc<Transactions> {
        &self.transactions
    }

    pub fn idempotence(&self) -> &Arc<Idempotence> {
        &self.idempotence
    }

    /// Stores `messages` in queue `queue_id` of `topic`, atomically: all are stored or none.
    /// Either every message is delayed (each with its own due time) or none is. With `seq`
    /// (an idempotent producer), a batch stored before is answered with its first receipts.
    /// With `tx`, the messages are a transaction's half messages, visible once it commits.
    pub async fn send(
        &self,
        topic: &str,
        queue_id: u32,
        messages: Vec<Outgoing>,
        seq: Option<Sequence>,
        tx: Option<TxSend>,
        now: i64,
    ) -> Result<Vec<Receipt>, ApiError> {
        let Some(metrics) = &self.metrics else {
            return self
                .send_unmetered(topic, queue_id, messages, seq, tx, now)
                .await;
        };
        let started = std::time::Instant::now();
        let count = messages.len() as u64;
        let bytes: u64 = messages.iter().map(|o| o.message.body.len() as u64).sum();
        let r = self
            .send_unmetered(topic, queue_id, messages, seq, tx, now)
            .await;
        match &r {
            Ok(_) => metrics.sent(topic, count, bytes),
            Err(e) => {
                let code = crate::metrics::CodeLabels {
                    code: e.code.as_str_name().to_string(),
                };
                metrics.send_errors.get_or_create(&code).inc();
            }
        }
        metrics
            .send_seconds
            .observe(started.elapsed().as_secs_f64());
        r
    }

    async fn send_unmetered(
        &self,
        topic: &str,
        queue_id: u32,
        messages: Vec<Outgoing>,
        seq: Option<Sequence>,
        tx: Option<TxSend>,
        now: i64,
    ) -> Result<Vec<Receipt>, ApiError> {
        validate_topic_name(topic)?;
        if messages.is_empty() {
            return Err(ApiError::invalid("a send needs at least one message"));
        }
        if messages.len() > MAX_BATCH {
            return Err(ApiError::invalid(format!(
                "a batch holds at most {MAX_BATCH} messages, got {}",
                messages.len()
            )));
        }
        if props::is_internal_topic(topic) {
            return Err(ApiError::new(
                ErrorCode::NoPermission,
                format!("topic {topic} is the broker's own; producers cannot send to it"),
            ));
        }
        if topic == TRACE_TOPIC && !self.settings.accept_traces {
            return Err(super::trace::refused());
        }
        let cfg = self.topic_for_send(topic, now).await?;
        if cfg.perm & perm::WRITE == 0 {
            return Err(ApiError::new(
                ErrorCode::NoPermission,
                format!("topic {topic} is not writable"),
            ));
        }
        if queue_id >= cfg.write_queues {
            return Err(ApiError::new(
                ErrorCode::QueueNotFound,
                format!(
                    "queue {queue_id} does not exist: topic {topic} has {} write queues",
                    cfg.write_queues
                ),
            ));
        }
        let mut plain = Vec::with_capacity(messages.len());
        let mut delayed = Vec::new();
        for o in messages {
            match self.timers.settings.due_time(o.delay, now)? {
                Some(due) => delayed.push((o.message, due)),
                None => plain.push(o.message),
            }
        }
        if let Some(tx) = tx {
            if !delayed.is_empty() {
                return Err(ApiError::invalid(
                    "a transaction's messages cannot be delayed",
                ));
            }
            return self.send_half(topic, queue_id, &tx, plain, seq, now).await;
        }
        if !delayed.is_empty() {
            if !plain.is_empty() {
                return Err(ApiError::invalid(
                    "a batch mixes delayed and immediate messages: send them in separate batches",
                ));
            }
            return self.send_delayed(topic, queue_id, delayed, seq, now).await;
        }
        let batch = AppendBatch {
            topic: topic.to_string(),
            queue_id,
            messages: plain,
        };
        let (ids, entries, _) = self
            .append(topic, queue_id, batch, seq, now, AckAt::Committed)
            .await?;
        Ok(receipts(ids, entries))
    }

    /// Stores a transaction's half messages (invisible until it commits).
    async fn send_half(
        &self,
        topic: &str,
        queue_id: u32,
        tx: &TxSend,
        messages: Vec<AppendMessage>,
        seq: Option<Sequence>,
        now: i64,
    ) -> Result<Vec<Receipt>, ApiError> {
        let bytes: u64 = messages
            .iter()
            .map(|m| crate::store::record::payload_size(m) as u64)
            .sum();
        let _sending = self.transactions.begin_send(tx)?;
        self.transactions
            .check_send(tx, messages.len(), bytes, now)?;
        let (count, first_id) = (
            messages.len(),
            messages
                .first()
                .map(|m| m.message_id.clone())
                .unwrap_or_default(),
        );
        let batch = Transactions::half_batch(topic, queue_id, tx, messages);
        let (ids, entries) = match seq {
            Some(_) => {
                // The end reads the transaction's state: answered once it is applied.
                let (ids, entries, _) = self
                    .append(topic, queue_id, batch, seq, now, AckAt::Applied)
                    .await?;
                self.transactions
                    .check_joined(tx, topic, queue_id, &first_id, count)?;
                (ids, entries)
            }
            None => {
                let refused = |e| match e {
                    super::Announced::NotStored(e) => e,
                    super::Announced::StoredUnapplied(e) => ApiError::new(
                        ErrorCode::Unavailable,
                        format!("stored, but not added to its transaction: {e}"),
                    ),
                };
                let acked = self
                    .write
                    .append_announced_acked(&batch, now)
                    .await
                    .map_err(refused)?;
                let kept = acked.clone();
                let entries = self.write.then_applied(acked).await.map_err(refused)?;
                // A send left out of its transaction is not kept for its commit.
                self.transactions
                    .check_joined(tx, topic, queue_id, &first_id, count)?;
                self.transactions.keep_sent(&kept, &batch);
                let ids = batch.messages.into_iter().map(|m| m.message_id).collect();
                (ids, entries)
            }
        };
        Ok(receipts(ids, entries))
    }

    /// Stores delayed messages as scheduled records; the master's timer task delivers them.
    async fn send_delayed(
        &self,
        topic: &str,
        queue_id: u32,
        messages: Vec<(AppendMessage, i64)>,
        seq: Option<Sequence>,
        now: i64,
    ) -> Result<Vec<Receipt>, ApiError> {
        self.timers.check_room(messages.len())?;
        let mut due: Vec<i64> = messages.iter().map(|(_, d)| *d).collect();
        let batch = timer::scheduled_batch(topic, queue_id, messages);
        // A cancel may follow at once and reads the timer's state: answered once applied.
        let (ids, entries, duplicate) = self
            .append(topic, queue_id, batch, seq, now, AckAt::Applied)
            .await?;
        if duplicate {
            // The due times of the first attempt, not the ones this retry computed.
            for (d, a) in due.iter_mut().zip(&entries) {
                let stored = self.idempotence.store().read_at(a.commit_log_offset)?;
                if let Some(at) =
                    props::get(&stored.properties, props::DELIVER_AT).and_then(|v| v.parse().ok())
                {
                    *d = at;
                }
            }
        }
        let broker = &self.settings.broker_name;
        Ok(ids
            .into_iter()
            .zip(entries)
            .zip(due)
            .map(|((message_id, a), due)| Receipt {
                message_id,
                queue_offset: a.queue_offset,
                commit_log_offset: a.commit_log_offset,
                delayed: Some((timer::handle(broker, a.commit_log_offset), due)),
                store_timestamp_ms: a.store_timestamp_ms,
            })
            .collect())
    }

    /// Appends through the write path, or under the producer's sequence; true when the batch
    /// was stored before (its first positions are returned).
    async fn append(
        &self,
        topic: &str,
        queue_id: u32,
        batch: AppendBatch,
        seq: Option<Sequence>,
        now: i64,
        ack: AckAt,
    ) -> Result<(Vec<String>, Vec<crate::store::Appended>, bool), ApiError> {
        match seq {
            None => {
                let (ids, entries) = self.write.append(batch, now).await?;
                Ok((ids, entries, false))
            }
            Some(seq) => {
                let ids = batch
                    .messages
                    .iter()
                    .map(|m| m.message_id.clone())
                    .collect();
                let stored = self
                    .idempotence
                    .append_with(seq, topic, queue_id, batch, now, ack)
                    .await?;
                Ok((ids, stored.entries, stored.duplicate))
            }
        }
    }

    async fn topic_for_send(&self, name: &str, now: i64) -> Result<TopicConfig, ApiError> {
        let topics = &self.write.state().topics;
        if let Some(t) = topics.get(name) {
            return Ok(t);
        }
        // Only the master creates topics (through the log); a slave sends the producer on.
        self.write.require_writer()?;
        if !self.settings.auto_create_topics {
            return Err(ApiError::new(
                ErrorCode::TopicNotFound,
                format!("topic {name} does not exist and auto_create_topics is off"),
            ));
        }
        let cfg = TopicConfig {
            name: name.to_string(),
            read_queues: self.settings.default_queues,
            write_queues: self.settings.default_queues,
            perm: perm::READ_WRITE,
        };
        if upsert_topic(&self.write, cfg.clone(), now).await? {
            tracing::info!(
                topic = name,
                queues = cfg.write_queues,
                "auto-created topic"
            );
        }
        // Another send may have created it concurrently with other settings; use what is stored.
        Ok(topics.get(name).unwrap_or(cfg))
    }
}
