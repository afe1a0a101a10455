//! Cancelling delayed messages by the handle their send receipt carries.

use std::time::Duration;

use sluice_proto::v1::cancel_delayed_response::Outcome;
use sluice_proto::v1::CancelDelayedRequest;
use sluice_proto::ErrorCode;

use super::Producer;
use crate::error::{Error, Result};
use crate::rpc;

/// What a cancel found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CancelOutcome {
    /// `cancelled`, `already_delivered` or `already_cancelled`.
    pub outcome: &'static str,
    pub message_id: String,
    pub topic: String,
    pub deliver_at_ms: i64,
}

impl CancelOutcome {
    /// True when this call stopped the delivery.
    pub fn cancelled(&self) -> bool {
        self.outcome == "cancelled"
    }
}

/// `topic/broker:offset` -> (topic, broker).
fn parse(handle: &str) -> Result<(&str, &str)> {
    let bad = || {
        Error::InvalidArgument(format!(
            "{handle:?} is not a delayed-message handle (topic/broker:offset)"
        ))
    };
    let (topic, rest) = handle.split_once('/').ok_or_else(bad)?;
    let (broker, _) = rest.rsplit_once(':').ok_or_else(bad)?;
    Ok((topic, broker))
}

impl Producer {
    /// Stops a delayed message before it is due (for example: the order was paid). Says so
    /// when it was delivered or cancelled already. Retries a master change.
    pub async fn cancel_delayed(&self, handle: &str) -> Result<CancelOutcome> {
        let (topic, broker) = parse(handle)?;
        let core = &self.inner.sender.core;
        let t = core.timeout();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let route = core.routes.get(topic).await?;
            let generation = route.generation;
            let addr = route.master_address(broker).map(str::to_string);
            let result = match &addr {
                None => Err(Error::Api(sluice_proto::ApiError::new(
                    ErrorCode::NotMaster,
                    format!("broker group {broker} has no master in the route of {topic}"),
                ))),
                Some(addr) => {
                    let mut client = core.broker(addr)?;
                    let req = CancelDelayedRequest {
                        handle: handle.to_string(),
                    };
                    rpc::call(addr, t, client.cancel_delayed(rpc::request(req, t))).await
                }
            };
            match result {
                Ok(r) => {
                    let outcome = match Outcome::try_from(r.outcome) {
                        Ok(Outcome::Cancelled) => "cancelled",
                        Ok(Outcome::AlreadyDelivered) => "already_delivered",
                        Ok(Outcome::AlreadyCancelled) => "already_cancelled",
                        _ => "unknown",
                    };
                    return Ok(CancelOutcome {
                        outcome,
                        message_id: r.message_id,
                        topic: r.topic,
                        deliver_at_ms: r.deliver_at_ms,
                    });
                }
                Err(e) if attempt < 5 && e.is_master_change() => {
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    core.routes.refresh(topic, generation).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
