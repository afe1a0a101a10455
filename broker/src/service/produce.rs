//! Send: validation, optional topic auto-creation, append.

use sluice_proto::names::validate_topic_name;
use sluice_proto::props;
use sluice_proto::v1::{
    CancelDelayedRequest, CancelDelayedResponse, SendRequest, SendResponse, SendResult, TopicConfig,
};
use sluice_proto::{perm, ApiError, ErrorCode};

use super::convert::{now_ms, to_append};
use super::BrokerService;
use crate::messaging::timer;
use crate::store::{AppendBatch, AppendMessage};

/// Most messages accepted in one Send call.
pub const MAX_BATCH: usize = 10_000;

impl BrokerService {
    pub(crate) async fn do_send(&self, req: SendRequest) -> Result<SendResponse, ApiError> {
        validate_topic_name(&req.topic)?;
        if req.messages.is_empty() {
            return Err(ApiError::invalid("a send needs at least one message"));
        }
        if req.messages.len() > MAX_BATCH {
            return Err(ApiError::invalid(format!(
                "a batch holds at most {MAX_BATCH} messages, got {}",
                req.messages.len()
            )));
        }
        if props::is_internal_topic(&req.topic) {
            return Err(ApiError::new(
                ErrorCode::NoPermission,
                format!(
                    "topic {} is the broker's own; producers cannot send to it",
                    req.topic
                ),
            ));
        }
        let topic = self.topic_for_send(&req.topic).await?;
        if topic.perm & perm::WRITE == 0 {
            return Err(ApiError::new(
                ErrorCode::NoPermission,
                format!("topic {} is not writable", topic.name),
            ));
        }
        if req.queue_id >= topic.write_queues {
            return Err(ApiError::new(
                ErrorCode::QueueNotFound,
                format!(
                    "queue {} does not exist: topic {} has {} write queues",
                    req.queue_id, topic.name, topic.write_queues
                ),
            ));
        }
        let now = now_ms();
        let mut messages = Vec::with_capacity(req.messages.len());
        let mut due = Vec::new();
        for m in req.messages {
            if !m.topic.is_empty() && m.topic != req.topic {
                return Err(ApiError::invalid(format!(
                    "message for topic {} in a send to topic {}",
                    m.topic, req.topic
                )));
            }
            if let Some(at) = self.timers.settings.due_time(&m, now)? {
                due.push(at);
            }
            messages.push(to_append(m, &self.ids, self.limits.max_message_size)?);
        }
        if !due.is_empty() {
            if due.len() != messages.len() {
                return Err(ApiError::invalid(
                    "a batch mixes delayed and immediate messages: send them in separate batches",
                ));
            }
            return self
                .send_delayed(req.topic, req.queue_id, messages, due, now)
                .await;
        }
        let batch = AppendBatch {
            topic: req.topic,
            queue_id: req.queue_id,
            messages,
        };
        let (ids, entries) = self.write.append(batch, now).await?;
        Ok(SendResponse {
            broker_name: self.identity.broker_name.clone(),
            queue_id: req.queue_id,
            results: ids
                .into_iter()
                .zip(entries)
                .map(|(message_id, a)| SendResult {
                    message_id,
                    queue_offset: a.queue_offset,
                    commit_log_offset: a.commit_log_offset,
                    ..Default::default()
                })
                .collect(),
        })
    }

    /// Stores delayed messages as scheduled records; the master's timer task delivers them.
    async fn send_delayed(
        &self,
        topic: String,
        queue_id: u32,
        messages: Vec<AppendMessage>,
        due: Vec<i64>,
        now: i64,
    ) -> Result<SendResponse, ApiError> {
        self.timers.check_room(messages.len())?;
        let batch = timer::scheduled_batch(
            &topic,
            queue_id,
            messages.into_iter().zip(due.iter().copied()).collect(),
        );
        let (ids, entries) = self.write.append(batch, now).await?;
        let broker = &self.identity.broker_name;
        Ok(SendResponse {
            broker_name: broker.clone(),
            queue_id,
            results: ids
                .into_iter()
                .zip(entries)
                .zip(due)
                .map(|((message_id, a), due)| SendResult {
                    message_id,
                    queue_offset: a.queue_offset,
                    commit_log_offset: a.commit_log_offset,
                    delay_handle: timer::handle(broker, a.commit_log_offset),
                    deliver_at_ms: due,
                })
                .collect(),
        })
    }

    pub(crate) async fn do_cancel_delayed(
        &self,
        req: CancelDelayedRequest,
    ) -> Result<CancelDelayedResponse, ApiError> {
        let phy = timer::parse_handle(&self.identity.broker_name, &req.handle)?;
        let o = self.timers.cancel(phy).await?;
        Ok(CancelDelayedResponse {
            outcome: o.outcome as i32,
            message_id: o.message_id,
            deliver_at_ms: o.deliver_at_ms,
            topic: o.topic,
        })
    }

    async fn topic_for_send(&self, name: &str) -> Result<TopicConfig, ApiError> {
        if let Some(t) = self.topics.get(name) {
            return Ok(t);
        }
        // Only the master creates topics (through the log); a slave sends the producer on.
        self.write.require_writer()?;
        if !self.limits.auto_create_topics {
            return Err(ApiError::new(
                ErrorCode::TopicNotFound,
                format!("topic {name} does not exist and auto_create_topics is off"),
            ));
        }
        let cfg = TopicConfig {
            name: name.to_string(),
            read_queues: self.limits.default_queues,
            write_queues: self.limits.default_queues,
            perm: perm::READ_WRITE,
        };
        if self.upsert_topic(cfg.clone()).await? {
            tracing::info!(
                topic = name,
                queues = cfg.write_queues,
                "auto-created topic"
            );
            self.reregister.notify_one();
        }
        // Another send may have created it concurrently with other settings; use what is stored.
        Ok(self.topics.get(name).unwrap_or(cfg))
    }
}
