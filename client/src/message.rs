//! Messages as the application sees them.

use std::collections::HashMap;

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
