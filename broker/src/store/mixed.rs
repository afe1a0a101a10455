//! Mixed batches: state operations and messages of several queues written as one unit (one
//! Raft entry, or one write of a standalone broker), so a decision and the messages it makes
//! visible can never be split by a crash or a failover. The state records come first: a
//! replica group's applier finds them like those of a metadata entry.

use bytes::Bytes;

use super::entry::{encode_batch, system_record};
use super::record::{self, META_TOPIC, SYS_FLAG_META};
use super::writer::EncodedBatch;
use super::{AppendBatch, MessageStore, StoreError};

/// State operations (encoded `MetaOp`s) and batches for any queues, written together.
#[derive(Debug, Clone, Default)]
pub struct MixedBatch {
    pub state: Vec<Bytes>,
    pub parts: Vec<AppendBatch>,
}

/// The records back to back, each one's span, and its queue (`None`: a state record).
type Encoded = (Vec<u8>, Vec<(usize, usize)>, Vec<Option<(String, u32)>>);

fn encode(
    b: &MixedBatch,
    host: &str,
    ts: i64,
    max_message_size: Option<usize>,
) -> Result<Encoded, StoreError> {
    if b.state.is_empty() && b.parts.is_empty() {
        return Err(StoreError::Invalid("empty mixed batch".into()));
    }
    let mut buf = Vec::new();
    let mut spans = Vec::new();
    let mut queues = Vec::new();
    for body in &b.state {
        let start = buf.len();
        buf.extend_from_slice(&system_record(
            META_TOPIC,
            SYS_FLAG_META,
            0,
            body.clone(),
            host,
            ts,
        ));
        spans.push((start, buf.len() - start));
        queues.push(None);
    }
    for part in &b.parts {
        let (pbuf, precords) = encode_batch(part, host, max_message_size)?;
        let base = buf.len();
        buf.extend_from_slice(&pbuf);
        for (start, len) in precords {
            spans.push((base + start, len));
            queues.push(Some((part.topic.clone(), part.queue_id)));
        }
    }
    Ok((buf, spans, queues))
}

/// Entry data for a mixed batch, in proposal form (positions zero, CRCs valid).
pub fn encode_mixed_for_proposal(b: &MixedBatch, host: &str, ts: i64) -> Result<Bytes, StoreError> {
    let (mut buf, spans, _) = encode(b, host, ts, None)?;
    for (start, len) in spans {
        record::seal_proposal(&mut buf[start..start + len], ts);
    }
    Ok(buf.into())
}

impl MessageStore {
    /// Where retention and Raft compaction stop for unresolved transactions and writes whose
    /// state is not applied yet (`u64::MAX`: nowhere); the transactions' housekeeping sets it.
    pub fn set_transaction_floor(&self, offset: u64) {
        let s = self.shared();
        s.tx_floor
            .store(offset, std::sync::atomic::Ordering::Release);
        s.tx_floor_set
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Retention checks completed since the store opened.
    pub fn retention_checks(&self) -> u64 {
        self.shared()
            .retention_checks
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn transaction_floor(&self) -> u64 {
        self.shared()
            .tx_floor
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Validates and encodes a mixed batch for [`MessageStore::append_encoded`].
    pub fn encode_mixed(&self, b: &MixedBatch) -> Result<EncodedBatch, StoreError> {
        let cfg = &self.shared().config;
        let (buf, records, queues) = encode(b, &cfg.store_host, 0, Some(cfg.max_message_size))?;
        let limit = (cfg.segment_size as usize).saturating_sub(record::FILLER_LEN);
        if buf.len() > limit {
            return Err(StoreError::MessageTooLarge {
                size: buf.len(),
                limit,
            });
        }
        Ok(EncodedBatch {
            topic: META_TOPIC.to_string(),
            queue_id: 0,
            buf,
            records,
            queues,
        })
    }
}
