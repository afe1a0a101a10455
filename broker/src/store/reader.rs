//! Read paths: queue reads, lookups by id, key and time. They never block the writer: they
//! read consume queues and segments with positioned reads, and verify every record's CRC
//! before handing it out.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::cq::{ConsumeQueue, CqEntry};
use super::index::{id_hash, key_hash};
use super::shared::Shared;
use super::{commitlog, QueueRead, Seen, StoreError, StoredRecord};

/// Records of one queue closer than this in the log are fetched with one read.
const MAX_GAP: u64 = 1024;

/// Where a queue read expects a record: it must agree with its consume-queue entry.
pub struct Expected<'a> {
    pub topic: &'a str,
    pub queue_id: u32,
    pub queue_offset: u64,
}

impl Expected<'_> {
    /// The record at log offset `phy` claims (topic, queue, queue offset).
    pub fn check(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        phy: u64,
    ) -> Result<(), StoreError> {
        if topic == self.topic && queue_id == self.queue_id && queue_offset == self.queue_offset {
            Ok(())
        } else {
            Err(mismatch(phy))
        }
    }
}

/// Reads a queue from `offset`: up to `max_messages` records and `max_bytes` (at least one
/// record), `decode` turning each (buffer, position in it, log offset) into an `R` and checking
/// it is the record its entry expects ([`commitlog::decoded_at`] decodes it,
/// [`commitlog::raw_at`] hands out the stored bytes).
pub fn read_queue_with<R>(
    s: &Shared,
    topic: &str,
    queue_id: u32,
    offset: u64,
    max_messages: usize,
    max_bytes: usize,
    decode: impl Fn(&Bytes, usize, u64, &Expected<'_>) -> Result<R, StoreError>,
) -> Result<QueueRead<R>, StoreError> {
    let Some((q, min, max)) = queue_at(s, topic, queue_id, offset)? else {
        return Ok(QueueRead::empty(0, 0, 0));
    };
    let entries = q.entries(offset, max_messages.max(1))?;
    if entries.is_empty() && offset < max && q.min() > offset {
        // Retention trimmed the queue's head between the bounds check and the read: the
        // offset is gone, not empty (an empty answer would have the reader retry it forever).
        return Err(StoreError::OffsetOutOfRange {
            offset,
            min: q.min(),
            max,
        });
    }
    // Bound by bytes, keeping at least one record.
    let mut total = 0usize;
    let mut take = 0;
    for e in &entries {
        if take > 0 && total + e.size as usize > max_bytes {
            break;
        }
        total += e.size as usize;
        take += 1;
    }
    let records = read_entries(s, &entries[..take], |i, buf, at, phy| {
        let want = Expected {
            topic,
            queue_id,
            queue_offset: offset + i as u64,
        };
        decode(buf, at, phy, &want)
    })
    .map_err(|e| in_queue(s, &q, offset, max, e))?;
    Ok(QueueRead {
        next_offset: offset + records.len() as u64,
        records,
        min_offset: min,
        max_offset: max,
        scanned_to: None,
    })
}

/// The queue a read at `offset` starts in, with its bounds (`None`: a queue never written,
/// read from 0), or OFFSET_OUT_OF_RANGE.
pub(super) fn queue_at(
    s: &Shared,
    topic: &str,
    queue_id: u32,
    offset: u64,
) -> Result<Option<(Arc<ConsumeQueue>, u64, u64)>, StoreError> {
    let Some(q) = s.queue(topic, queue_id) else {
        if offset == 0 {
            return Ok(None);
        }
        return Err(StoreError::OffsetOutOfRange {
            offset,
            min: 0,
            max: 0,
        });
    };
    let (min, max) = (q.min(), q.max());
    if offset < min || offset > max {
        return Err(StoreError::OffsetOutOfRange { offset, min, max });
    }
    Ok(Some((q, min, max)))
}

fn mismatch(offset: u64) -> StoreError {
    StoreError::Corrupt {
        offset,
        reason: "record does not match its consume-queue entry".into(),
    }
}

/// Reads the records of `entries` (in log order), fetching neighbours with one read each;
/// `decode` gets each record's index in `entries`, the buffer, its position there and its log
/// offset.
pub(super) fn read_entries<R>(
    s: &Shared,
    entries: &[CqEntry],
    decode: impl Fn(usize, &Bytes, usize, u64) -> Result<R, StoreError>,
) -> Result<Vec<R>, StoreError> {
    let mut out = Vec::with_capacity(entries.len());
    let mut i = 0;
    while i < entries.len() {
        let first = entries[i];
        let seg = s
            .log
            .segment_for(first.phy)
            .ok_or_else(|| gone(s, first.phy))?;
        let seg_end = seg.base + seg.len.load(Ordering::Acquire);
        let mut j = i + 1;
        let mut end = first.phy + u64::from(first.size);
        while j < entries.len() {
            let e = entries[j];
            let e_end = e.phy + u64::from(e.size);
            if e.phy < end || e.phy - end > MAX_GAP || e_end > seg_end {
                break;
            }
            end = e_end;
            j += 1;
        }
        let buf: Bytes = s.log.read_exact(first.phy, (end - first.phy) as usize)?;
        for (k, e) in entries[i..j].iter().enumerate() {
            out.push(decode(i + k, &buf, (e.phy - first.phy) as usize, e.phy)?);
        }
        i = j;
    }
    Ok(out)
}

/// A queue read whose records' segment retention deleted after the bounds check, before the
/// queue's head was trimmed: the error in the queue's offsets (the first entry the log still
/// holds), never in the log's, which a consumer would take for queue offsets and jump to.
pub(super) fn in_queue(
    s: &Shared,
    q: &ConsumeQueue,
    offset: u64,
    max: u64,
    e: StoreError,
) -> StoreError {
    if !matches!(e, StoreError::OffsetOutOfRange { .. }) {
        return e;
    }
    let log_min = s.log.min_offset().unwrap_or(0);
    match q.count_below(log_min).map(|first| first.max(q.min())) {
        Ok(first) if offset < first => StoreError::OffsetOutOfRange {
            offset,
            min: first.min(max),
            max,
        },
        Ok(_) => StoreError::Corrupt {
            offset,
            reason: "the log no longer holds a record this queue points at".into(),
        },
        Err(io) => io.into(),
    }
}

fn gone(s: &Shared, offset: u64) -> StoreError {
    let min = s.log.min_offset().unwrap_or(0);
    StoreError::OffsetOutOfRange {
        offset,
        min,
        max: s.write_pos.load(Ordering::Acquire),
    }
}

/// The record at an index hit, if it is still there and intact.
fn index_hit(s: &Shared, phy: u64) -> Option<StoredRecord> {
    if phy < s.log.min_offset().unwrap_or(0) {
        return None;
    }
    match s.log.read_record(phy) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::debug!(offset = phy, error = %e, "stale index entry");
            None
        }
    }
}

