//! Idempotent batches in the log: the first record of a batch from an idempotent producer
//! carries its sequence (`sluice_proto::props::PRODUCER_SEQUENCE`). A replica group's applier
//! reads it from each entry; a standalone broker reads the commit log's tail after a restart;
//! a retried batch's positions are read back from where its locator says.

use std::sync::atomic::Ordering;

use sluice_proto::props;

use super::record::{self, Fixed as _, Probe};
use super::{Appended, MessageStore, StoreError, StoredRecord};

/// An idempotent batch as its first record announces it (see `sluice_proto::props`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencedBatch {
    pub mark: sluice_proto::props::SequenceMark,
    /// The queue the producer sent to (a delayed batch's real topic and queue).
    pub topic: String,
    pub queue_id: u32,
    pub first_message_id: String,
    pub store_timestamp_ms: i64,
}

/// The sequence a record of a batch carries, if it is the first record of an idempotent batch.
pub(crate) fn sequenced(view: &record::DispatchView<'_>) -> Option<SequencedBatch> {
    if view.is_system() {
        return None;
    }
    let mark = props::SequenceMark::parse(view.property(props::PRODUCER_SEQUENCE)?)?;
    let (topic, queue_id) = match view.property(props::REAL_TOPIC) {
        Some(t) => (
            std::str::from_utf8(t).ok()?.to_string(),
            u32::try_from(view.property_i64(props::REAL_QUEUE)?).ok()?,
        ),
        None => (view.topic.to_string(), view.queue_id()),
    };
    Some(SequencedBatch {
        mark,
        topic,
        queue_id,
        first_message_id: std::str::from_utf8(view.message_id).ok()?.to_string(),
        store_timestamp_ms: view.store_timestamp(),
    })
}

/// The idempotent batch an entry's data (proposed or stored form) holds, if any: only its
/// first record is read.
pub fn sequenced_entry(data: &[u8]) -> Option<SequencedBatch> {
    let Probe::Record(t) = record::probe(data) else {
        return None;
    };
    let view = record::parse_for_dispatch(data.get(..t as usize)?).ok()?;
    sequenced(&view)
}

/// State found in a standalone broker's log.
#[derive(Debug, Clone)]
pub enum LogState {
    /// An idempotent batch and the commit-log offset of its first record.
    Sequenced(SequencedBatch, u64),
    /// A state record's body (an encoded `MetaOp`).
    Meta(bytes::Bytes),
}

/// [`sequenced`] for a record read back from the commit log.
fn sequenced_record(r: &StoredRecord) -> Option<SequencedBatch> {
    if r.sys_flag & record::SYS_FLAGS_SYSTEM != 0 {
        return None;
    }
    let mark = props::SequenceMark::parse(
        props::get(&r.properties, props::PRODUCER_SEQUENCE)?.as_bytes(),
    )?;
    let (topic, queue_id) = match props::get(&r.properties, props::REAL_TOPIC) {
        Some(t) => (
            t.to_string(),
            props::get(&r.properties, props::REAL_QUEUE)?.parse().ok()?,
        ),
        None => (r.topic.clone(), r.queue_id),
    };
    Some(SequencedBatch {
        mark,
        topic,
        queue_id,
        first_message_id: r.message_id.clone(),
        store_timestamp_ms: r.store_timestamp_ms,
    })
}

impl MessageStore {
    /// The state a standalone broker's log carries from `from` (below the log's start: from
    /// its start) to the write position, in log order: idempotent batches with their first
    /// record's offset, and state records.
    pub fn log_state(&self, from: u64) -> Result<Vec<LogState>, StoreError> {
        let s = self.shared();
        let start = from.max(s.log.min_offset().unwrap_or(0));
        let end = s.write_pos.load(Ordering::Acquire);
        let mut out = Vec::new();
        s.log.for_each_record(start, end, |r| {
            if r.sys_flag & record::SYS_FLAG_META != 0 {
                out.push(LogState::Meta(r.body.clone()));
            } else if let Some(b) = sequenced_record(r) {
                out.push(LogState::Sequenced(b, r.commit_log_offset));
            }
        })?;
        Ok(out)
    }

    /// Positions of the `count` messages of a standalone batch whose first record is at
    /// `offset` (a batch is written in one piece).
    pub fn batch_at(&self, offset: u64, count: u32) -> Result<Vec<Appended>, StoreError> {
        let mut out = Vec::with_capacity(count as usize);
        let mut at = offset;
        for _ in 0..count {
            let r = self.read_at(at)?;
            out.push(Appended {
                queue_offset: r.queue_offset,
                commit_log_offset: r.commit_log_offset,
                size: r.store_size,
            });
            at += u64::from(r.store_size);
        }
        Ok(out)
    }
}
