//! Delayed and scheduled messages (ARCHITECTURE.md, "Delayed messages").
//!
//! A send with a delay is stored as *scheduled* records (topic `%TIMER%`, queue 0) carrying
//! the due time and the real topic and queue; the store's timer index picks them up. Only the
//! master's timer task ([`task`]) delivers: it writes each due message into its real queue as
//! a *fired* record that names its scheduled record, and that one record is both the delivery
//! and the "done" mark, so a failover can never split them. Cancels go through the same task
//! (one writer decides between firing and cancelling a timer).

mod task;

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::props::{self, DELIVER_AT, REAL_QUEUE, REAL_TOPIC};
use sluice_proto::record::{SYS_FLAG_SCHEDULED, SYS_FLAG_TIMER_CANCEL};
use sluice_proto::v1::cancel_delayed_response::Outcome;
use sluice_proto::v1::Message;
use sluice_proto::{ApiError, ErrorCode};
use tokio::sync::{mpsc, oneshot, watch};

use super::write_path::WritePath;
use crate::store::{AppendBatch, AppendMessage, MessageStore};

/// RocketMQ's delay levels, 1-based.
pub const DEFAULT_LEVELS: &str = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h";

#[derive(Debug, Clone)]
pub struct TimerSettings {
    /// `delay_level` n is `levels[n - 1]`.
    pub levels: Vec<Duration>,
    /// Latest accepted due time, from now.
    pub max_delay: Duration,
    /// Most delayed messages waiting at once; a send past it fails with LIMIT_EXCEEDED.
    pub max_pending: u64,
}

impl Default for TimerSettings {
    fn default() -> Self {
        TimerSettings {
            levels: parse_levels(DEFAULT_LEVELS).unwrap_or_default(),
            max_delay: Duration::from_secs(30 * 24 * 3600),
            max_pending: 100_000_000,
        }
    }
}

/// Parses a level list such as `"1s 5s 1m 2h"` (units ms, s, m, h, d).
pub fn parse_levels(s: &str) -> Result<Vec<Duration>, String> {
    s.split_whitespace().map(parse_duration).collect()
}

/// `"30m"`, `"1500ms"`, `"2h"`, `"1d"`, `"45s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    sluice_proto::duration::parse(s)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// When a message is to be delivered, as a sender asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delay {
    #[default]
    None,
    /// This long after the broker stores it.
    AfterMs(u64),
    /// At this time (ms since the Unix epoch); in the past: at once.
    AtMs(i64),
    /// The broker's delay level n (1-based).
    Level(u32),
}

impl Delay {
    /// The delay of a `sluice.v1.Message` (at most one of its three fields may be set).
    pub fn of_wire(m: &Message) -> Result<Delay, ApiError> {
        let set = [m.delay_ms != 0, m.deliver_at_ms != 0, m.delay_level != 0];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err(ApiError::invalid(
                "set at most one of delay_ms, deliver_at_ms and delay_level",
            ));
        }
        Ok(if m.delay_ms != 0 {
            Delay::AfterMs(m.delay_ms)
        } else if m.deliver_at_ms != 0 {
            Delay::AtMs(m.deliver_at_ms)
        } else if m.delay_level != 0 {
            Delay::Level(m.delay_level)
        } else {
            Delay::None
        })
    }
}

impl TimerSettings {
    /// The due time a delay asks for (`None`: not delayed), checked against the limit.
    pub fn due_time(&self, delay: Delay, now_ms: i64) -> Result<Option<i64>, ApiError> {
        let due = match delay {
            Delay::None => return Ok(None),
            Delay::AfterMs(d) => now_ms.saturating_add(i64::try_from(d).unwrap_or(i64::MAX)),
            Delay::AtMs(at) => at,
            Delay::Level(level) => {
                let Some(d) = (level as usize)
                    .checked_sub(1)
                    .and_then(|i| self.levels.get(i))
                else {
                    return Err(ApiError::invalid(format!(
                        "delay_level {level} does not exist: this broker has levels 1-{}",
                        self.levels.len()
                    )));
                };
                now_ms.saturating_add(ms(*d))
            }
        };
        let limit = now_ms.saturating_add(ms(self.max_delay));
        if due > limit {
            return Err(ApiError::invalid(format!(
                "due time {due} is {} ms away; this broker's max_delay is {} ms ({} days)",
                due.saturating_sub(now_ms),
                ms(self.max_delay),
                self.max_delay.as_secs() / 86_400
            )));
        }
        Ok(Some(due))
    }
}

