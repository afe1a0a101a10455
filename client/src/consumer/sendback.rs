//! Sending a failed message back to its broker (by reference), for a later attempt on the
//! group's retry topic or, with its retries spent, to the group's dead-letter topic.

use std::time::Duration;

use sluice_proto::v1::send_back_response::Outcome;
use sluice_proto::v1::{SendBackRequest, StoredMessage};
use sluice_proto::ErrorCode;

use crate::client::ClientCore;
use crate::error::{Error, Result};
use crate::rpc;

/// Return this from a push handler (boxed, as its error) to have the message delivered again
/// after `delay` instead of the group's backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryLater {
    pub delay: Duration,
}

impl std::fmt::Display for RetryLater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "retry later (in {:?})", self.delay)
    }
}

impl std::error::Error for RetryLater {}

/// What the broker did with a message sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendBackOutcome {
    /// Delivered again on the group's retry topic at this time (ms since the epoch).
    Retry { attempt: u32, deliver_at_ms: i64 },
    /// Retries spent: on the group's dead-letter topic.
    DeadLetter { attempts: u32 },
}

/// Sends `msg` (delivered by broker group `broker_name`) back for `group`.
pub(crate) async fn send_back(
    core: &ClientCore,
    group: &str,
    broker_name: &str,
    msg: &StoredMessage,
    delay: Option<Duration>,
    reason: &str,
) -> Result<SendBackOutcome> {
    let req = SendBackRequest {
        group: group.to_string(),
        commit_log_offset: msg.commit_log_offset,
        message_id: msg.message_id.clone(),
        delay_ms: delay.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        }),
        reason: reason.to_string(),
        dead_letter: false,
        attempts: 0,
    };
    call(core, broker_name, msg, req).await
}

/// Sends `msg` to `group`'s dead-letter topic now: an ordered consumer retried it in place
/// `attempts` times.
pub(crate) async fn dead_letter(
    core: &ClientCore,
    group: &str,
    broker_name: &str,
    msg: &StoredMessage,
    attempts: u32,
    reason: &str,
) -> Result<SendBackOutcome> {
    let req = SendBackRequest {
        group: group.to_string(),
        commit_log_offset: msg.commit_log_offset,
        message_id: msg.message_id.clone(),
        delay_ms: 0,
        reason: reason.to_string(),
        dead_letter: true,
        attempts,
    };
    call(core, broker_name, msg, req).await
}

async fn call(
    core: &ClientCore,
    broker_name: &str,
    msg: &StoredMessage,
    req: SendBackRequest,
) -> Result<SendBackOutcome> {
    let t = core.timeout();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let route = core.routes.get(&msg.topic).await?;
        let result = match route.master_address(broker_name) {
            None => Err(Error::Api(sluice_proto::ApiError::new(
                ErrorCode::NotMaster,
                format!("broker group {broker_name} has no master now"),
            ))),
            Some(addr) => {
                let mut client = core.broker(addr)?;
                rpc::call(addr, t, client.send_back(rpc::request(req.clone(), t))).await
            }
        };
        match result {
            Ok(r) => {
                return Ok(match Outcome::try_from(r.outcome) {
                    Ok(Outcome::DeadLetter) => SendBackOutcome::DeadLetter {
                        attempts: r.reconsume_times,
                    },
                    _ => SendBackOutcome::Retry {
                        attempt: r.reconsume_times,
                        deliver_at_ms: r.deliver_at_ms,
                    },
                })
            }
            Err(e) if attempt < 3 && e.is_master_change() => {
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                core.routes.refresh(&msg.topic, route.generation).await?;
            }
            Err(e) => return Err(e),
        }
    }
}
