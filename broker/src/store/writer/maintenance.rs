//! The writer's maintenance: truncating the log (with its consume queues and index) and
//! deleting whole segments below a limit for retention.

use super::*;

impl Writer {
    pub(super) fn truncate(&mut self, offset: u64) -> Result<(), StoreError> {
        let min = self.shared.log.min_offset().unwrap_or(0);
        if offset > self.pos || offset < min {
            return Err(StoreError::OffsetOutOfRange {
                offset,
                min,
                max: self.pos,
            });
        }
        if offset == self.pos {
            return Ok(());
        }
        let at_segment_start = self
            .shared
            .log
            .segment_for(offset)
            .is_some_and(|s| s.base == offset);
        if !at_segment_start {
            // Must be a record boundary: the record there names its own offset (or the
            // segment filler follows the last record of a segment).
            let boundary = self.shared.log.read_record(offset).is_ok()
                || self.is_filler(offset).unwrap_or(false);
            if !boundary {
                return Err(StoreError::Invalid(format!(
                    "commit-log offset {offset} is not a record boundary"
                )));
            }
        }
        // Pending fsyncs must not confirm data past the new end.
        self.flush_all()?;
        let reset = self.first_queue_offsets(offset)?;
        let confirmed = self.shared.confirmed.load(Ordering::Acquire);
        self.shared
            .confirmed
            .store(confirmed.min(offset), Ordering::Release);
        let (tx, rx) = oneshot::channel();
        self.shared
            .dispatch_tx
            .send(DispatchMsg::Truncate { offset, reply: tx })
            .map_err(|_| StoreError::Closed)?;
        wait_for(rx).map_err(|_| StoreError::Closed)??;
        // Drop whole segments after the one holding `offset`, then cut that one.
        let Some(keep) = self.shared.log.segment_for(offset) else {
            return Err(StoreError::OffsetOutOfRange {
                offset,
                min,
                max: self.pos,
            });
        };
        let removed = self.shared.log.remove_from(keep.base + 1);
        let mut freed = 0;
        for seg in removed {
            freed += seg.len.load(Ordering::Acquire);
            std::fs::remove_file(&seg.path)?;
        }
        let keep_len = offset - keep.base;
        freed += keep.len.load(Ordering::Acquire).saturating_sub(keep_len);
        keep.file.set_len(keep_len)?;
        keep.file.sync_all()?;
        sync_dir(&self.shared.log.dir)?;
        keep.len.store(keep_len, Ordering::Release);
        self.shared.disk.log_bytes.fetch_sub(
            freed.min(self.shared.disk.log_bytes.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        self.active = keep;
        self.pos = offset;
        self.shared.write_pos.store(offset, Ordering::Release);
        self.shared.flushed.fetch_min(offset, Ordering::AcqRel);
        for (topic, m) in reset {
            for (qid, first) in m {
                if let Some(n) = self.next.get_mut(&topic).and_then(|q| q.get_mut(&qid)) {
                    *n = first;
                }
            }
        }
        self.shared.acked_up_to(offset);
        Ok(())
    }

    /// For every queue with messages in `[offset, pos)`, the queue offset of its first one.
    pub(super) fn first_queue_offsets(
        &self,
        offset: u64,
    ) -> Result<HashMap<String, HashMap<u32, u64>>, StoreError> {
        let mut out: HashMap<String, HashMap<u32, u64>> = HashMap::new();
        self.shared.log.for_each_record(offset, self.pos, |rec| {
            if rec.sys_flag & record::SYS_FLAGS_SYSTEM == 0 {
                out.entry(rec.topic.clone())
                    .or_default()
                    .entry(rec.queue_id)
                    .or_insert(rec.queue_offset);
            }
        })?;
        Ok(out)
    }

    pub(super) fn is_filler(&self, at: u64) -> Result<bool, StoreError> {
        let b = self.shared.log.read_exact(at, FILLER_LEN)?;
        Ok(record::probe(&b) == record::Probe::Filler)
    }

    /// Segments ending at or below this offset may be deleted: dispatched and confirmed.
    pub(super) fn deletable_below(&self) -> u64 {
        self.shared
            .dispatched_and_confirmed()
            .min(self.shared.timer_floor.load(Ordering::Acquire))
            .min(self.shared.tx_floor.load(Ordering::Acquire))
    }

    /// Deletes up to `count` of the oldest segments that end at or below `limit` (never the
    /// active one); returns the new minimum and the unlinked segments, for the caller to close
    /// off this thread (see [`Deleted`]).
    pub(super) fn delete_segments_below(
        &mut self,
        limit: u64,
        count: usize,
    ) -> Result<Deleted, StoreError> {
        let segs = self.shared.log.snapshot();
        let mut allowed = 0;
        for pair in segs.windows(2).take(count) {
            if pair[1].base <= limit {
                allowed += 1;
            } else {
                break;
            }
        }
        let removed = self.shared.log.remove_head(allowed);
        let mut freed = 0;
        for seg in &removed {
            freed += seg.len.load(Ordering::Acquire);
            std::fs::remove_file(&seg.path)?;
            tracing::info!(segment = seg.base, "retention deleted commit-log segment");
        }
        if !removed.is_empty() {
            sync_dir(&self.shared.log.dir)?;
        }
        let disk = &self.shared.disk;
        disk.log_bytes.fetch_sub(
            freed.min(disk.log_bytes.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        let min = self.shared.log.min_offset().unwrap_or(0);
        if !removed.is_empty() {
            let _ = self
                .shared
                .dispatch_tx
                .send(DispatchMsg::Trim { log_min: min });
        }
        Ok(Deleted {
            log_min: min,
            segments: removed,
        })
    }
}
