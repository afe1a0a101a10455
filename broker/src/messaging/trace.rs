//! Message trace on the broker: trace events are ordinary messages on the trace topic
//! (`sluice_proto::trace`), written by clients. The broker's part is to accept them or not
//! (`trace_enabled`), and, accepting, to keep the trace topic in existence so clients find a
//! route to it.

use std::time::Duration;

use sluice_proto::trace::TRACE_TOPIC;
use sluice_proto::v1::TopicConfig;
use sluice_proto::{perm, ApiError, ErrorCode};
use tokio::sync::watch;

use super::produce::upsert_topic;
use super::WritePath;

/// The refusal a broker that does not take traces gives sends to the trace topic.
pub fn refused() -> ApiError {
    ApiError::new(
        ErrorCode::NoPermission,
        format!("this broker does not accept message traces (trace_enabled = false); {TRACE_TOPIC} is closed to sends"),
    )
}

/// Leader-only task: creates the trace topic (through the log) if it is missing. Retries
/// until it exists or the mastership ends.
pub async fn ensure_topic(write: WritePath, queues: u32, mut stop: watch::Receiver<bool>) {
    let mut wait = Duration::from_millis(200);
    loop {
        if *stop.borrow() || write.state().topics.get(TRACE_TOPIC).is_some() {
            return;
        }
        let cfg = TopicConfig {
            name: TRACE_TOPIC.to_string(),
            read_queues: queues,
            write_queues: queues,
            perm: perm::READ_WRITE,
        };
        match upsert_topic(&write, cfg, crate::store::now_ms()).await {
            Ok(_) => {
                tracing::info!(topic = TRACE_TOPIC, queues, "trace topic created");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "trace topic not created yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}
