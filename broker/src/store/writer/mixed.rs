//! Mixed batches on a standalone store: each message takes the next offset of its own queue.

use super::super::record;
use super::super::Appended;
use super::{EncodedBatch, Writer};

impl Writer {
    /// Seals the records of a mixed batch: each message takes the next offset of its own queue
    /// (undo remembers each queue's first), a state record none; only messages are answered.
    pub(super) fn seal_mixed(
        &mut self,
        batch: &mut EncodedBatch,
        base: u64,
        ts: i64,
        entries: &mut Vec<Appended>,
        undo: &mut Vec<(String, u32, u64)>,
    ) {
        for (&(start, len), queue) in batch.records.iter().zip(&batch.queues) {
            let phy = base + start as u64;
            let qoff = match queue {
                None => 0,
                Some((topic, qid)) => {
                    let next = self
                        .next
                        .entry(topic.clone())
                        .or_default()
                        .entry(*qid)
                        .or_insert(0);
                    let q = *next;
                    *next += 1;
                    if !undo.iter().any(|(t, id, _)| id == qid && t == topic) {
                        undo.push((topic.clone(), *qid, q));
                    }
                    q
                }
            };
            record::seal(&mut batch.buf[start..start + len], qoff, phy, ts);
            if queue.is_some() {
                entries.push(Appended {
                    queue_offset: qoff,
                    commit_log_offset: phy,
                    size: len as u32,
                    store_timestamp_ms: ts,
                });
            }
        }
    }
}
