//! Messages as the application sees them.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use sluice_proto::v1::StoredMessage;

use crate::route::MessageQueue;

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub topic: String,
    pub body: Bytes,
    /// One tag for broker-side filtering; empty for none.
    pub tag: String,
    /// Business keys, indexed for lookups by key.
    pub keys: Vec<String>,
    pub properties: HashMap<String, String>,
    pub flag: u32,
    /// Delayed delivery: the message stays invisible to consumers until it is due.
    pub delay: Option<Delay>,
}

/// When a delayed message is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delay {
    /// This long after the broker stores it (the broker's clock, not the producer's).
    After(Duration),
    /// At this time (in the past: at once).
    At(SystemTime),
    /// The broker's delay level `n`, 1-based (RocketMQ's 18 levels `1s 5s 10s 30s 1m 2m 3m
    /// 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h` by default).
    Level(u32),
}

impl Message {
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Message {
            topic: topic.into(),
            body: body.into(),
            ..Default::default()
        }
    }

    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = tag.into();
        self
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    pub fn with_flag(mut self, flag: u32) -> Self {
        self.flag = flag;
        self
    }

    /// Delivers the message `delay` after the broker stores it.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(Delay::After(delay));
        self
    }

    /// Delivers the message at `at` (millisecond resolution; a time in the past delivers at
    /// once). The broker refuses a time beyond its `max_delay` (30 days by default).
    pub fn deliver_at(mut self, at: SystemTime) -> Self {
        self.delay = Some(Delay::At(at));
        self
    }

    /// Delivers the message after the broker's delay level `level` (1-based).
    pub fn with_delay_level(mut self, level: u32) -> Self {
        self.delay = Some(Delay::Level(level));
        self
    }
}

/// What the broker acknowledged for one stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendReceipt {
    pub message_id: String,
    pub topic: String,
    pub broker_name: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub commit_log_offset: u64,
    /// A delayed message's handle for [`crate::Producer::cancel_delayed`] (`topic/broker:offset`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_handle: Option<String>,
    /// A delayed message's due time, ms since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_at_ms: Option<i64>,
    /// The broker's store time, ms since the Unix epoch (None for a transaction's commit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_timestamp_ms: Option<i64>,
    /// The address of the master that stored it, as the send reached it (its data port when
    /// sent there); empty when not known.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub broker_address: String,
}

/// The wire fields of a delay (the rest of the message default).
pub(crate) fn delay_fields(delay: Option<Delay>) -> sluice_proto::v1::Message {
    let mut m = sluice_proto::v1::Message::default();
    match delay {
        None => {}
        Some(Delay::After(d)) => {
            // A zero delay still goes through the timer (delivered at once); 0 on the wire
            // would mean "not delayed".
            m.delay_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        }
        Some(Delay::At(t)) => {
            m.deliver_at_ms = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1),
                // Before 1970: long due.
                Err(_) => 1,
            };
        }
        Some(Delay::Level(n)) => m.delay_level = n,
    }
    m
}

/// A delivered message with the broker group it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMessage {
    pub broker_name: String,
    pub message: StoredMessage,
}

impl ReceivedMessage {
    pub fn topic(&self) -> &str {
        &self.message.topic
    }

    pub fn queue(&self) -> MessageQueue {
        MessageQueue {
            topic: self.message.topic.clone(),
            broker_name: self.broker_name.clone(),
            queue_id: self.message.queue_id,
        }
    }

    pub fn queue_id(&self) -> u32 {
        self.message.queue_id
    }

    pub fn offset(&self) -> u64 {
        self.message.queue_offset
    }

    pub fn message_id(&self) -> &str {
        &self.message.message_id
    }

    pub fn body(&self) -> &Bytes {
        &self.message.body
    }

    pub fn tag(&self) -> &str {
        &self.message.tag
    }

    pub fn keys(&self) -> &[String] {
        &self.message.keys
    }

    /// How many times delivery was attempted before this one (handler failures).
    pub fn reconsume_times(&self) -> u32 {
        self.message.reconsume_times
    }
}