fn visible(s: &Shared) -> u64 {
    *s.dispatched.borrow()
}

pub fn get_by_id(s: &Shared, message_id: &str) -> Result<Option<StoredRecord>, StoreError> {
    let mut found = None;
    s.index.lookup(
        id_hash(message_id.as_bytes()),
        visible(s),
        |phy| match index_hit(s, phy) {
            Some(r) if r.message_id == message_id => {
                found = Some(r);
                false
            }
            _ => true,
        },
    )?;
    Ok(found)
}

/// A record belongs to `topic`, or is a delayed message scheduled for it.
fn for_topic(r: &StoredRecord, topic: &str) -> bool {
    r.topic == topic
        || (r.sys_flag & super::record::SYS_FLAGS_TIMER != 0
            && sluice_proto::props::get(&r.properties, sluice_proto::props::REAL_TOPIC)
                == Some(topic))
}

pub fn find_by_key(
    s: &Shared,
    topic: &str,
    key: &str,
    max: usize,
) -> Result<Vec<StoredRecord>, StoreError> {
    let mut out = Vec::new();
    let mut seen = Seen::new();
    if max == 0 {
        return Ok(out);
    }
    s.index
        .lookup(key_hash(topic, key.as_bytes()), visible(s), |phy| {
            if seen.insert(phy) {
                if let Some(r) = index_hit(s, phy) {
                    if for_topic(&r, topic) && r.keys.iter().any(|k| k == key) {
                        out.push(r);
                    }
                }
            }
            out.len() < max
        })?;
    // Files are visited newest first, entries within a file newest first.
    out.sort_by_key(|r| std::cmp::Reverse(r.commit_log_offset));
    Ok(out)
}

