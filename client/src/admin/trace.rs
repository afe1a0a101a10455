//! A message's trace: the events tracing clients wrote about it to the trace topic.

use sluice_proto::trace::{decode_batch, TraceEvent, TRACE_TOPIC};
use sluice_proto::{ApiError, ErrorCode};

use super::Admin;
use crate::error::{Error, Result};

/// Most trace messages read for one message id (the broker's largest key lookup).
const MAX_RECORDS: u32 = 1000;

/// A message's trace events in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageTrace {
    pub message_id: String,
    pub events: Vec<TraceEvent>,
    /// Records on the trace topic under this id that hold no trace events (the topic is an
    /// ordinary one; anything may be written to it).
    pub unreadable: usize,
}

impl Admin {
    /// Every trace event recorded for `message_id`, asking each broker group of the trace
    /// topic. Empty when the message was sent and consumed by clients that do not trace.
    pub async fn message_trace(&self, message_id: &str) -> Result<MessageTrace> {
        if message_id.is_empty() {
            return Err(Error::InvalidArgument("empty message id".into()));
        }
        let records = self
            .find_by_key(TRACE_TOPIC, message_id, MAX_RECORDS)
            .await
            .map_err(|e| match e.code() {
                Some(ErrorCode::NoRoute | ErrorCode::TopicNotFound) => {
                    Error::Api(ApiError::new(
                        ErrorCode::NoRoute,
                        format!("no broker serves the trace topic {TRACE_TOPIC} (trace_enabled is off everywhere?): {e}"),
                    ))
                }
                _ => e,
            })?;
        let mut unreadable = 0;
        let mut events = Vec::with_capacity(records.len());
        for r in records {
            match decode_batch(&r.message.body) {
                Some(batch) => {
                    events.extend(batch.into_iter().filter(|e| e.message_id == message_id))
                }
                None => unreadable += 1,
            }
        }
        TraceEvent::timeline(&mut events);
        Ok(MessageTrace {
            message_id: message_id.to_string(),
            events,
            unreadable,
        })
    }
}