/// The scheduled form of a batch of delayed messages for `topic`/`queue_id`.
pub fn scheduled_batch(
    topic: &str,
    queue_id: u32,
    messages: Vec<(AppendMessage, i64)>,
) -> AppendBatch {
    AppendBatch {
        topic: props::TIMER_TOPIC.into(),
        queue_id: props::TIMER_QUEUE_SCHEDULED,
        messages: messages
            .into_iter()
            .map(|(mut m, due)| {
                m.properties.push((DELIVER_AT.into(), due.to_string()));
                m.properties.push((REAL_TOPIC.into(), topic.into()));
                m.properties.push((REAL_QUEUE.into(), queue_id.to_string()));
                m.sys_flag |= SYS_FLAG_SCHEDULED;
                m
            })
            .collect(),
    }
}

/// A delayed message's handle: the broker group and its scheduled record's offset.
pub fn handle(broker_name: &str, sched_phy: u64) -> String {
    format!("{broker_name}:{sched_phy}")
}

/// The offset a handle names, if it is this broker group's. A handle may carry its topic in
/// front (`topic/broker:offset`, as the Rust client's receipts do).
pub fn parse_handle(broker_name: &str, handle: &str) -> Result<u64, ApiError> {
    let bare = handle.rsplit_once('/').map_or(handle, |(_, h)| h);
    let (name, off) = bare
        .rsplit_once(':')
        .ok_or_else(|| ApiError::invalid(format!("{handle:?} is not a delayed-message handle")))?;
    if name != broker_name {
        return Err(ApiError::invalid(format!(
            "handle {handle:?} belongs to broker group {name:?}, not {broker_name:?}"
        )));
    }
    off.parse()
        .map_err(|_| ApiError::invalid(format!("{handle:?} is not a delayed-message handle")))
}

/// What a cancel found.
#[derive(Debug, Clone)]
pub struct CancelOutcome {
    pub outcome: Outcome,
    pub message_id: String,
    pub deliver_at_ms: i64,
    pub topic: String,
}

pub(crate) struct CancelRequest {
    sched_phy: u64,
    reply: oneshot::Sender<Result<CancelOutcome, ApiError>>,
}

/// The broker's side of delayed messages: settings, and the way to the timer task.
pub struct Timers {
    pub settings: TimerSettings,
    cancels: mpsc::Sender<CancelRequest>,
    /// Taken by each run of the task (one mastership at a time holds it).
    inbox: Arc<tokio::sync::Mutex<mpsc::Receiver<CancelRequest>>>,
    store: MessageStore,
    write: WritePath,
    /// Delivery lateness is observed only when the broker serves metrics.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Timers {
    pub fn new(
        settings: TimerSettings,
        store: MessageStore,
        write: WritePath,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Arc<Timers> {
        let (cancels, inbox) = mpsc::channel(1024);
        Arc::new(Timers {
            settings,
            cancels,
            inbox: Arc::new(tokio::sync::Mutex::new(inbox)),
            store,
            write,
            metrics,
        })
    }

    /// LIMIT_EXCEEDED when `adding` more would pass `max_pending`.
    pub fn check_room(&self, adding: usize) -> Result<(), ApiError> {
        let pending = self.store.timers_pending();
        if pending.saturating_add(adding as u64) > self.settings.max_pending {
            return Err(ApiError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{pending} delayed messages are waiting; this broker's max_pending_timers is {}",
                    self.settings.max_pending
                ),
            ));
        }
        Ok(())
    }

    /// Cancels the delayed message scheduled at `sched_phy` unless it was delivered.
    pub async fn cancel(&self, sched_phy: u64) -> Result<CancelOutcome, ApiError> {
        self.write.require_writer()?;
        let (reply, rx) = oneshot::channel();
        self.cancels
            .send(CancelRequest { sched_phy, reply })
            .await
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the timer task stopped"))?;
        rx.await.map_err(|_| {
            ApiError::new(
                ErrorCode::Unavailable,
                "the timer task stopped before answering (mastership changed?); retry",
            )
        })?
    }

    /// The master's delivery loop, until `stop` turns true.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let inbox = self.inbox.clone();
        let mut inbox = inbox.lock().await;
        task::Task::new(self.store.clone(), self.write.clone(), self.metrics.clone())
            .run(&mut inbox, stop)
            .await;
    }
}

/// The cancel record for a timer (the scheduled record `sched`).
fn cancel_record(sched: &crate::store::StoredRecord) -> AppendBatch {
    AppendBatch {
        topic: props::TIMER_TOPIC.into(),
        queue_id: props::TIMER_QUEUE_CANCELS,
        messages: vec![AppendMessage {
            message_id: sched.message_id.clone(),
            keys: sched.keys.clone(),
            properties: vec![
                (props::TIMER_OF.into(), sched.commit_log_offset.to_string()),
                (
                    REAL_TOPIC.into(),
                    props::get(&sched.properties, REAL_TOPIC)
                        .unwrap_or_default()
                        .to_string(),
                ),
            ],
            sys_flag: SYS_FLAG_TIMER_CANCEL,
            born_timestamp_ms: sched.born_timestamp_ms,
            born_host: sched.born_host.clone(),
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests;
