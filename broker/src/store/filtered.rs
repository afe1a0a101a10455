//! Filtered queue reads: a subscription's filter applied on the broker, so messages it does
//! not take never leave it. The consume-queue entry's tag hash sorts most of them out before
//! their record is read; the filter looks at the record of each candidate; a read looks at a
//! bounded number of entries and says where it stopped, so a queue full of messages nobody
//! takes never holds a pull.

use bytes::Bytes;
use sluice_proto::record::{DispatchView, Fixed as _};

use super::cq::CqEntry;
use super::reader::{in_queue, queue_at, read_entries, Expected};
use super::shared::Shared;
use super::{commitlog, QueueRead, StoreError};

/// Consume-queue entries read at a time while scanning.
const SCAN_CHUNK: usize = 512;

/// What a filtered queue read keeps.
pub struct QueueFilter<'a> {
    /// Tag hashes a kept message's entry has (`None`: any). A hash is not the tag: `keep`
    /// decides for the entries that pass.
    pub tag_hashes: Option<&'a [u64]>,
    /// Whether a candidate record is kept.
    pub keep: &'a (dyn Fn(&DispatchView<'_>) -> bool + Send + Sync),
    /// Most consume-queue entries one read looks at (at least one).
    pub scan_limit: usize,
}

/// [`super::reader::read_queue_with`] keeping only what `filter` takes: up to `max_messages`
/// and `max_bytes` of kept records (at least one, if any), among at most `filter.scan_limit`
/// entries from `offset`. `next_offset` is past the last entry looked at (or taken, when a
/// limit stopped the read), so a read that kept nothing still moves on.
#[allow(clippy::too_many_arguments)]
pub fn read_queue_filtered_with<R>(
    s: &Shared,
    topic: &str,
    queue_id: u32,
    offset: u64,
    max_messages: usize,
    max_bytes: usize,
    filter: &QueueFilter<'_>,
    decode: impl Fn(&Bytes, usize, u64, &Expected<'_>) -> Result<R, StoreError>,
) -> Result<QueueRead<R>, StoreError> {
    let Some((q, min, max)) = queue_at(s, topic, queue_id, offset)? else {
        return Ok(QueueRead::empty(0, 0, 0));
    };
    let max_messages = max_messages.max(1);
    let scan_limit = filter.scan_limit.max(1);
    let mut records = Vec::new();
    let mut bytes = 0usize;
    let mut next = offset;
    let mut log_pos = None;
    'scan: while next < max && next - offset < (scan_limit as u64) {
        let want = SCAN_CHUNK.min(scan_limit - (next - offset) as usize);
        let entries = q.entries(next, want)?;
        if entries.is_empty() {
            if q.min() > next {
                // Retention trimmed the head meanwhile: the offset is gone, not empty.
                return Err(StoreError::OffsetOutOfRange {
                    offset,
                    min: q.min(),
                    max,
                });
            }
            break;
        }
        let scanned_to = next + entries.len() as u64;
        if let Some(last) = entries.last() {
            log_pos = Some(last.phy + u64::from(last.size));
        }
        let candidates: Vec<(u64, CqEntry)> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (next + i as u64, *e))
            .filter(|(_, e)| filter.tag_hashes.is_none_or(|h| h.contains(&e.tag_hash)))
            .collect();
        // Candidates are read a few at a time, as many as the answer still has room for, so a
        // filter that takes most messages does not read a whole chunk for a small pull.
        let mut groups = candidates
            .chunks(max_messages.saturating_sub(records.len()).max(1))
            .peekable();
        while let Some(group) = groups.next() {
            let picked: Vec<CqEntry> = group.iter().map(|(_, e)| *e).collect();
            let read = read_entries(s, &picked, |i, buf, at, phy| {
                let queue_offset = group.get(i).map_or(0, |(o, _)| *o);
                let want = Expected {
                    topic,
                    queue_id,
                    queue_offset,
                };
                let view = commitlog::view_at(buf, at, phy)?;
                want.check(view.topic, view.queue_id(), view.queue_offset(), phy)?;
                if !(filter.keep)(&view) {
                    return Ok(None);
                }
                decode(buf, at, phy, &want).map(Some)
            })
            .map_err(|e| in_queue(s, &q, offset, max, e))?;
            for ((queue_offset, e), r) in group.iter().zip(read) {
                let Some(r) = r else {
                    continue;
                };
                let full = records.len() >= max_messages
                    || (!records.is_empty() && bytes + e.size as usize > max_bytes);
                if full {
                    next = *queue_offset;
                    break 'scan;
                }
                bytes += e.size as usize;
                records.push(r);
            }
            if records.len() >= max_messages {
                // Full: the next candidate is where the next read starts (the entries before
                // it have other tags).
                next = groups
                    .peek()
                    .and_then(|g| g.first())
                    .map_or(scanned_to, |(o, _)| *o);
                break 'scan;
            }
        }
        next = scanned_to;
    }
    Ok(QueueRead {
        records,
        next_offset: next,
        min_offset: min,
        max_offset: max,
        scanned_to: log_pos,
    })
}
