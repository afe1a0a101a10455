//! The dispatcher's durable points: checkpoints of what it dispatched, and the resets and
//! truncations that move it back (a Raft log truncated, a snapshot installed).

use super::*;

impl Dispatcher {
    /// Makes everything dispatched durable and records it in the checkpoint.
    pub(super) fn checkpoint(&mut self) -> io::Result<Option<Exit>> {
        self.last_ckpt = Instant::now();
        if self.pos == self.ckpt_pos {
            return Ok(None);
        }
        self.publish()?;
        // The checkpoint promises the commit log is durable up to `pos` as well.
        for seg in self.shared.log.snapshot() {
            let end = seg.base + seg.len.load(Ordering::Acquire);
            if end > self.ckpt_pos && seg.base < self.pos {
                seg.file.sync_data()?;
            }
        }
        for (_, (q, from)) in self.dirty.drain() {
            q.sync_from(from)?;
        }
        self.shared.index.sync()?;
        self.shared.timers.lock().sync()?;
        if let Some(r) = &self.shared.raft {
            // The checkpoint also vouches for the entry index below `pos`: recovery trusts
            // it there and rebuilds it from the records above. Entries before the previous
            // checkpoint were synced then and are never rewritten (they are confirmed).
            let from = r
                .first_at_or_after(self.ckpt_pos)
                .map_or(0, |i| i.saturating_sub(1));
            r.entries.sync_from(from)?;
        }
        let pos = self.pos;
        let exit = self.store_checkpoint(pos)?;
        // Only now: a file resolved below the stored checkpoint is never needed again.
        self.shared.timers.lock().gc(pos)?;
        Ok(exit)
    }

    pub(super) fn store_checkpoint(&mut self, pos: u64) -> io::Result<Option<Exit>> {
        let now = crate::store::now_ms();
        match checkpoint::store(
            &self.shared.config.data_dir,
            &Checkpoint {
                dispatched: pos,
                written_at_ms: now,
                queues: self
                    .shared
                    .all_queues()
                    .iter()
                    .map(|q| (q.topic.clone(), q.queue_id, q.max()))
                    .collect(),
            },
        )? {
            Stored::Done => {
                self.ckpt_pos = pos;
                Ok(None)
            }
            Stored::Crashed => Ok(Some(Exit::Crashed)),
        }
    }

    /// The next queue offset of every queue at commit-log `at`: what the consume queues hold
    /// below it, plus the records between the dispatch position and `at`.
    pub(super) fn queue_table(&mut self, at: u64, base: QueueTable) -> io::Result<QueueTable> {
        self.publish()?;
        let upto = at.min(self.pos);
        let mut table: BTreeMap<(String, u32), u64> =
            base.into_iter().map(|(t, q, n)| ((t, q), n)).collect();
        for q in self.shared.all_queues() {
            let n = q.count_below(upto)?;
            let e = table.entry((q.topic.clone(), q.queue_id)).or_insert(0);
            *e = (*e).max(n);
        }
        if upto < at {
            self.shared
                .log
                .for_each_record(upto, at, |r| {
                    if r.sys_flag & record::SYS_FLAGS_SYSTEM == 0 {
                        let e = table.entry((r.topic.clone(), r.queue_id)).or_insert(0);
                        *e = (*e).max(r.queue_offset + 1);
                    }
                })
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        Ok(table.into_iter().map(|((t, q), n)| (t, q, n)).collect())
    }

    /// Snapshot install: every consume queue and the index go; queues restart at `table`.
    pub(super) fn reset(&mut self, start: u64, table: &QueueTable) -> io::Result<()> {
        self.take_written();
        self.recent.clear();
        self.pending.clear();
        self.dirty.clear();
        self.index = IndexWriter::default();
        self.stalled = false;
        let shared = self.shared.clone();
        let queues = crate::store::raftlog::recover::reset_queues(
            &shared.cq_root,
            shared.config.cq_entries_per_file,
            table,
        )?;
        *shared.queues.write() = queues;
        shared.index.truncate(0)?;
        shared.timers.lock().reset()?;
        self.timers_changed = true;
        self.timers_due_soon = true;
        self.pos = start;
        self.index_floor = start;
        shared.dispatched.send_replace(start);
        match self.store_checkpoint(start)? {
            Some(_) => Err(io::Error::other("checkpoint failpoint during reset")),
            None => Ok(()),
        }
    }

    /// Drops consume-queue and index entries at or above `offset`.
    pub(super) fn truncate(&mut self, offset: u64) -> io::Result<Option<Exit>> {
        // Bytes at or after `offset` are about to be cut (and may be written again).
        self.take_written();
        self.recent.retain(|(at, _)| *at < offset);
        if let Some((at, b)) = self.recent.back_mut() {
            b.truncate(b.len().min((offset - *at) as usize));
        }
        self.publish()?;
        self.stalled = false;
        if offset < self.pos {
            for q in self.shared.all_queues() {
                let keep = q.count_below(offset)?;
                q.truncate(keep)?;
            }
            self.shared.index.truncate(offset)?;
            self.shared.timers.lock().truncate(offset)?;
            self.timers_changed = true;
            self.timers_due_soon = true;
            self.index_floor = self.index_floor.min(offset);
            self.pending.clear();
            self.pos = offset;
            self.shared.dispatched.send_replace(offset);
        }
        if self.ckpt_pos > self.pos {
            return self.store_checkpoint(self.pos);
        }
        Ok(None)
    }
}
