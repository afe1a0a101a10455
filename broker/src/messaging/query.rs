//! Message lookups, protocol-neutral: by id, by key, by store-time range, each record with
//! where it stands as a delayed message if it is one.

use sluice_proto::names::validate_topic_name;
use sluice_proto::props;
use sluice_proto::record::{SYS_FLAGS_TIMER, SYS_FLAG_SCHEDULED, SYS_FLAG_TIMER_FIRED};
use sluice_proto::{ApiError, ErrorCode};

use super::timer;
use crate::state::topics::require;
use crate::state::TopicTable;
use crate::store::timer::TimerState;
use crate::store::{MessageStore, StoredRecord};

pub const DEFAULT_QUERY_MAX: usize = 64;
pub const QUERY_MAX: usize = 1000;

/// Where a delayed message stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerView {
    /// `None`: resolved so long ago that the index let go of it.
    pub state: Option<TimerState>,
    pub deliver_at_ms: i64,
    pub handle: String,
    /// The topic and queue it is (or will be) delivered to.
    pub topic: String,
    pub queue_id: u32,
}

/// A record found, with its timer when it is a delayed message's.
pub struct Found {
    pub record: StoredRecord,
    pub timer: Option<TimerView>,
}

/// What to look for: a key, a store-time range (inclusive; `to` None: open), or both.
pub struct Lookup<'a> {
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub range: Option<(i64, Option<i64>)>,
    pub max: usize,
}

pub struct Querying {
    pub store: MessageStore,
    pub broker_name: String,
}

impl Querying {
    /// The newest record with this id (for a delayed message: its delivery, or its cancel).
    pub fn by_id(&self, message_id: &str) -> Result<Found, ApiError> {
        if message_id.is_empty() {
            return Err(ApiError::invalid("message_id is required"));
        }
        match self.store.get_by_id(message_id)? {
            Some(r) => Ok(self.found(r)),
            None => Err(ApiError::new(
                ErrorCode::MessageNotFound,
                format!("no message with id {message_id}"),
            )),
        }
    }

    /// Messages of a topic by key (newest first) and/or store-time range (oldest first).
    pub fn find(&self, topics: &TopicTable, q: &Lookup<'_>) -> Result<Vec<Found>, ApiError> {
        validate_topic_name(q.topic)?;
        require(topics, q.topic)?;
        let max = match q.max {
            0 => DEFAULT_QUERY_MAX,
            n => n.min(QUERY_MAX),
        };
        let in_range = |ts: i64| {
            q.range
                .is_none_or(|(from, to)| ts >= from && to.is_none_or(|to| ts <= to))
        };
        let records = match (q.key, q.range) {
            (Some(key), range) => {
                let limit = if range.is_some() { QUERY_MAX } else { max };
                let mut r = self.store.find_by_key(q.topic, key, limit)?;
                r.retain(|m| in_range(m.store_timestamp_ms));
                r.truncate(max);
                r
            }
            (None, Some((from, to))) => {
                if to.is_some_and(|to| to < from) {
                    return Err(ApiError::invalid(
                        "end_timestamp_ms is before begin_timestamp_ms",
                    ));
                }
                self.store
                    .find_by_time(q.topic, from, to.unwrap_or(i64::MAX), max)?
            }
            (None, None) => return Err(ApiError::invalid("give a key, a time range, or both")),
        };
        Ok(records.into_iter().map(|r| self.found(r)).collect())
    }

    fn found(&self, record: StoredRecord) -> Found {
        let timer = self.timer_view(&record);
        Found { record, timer }
    }

    fn timer_view(&self, r: &StoredRecord) -> Option<TimerView> {
        if r.sys_flag & SYS_FLAGS_TIMER == 0 {
            return None;
        }
        let num = |name: &str| props::get(&r.properties, name).and_then(|v| v.parse::<i64>().ok());
        let real_topic = props::get(&r.properties, props::REAL_TOPIC).unwrap_or_default();
        let real_queue = u32::try_from(num(props::REAL_QUEUE).unwrap_or_default()).unwrap_or(0);
        let timer_of = u64::try_from(num(props::TIMER_OF).unwrap_or_default()).unwrap_or(0);
        let (state, of, topic, queue_id) = if r.sys_flag & SYS_FLAG_SCHEDULED != 0 {
            let state = match self.store.timer_entry(r.commit_log_offset) {
                Ok(Some(e)) => Some(e.state),
                // Resolved long ago (the index let go of it), or unreadable.
                _ => None,
            };
            (
                state,
                r.commit_log_offset,
                real_topic.to_string(),
                real_queue,
            )
        } else if r.sys_flag & SYS_FLAG_TIMER_FIRED != 0 {
            (
                Some(TimerState::Fired),
                timer_of,
                r.topic.clone(),
                r.queue_id,
            )
        } else {
            (
                Some(TimerState::Cancelled),
                timer_of,
                real_topic.to_string(),
                real_queue,
            )
        };
        Some(TimerView {
            state,
            deliver_at_ms: num(props::DELIVER_AT).unwrap_or_default(),
            handle: timer::handle(&self.broker_name, of),
            topic,
            queue_id,
        })
    }
}
