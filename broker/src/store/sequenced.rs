//! State a batch's first record announces: an idempotent producer's sequence
//! (`props::PRODUCER_SEQUENCE`) and a transaction's half messages (`props::TX_HALF`). A replica
//! group's applier reads it from each entry; a standalone broker reads the commit log's tail
//! after a restart; a batch's positions are read back from where its locator says.

use std::sync::atomic::Ordering;

use sluice_proto::props;

use super::record::{self, Fixed as _, Probe};
use super::{Appended, MessageStore, StoreError, StoredRecord};

/// An idempotent batch as its first record announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencedBatch {
    pub mark: props::SequenceMark,
    /// The queue the producer sent to (a delayed batch's or a half batch's real queue).
    pub topic: String,
    pub queue_id: u32,
    pub first_message_id: String,
    pub store_timestamp_ms: i64,
}

/// A send's half messages as their first record announces them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HalfBatch {
    pub transaction_id: String,
    pub mark: props::HalfMark,
    /// The queue the messages are for.
    pub topic: String,
    pub queue_id: u32,
    /// A retry of the send, stored again, carries the same id.
    pub first_message_id: String,
    pub store_timestamp_ms: i64,
}

/// What a batch's first record announces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchMarks {
    pub sequence: Option<SequencedBatch>,
    pub half: Option<HalfBatch>,
}

/// The fields of a record the marks are read from (a record in an entry, or read back).
trait Announces {
    fn system(&self) -> bool;
    fn prop(&self, name: &str) -> Option<&[u8]>;
    fn topic(&self) -> &str;
    fn queue(&self) -> u32;
    fn id(&self) -> Option<&str>;
    fn ts(&self) -> i64;
}

impl Announces for record::DispatchView<'_> {
    fn system(&self) -> bool {
        self.is_system()
    }
    fn prop(&self, name: &str) -> Option<&[u8]> {
        self.property(name)
    }
    fn topic(&self) -> &str {
        self.topic
    }
    fn queue(&self) -> u32 {
        self.queue_id()
    }
    fn id(&self) -> Option<&str> {
        std::str::from_utf8(self.message_id).ok()
    }
    fn ts(&self) -> i64 {
        self.store_timestamp()
    }
}

impl Announces for StoredRecord {
    fn system(&self) -> bool {
        self.sys_flag & record::SYS_FLAGS_SYSTEM != 0
    }
    fn prop(&self, name: &str) -> Option<&[u8]> {
        props::get(&self.properties, name).map(str::as_bytes)
    }
    fn topic(&self) -> &str {
        &self.topic
    }
    fn queue(&self) -> u32 {
        self.queue_id
    }
    fn id(&self) -> Option<&str> {
        Some(&self.message_id)
    }
    fn ts(&self) -> i64 {
        self.store_timestamp_ms
    }
}

/// The first message of a batch about to be written.
struct Outgoing<'a> {
    batch: &'a super::AppendBatch,
    m: &'a super::AppendMessage,
    ts: i64,
}

impl Announces for Outgoing<'_> {
    fn system(&self) -> bool {
        self.m.sys_flag & record::SYS_FLAGS_SYSTEM != 0
    }
    fn prop(&self, name: &str) -> Option<&[u8]> {
        props::get(&self.m.properties, name).map(str::as_bytes)
    }
    fn topic(&self) -> &str {
        &self.batch.topic
    }
    fn queue(&self) -> u32 {
        self.batch.queue_id
    }
    fn id(&self) -> Option<&str> {
        Some(&self.m.message_id)
    }
    fn ts(&self) -> i64 {
        self.ts
    }
}

/// What a batch about to be written will announce (a standalone broker applies it right
/// after the write, with its own clock as the time).
pub fn batch_marks(batch: &super::AppendBatch, at_ms: i64) -> BatchMarks {
    match batch.messages.first() {
        Some(m) => marks_of(&Outgoing {
            batch,
            m,
            ts: at_ms,
        }),
        None => BatchMarks::default(),
    }
}

fn marks_of(r: &impl Announces) -> BatchMarks {
    if r.system() {
        return BatchMarks::default();
    }
    let real = || -> Option<(String, u32)> {
        match r.prop(props::REAL_TOPIC) {
            Some(t) => {
                let q = std::str::from_utf8(r.prop(props::REAL_QUEUE)?).ok()?;
                Some((std::str::from_utf8(t).ok()?.to_string(), q.parse().ok()?))
            }
            None => Some((r.topic().to_string(), r.queue())),
        }
    };
    let sequence = (|| {
        let mark = props::SequenceMark::parse(r.prop(props::PRODUCER_SEQUENCE)?)?;
        let (topic, queue_id) = real()?;
        Some(SequencedBatch {
            mark,
            topic,
            queue_id,
            first_message_id: r.id()?.to_string(),
            store_timestamp_ms: r.ts(),
        })
    })();
    let half = (|| {
        let mark = props::HalfMark::parse(r.prop(props::TX_HALF)?)?;
        let (topic, queue_id) = real()?;
        Some(HalfBatch {
            transaction_id: std::str::from_utf8(r.prop(props::TX_ID)?).ok()?.to_string(),
            mark,
            topic,
            queue_id,
            first_message_id: r.id().unwrap_or_default().to_string(),
            store_timestamp_ms: r.ts(),
        })
    })();
    BatchMarks { sequence, half }
}

/// What an entry's data (proposed or stored form) announces: only its first record is read.
pub fn entry_marks(data: &[u8]) -> BatchMarks {
    let Probe::Record(t) = record::probe(data) else {
        return BatchMarks::default();
    };
    match data
        .get(..t as usize)
        .and_then(|r| record::parse_for_dispatch(r).ok())
    {
        Some(view) => marks_of(&view),
        None => BatchMarks::default(),
    }
}

/// State found in a standalone broker's log.
#[derive(Debug, Clone)]
pub enum LogState {
    /// What a batch's first record announces, and that record's commit-log offset.
    Batch(BatchMarks, u64),
    /// A state record's body (an encoded `MetaOp`).
    Meta(bytes::Bytes),
}

impl MessageStore {
    /// The state a standalone broker's log carries from `from` (below the log's start: from
    /// its start) to the write position, in log order: batches that announce some, with their
    /// first record's offset, and state records.
    pub fn log_state(&self, from: u64) -> Result<Vec<LogState>, StoreError> {
        let s = self.shared();
        let start = from.max(s.log.min_offset().unwrap_or(0));
        let end = s.write_pos.load(Ordering::Acquire);
        let mut out = Vec::new();
        s.log.for_each_record(start, end, |r| {
            if r.sys_flag & record::SYS_FLAG_META != 0 {
                out.push(LogState::Meta(r.body.clone()));
                return;
            }
            let m = marks_of(r);
            if m.sequence.is_some() || m.half.is_some() {
                out.push(LogState::Batch(m, r.commit_log_offset));
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
                store_timestamp_ms: r.store_timestamp_ms,
            });
            at += u64::from(r.store_size);
        }
        Ok(out)
    }
}
