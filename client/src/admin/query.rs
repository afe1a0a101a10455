//! Looking messages up by id, key or store time.

use futures::future::join_all;
use sluice_proto::v1::{GetMessageRequest, QueryMessagesRequest};
use sluice_proto::{names, ApiError, ErrorCode};

use super::Admin;
use crate::error::{Error, Result};
use crate::message::ReceivedMessage;
use crate::rpc;

impl Admin {
    /// The message with this id, asking every master broker.
    pub async fn get_message(&self, message_id: &str) -> Result<ReceivedMessage> {
        if message_id.is_empty() {
            return Err(Error::InvalidArgument("empty message id".into()));
        }
        let masters = self.masters(None).await?;
        let t = self.core.timeout();
        let calls = masters.iter().map(|b| async move {
            let mut client = self.core.broker(&b.address)?;
            let req = GetMessageRequest {
                message_id: message_id.to_string(),
            };
            rpc::call(&b.address, t, client.get_message(rpc::request(req, t))).await
        });
        let mut unreachable = Vec::new();
        for (b, result) in masters.iter().zip(join_all(calls).await) {
            match result {
                Ok(resp) => {
                    if let Some(message) = resp.message {
                        return Ok(ReceivedMessage {
                            broker_name: b.broker_name.clone(),
                            message,
                        });
                    }
                }
                Err(e) if e.code() == Some(ErrorCode::MessageNotFound) => {}
                Err(e) => unreachable.push(format!("{} ({}): {e}", b.broker_name, b.address)),
            }
        }
        let mut text = format!("no message with id {message_id}");
        if !unreachable.is_empty() {
            text.push_str(&format!(
                "; brokers not asked successfully: {}",
                unreachable.join("; ")
            ));
        }
        Err(Error::Api(ApiError::new(ErrorCode::MessageNotFound, text)))
    }

    /// Messages of `topic` carrying `key`, oldest first, at most `max`.
    pub async fn find_by_key(
        &self,
        topic: &str,
        key: &str,
        max: u32,
    ) -> Result<Vec<ReceivedMessage>> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("empty key".into()));
        }
        self.query(topic, key, 0, 0, max).await
    }

    /// Messages of `topic` stored within [from_ms, to_ms] (inclusive), oldest first, at most `max`.
    pub async fn find_by_time(
        &self,
        topic: &str,
        from_ms: i64,
        to_ms: i64,
        max: u32,
    ) -> Result<Vec<ReceivedMessage>> {
        if from_ms > to_ms {
            return Err(Error::InvalidArgument(format!(
                "time range is empty: from {from_ms} is after to {to_ms}"
            )));
        }
        self.query(topic, "", from_ms, to_ms, max).await
    }

    /// Asks a replica of every broker group of the topic and merges the answers by store time.
    async fn query(
        &self,
        topic: &str,
        key: &str,
        from_ms: i64,
        to_ms: i64,
        max: u32,
    ) -> Result<Vec<ReceivedMessage>> {
        names::validate_topic_name(topic)?;
        let brokers = self.route_readers(topic).await?;
        let t = self.core.timeout();
        let calls = brokers.iter().map(|(_, addr)| async move {
            let mut client = self.core.broker(addr)?;
            let req = QueryMessagesRequest {
                topic: topic.to_string(),
                key: key.to_string(),
                begin_timestamp_ms: from_ms,
                end_timestamp_ms: to_ms,
                max_messages: max,
            };
            rpc::call(addr, t, client.query_messages(rpc::request(req, t))).await
        });
        let mut found = Vec::new();
        for ((broker, addr), result) in brokers.iter().zip(join_all(calls).await) {
            match result {
                Ok(resp) => found.extend(resp.messages.into_iter().map(|m| ReceivedMessage {
                    broker_name: broker.clone(),
                    message: m,
                })),
                Err(e) if e.code() == Some(ErrorCode::MessageNotFound) => {}
                Err(e) => {
                    return Err(Error::Api(ApiError::new(
                        e.code().unwrap_or(ErrorCode::Unavailable),
                        format!("broker {broker} ({addr}): {e}"),
                    )))
                }
            }
        }
        found.sort_by(|a, b| {
            (
                a.message.store_timestamp_ms,
                &a.broker_name,
                a.message.queue_id,
                a.message.queue_offset,
            )
                .cmp(&(
                    b.message.store_timestamp_ms,
                    &b.broker_name,
                    b.message.queue_id,
                    b.message.queue_offset,
                ))
        });
        if max > 0 {
            found.truncate(max as usize);
        }
        Ok(found)
    }
}