pub fn find_by_time(
    s: &Shared,
    topic: &str,
    from_ms: i64,
    to_ms: i64,
    max: usize,
) -> Result<Vec<StoredRecord>, StoreError> {
    if max == 0 || from_ms > to_ms {
        return Ok(Vec::new());
    }
    let queues: Vec<_> = s
        .queues
        .read()
        .get(topic)
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    let mut hits: Vec<CqEntry> = Vec::new();
    // Entries of segments retention deleted (their queue's head not trimmed yet) are gone.
    let log_min = s.log.min_offset().unwrap_or(0);
    for q in queues {
        let mut at = q.offset_for_timestamp(from_ms)?;
        let mut taken = 0;
        'queue: while taken < max && at < q.max() {
            let batch = q.entries(at, 256)?;
            if batch.is_empty() {
                break;
            }
            for e in &batch {
                if e.store_ts > to_ms || taken == max {
                    break 'queue;
                }
                if e.phy < log_min {
                    continue;
                }
                hits.push(*e);
                taken += 1;
            }
            at += batch.len() as u64;
        }
    }
    hits.sort_by_key(|e| (e.store_ts, e.phy));
    hits.truncate(max);
    // Read in log order, hand out oldest first.
    let mut by_phy = hits.clone();
    by_phy.sort_by_key(|e| e.phy);
    let read = |entries: &[CqEntry]| {
        read_entries(s, entries, |_, buf, at, phy| {
            let r = commitlog::decode_at(buf, at, phy)?;
            if r.topic == topic {
                Ok(r)
            } else {
                Err(mismatch(phy))
            }
        })
    };
    // Retention ran during the read: what it deleted is left out.
    let mut recs = match read(&by_phy) {
        Err(StoreError::OffsetOutOfRange { .. }) => {
            let log_min = s.log.min_offset().unwrap_or(0);
            by_phy.retain(|e| e.phy >= log_min);
            read(&by_phy)?
        }
        r => r?,
    };
    recs.sort_by_key(|r| (r.store_timestamp_ms, r.commit_log_offset));
    Ok(recs)
}

impl StoredRecord {
    /// The record as `sluice.v1` carries it (no timer state).
    pub fn into_wire(self) -> sluice_proto::v1::StoredMessage {
        sluice_proto::v1::StoredMessage {
            topic: self.topic,
            queue_id: self.queue_id,
            queue_offset: self.queue_offset,
            commit_log_offset: self.commit_log_offset,
            message_id: self.message_id,
            body: self.body,
            tag: self.tag,
            keys: self.keys,
            properties: self.properties.into_iter().collect(),
            flag: self.flag,
            born_timestamp_ms: self.born_timestamp_ms,
            born_host: self.born_host,
            store_timestamp_ms: self.store_timestamp_ms,
            store_host: self.store_host,
            reconsume_times: self.reconsume_times,
            sys_flag: self.sys_flag,
            prepared_transaction_offset: self.prepared_transaction_offset,
            body_crc: self.body_crc,
            store_size: self.store_size,
            timer: None,
        }
    }
}
