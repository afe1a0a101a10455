//! The timer index: every delayed message's due time, on disk, built by the dispatcher from
//! the commit log like the consume queues (and rebuilt from the log after a crash).
//!
//! A delayed message is stored as a *scheduled* record (topic `%TIMER%`); its commit-log offset
//! is the timer's identity. The index appends one fixed entry per scheduled record (`entry.rs`)
//! to files of `per_file` entries named by their first entry number, and chains the entries of
//! each one-second *slot* (the entry keeps the number of the slot's previous entry), so memory
//! holds only the slot heads and a sample of offsets, not the timers: 10 million pending
//! timers cost their 480 MB on disk and a few MB here. A *fired* record (the delivered message,
//! carrying the timer's offset) or a *cancel* record resolves the entry in place; which record
//! did it is kept, so a truncation or a crash can undo exactly what it lost.
//!
//! Only the dispatcher thread changes the index; the leader's timer task reads slots and
//! chains under the same lock (`Shared::timers`). A file goes once every entry in it is
//! resolved by a record below a checkpoint. The lowest pending scheduled record is the
//! retention *floor*: the commit log keeps every segment from there on (ARCHITECTURE.md).

mod entry;
mod file;
mod reads;
mod sink;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::PathBuf;

pub use entry::{TimerEntry, TimerState, ENTRY_LEN};
use file::Files;
pub use sink::{Indexed, HINT_MS};

/// Width of a slot.
pub const SLOT_MS: i64 = 1000;
/// One sampled offset per this many entries (finding a timer by offset reads one block).
const SAMPLE: u64 = 64;

pub fn slot_of(due_ms: i64) -> i64 {
    due_ms.div_euclid(SLOT_MS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// 1 + number of the slot's newest entry.
    head: u64,
    pending: u64,
}

/// What resolving a timer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// It was pending and now is fired / cancelled.
    Now,
    /// The same record resolved it before (re-dispatch after a restart).
    Again,
    /// Another record had resolved it already (or it is not in the index): nothing changed.
    Before(Option<TimerState>),
}

/// The in-memory part: slot heads, counts, offset samples. Rebuilt by visiting every entry
/// in order (at open, after a truncation).
#[derive(Default)]
struct Mem {
    /// Entries from here on may be pending (everything below is resolved).
    first_pending: Option<u64>,
    pending: u64,
    slots: BTreeMap<i64, Slot>,
    /// Offset of every `SAMPLE`-th entry from `samples_base` on (the first sample may be of a
    /// later entry: the first one held).
    samples: VecDeque<u64>,
    samples_base: u64,
    last_phy: Option<u64>,
    /// The floor as last computed; dropped when the timer it names is resolved.
    floor: Option<u64>,
}

impl Mem {
    fn visit(&mut self, e: &TimerEntry) {
        self.sample(e.no, e.sched_phy);
        let slot = self.slots.entry(slot_of(e.due_ms)).or_insert(Slot {
            head: 0,
            pending: 0,
        });
        slot.head = e.no + 1;
        if e.is_pending() {
            slot.pending += 1;
            self.pending += 1;
            if self.first_pending.is_none() {
                self.first_pending = Some(e.no);
            }
        }
        self.last_phy = Some(e.sched_phy);
    }

    fn finish(&mut self, next_no: u64) {
        self.slots.retain(|_, s| s.pending > 0);
        if self.first_pending.is_none() {
            self.first_pending = Some(next_no);
        }
    }

    fn sample(&mut self, no: u64, phy: u64) {
        if self.samples.is_empty() {
            self.samples_base = no - no % SAMPLE;
            self.samples.push_back(phy);
            return;
        }
        if no.is_multiple_of(SAMPLE) {
            let want = (no - self.samples_base) / SAMPLE;
            while (self.samples.len() as u64) <= want {
                self.samples.push_back(phy);
            }
        }
    }
}

pub struct TimerIndex {
    files: Files,
    mem: Mem,
}

impl TimerIndex {
    /// Opens the index under `dir`, keeping what records below `keep_below` did (the
    /// checkpoint vouches for it) and undoing the rest. Returns the index and, when entries
    /// below `keep_below` were damaged, the offset to re-dispatch from to rebuild them.
    pub fn open(
        dir: PathBuf,
        per_file: u64,
        keep_below: u64,
    ) -> io::Result<(TimerIndex, Option<u64>)> {
        let mut mem = Mem::default();
        let (files, rebuild_from) =
            Files::open(dir, per_file.max(SAMPLE), keep_below, &mut |e| mem.visit(e))?;
        mem.finish(files.next_no());
        Ok((TimerIndex { files, mem }, rebuild_from))
    }

    /// Timers waiting.
    pub fn pending(&self) -> u64 {
        self.mem.pending
    }

    /// A scheduled record at `sched_phy` was dispatched. Re-dispatch of a record the index
    /// holds already is a no-op.
    pub fn schedule(&mut self, sched_phy: u64, due_ms: i64, size: u32) -> io::Result<()> {
        let m = &mut self.mem;
        if m.last_phy.is_some_and(|p| sched_phy <= p) {
            return Ok(());
        }
        let no = self.files.next_no();
        let head = m.slots.get(&slot_of(due_ms)).map_or(0, |s| s.head);
        let e = TimerEntry {
            no,
            sched_phy,
            due_ms,
            size,
            state: TimerState::Pending,
            resolved_by: 0,
            prev: head,
        };
        self.files.append(&e)?;
        if m.pending == 0 {
            m.first_pending = Some(no);
            m.floor = Some(sched_phy);
        }
        m.visit(&e);
        Ok(())
    }

    /// The record at `by` fires or cancels the timer at `sched_phy`.
    pub fn resolve(&mut self, sched_phy: u64, by: u64, state: TimerState) -> io::Result<Resolved> {
        let Some(mut e) = self.find(sched_phy)? else {
            return Ok(Resolved::Before(None));
        };
        if !e.is_pending() {
            return Ok(if e.resolved_by == by && e.state == state {
                Resolved::Again
            } else {
                Resolved::Before(Some(e.state))
            });
        }
        e.state = state;
        e.resolved_by = by;
        self.files.write(&e)?;
        self.files.resolved(e.no, by);
        let m = &mut self.mem;
        if m.first_pending == Some(e.no) {
            m.floor = None;
        }
        m.pending = m.pending.saturating_sub(1);
        let slot = slot_of(e.due_ms);
        if let Some(s) = m.slots.get_mut(&slot) {
            s.pending = s.pending.saturating_sub(1);
            if s.pending == 0 {
                m.slots.remove(&slot);
            }
        }
        Ok(Resolved::Now)
    }

    /// The entry of the timer whose scheduled record is at `sched_phy`, if the index has it.
    pub fn find(&mut self, sched_phy: u64) -> io::Result<Option<TimerEntry>> {
        let m = &self.mem;
        if m.samples.is_empty() || m.last_phy.is_none_or(|p| sched_phy > p) {
            return Ok(None);
        }
        // The last sample at or below the offset starts the block that holds it.
        let i = m.samples.partition_point(|&p| p <= sched_phy);
        let Some(i) = i.checked_sub(1) else {
            return Ok(None);
        };
        let mut lo = (m.samples_base + i as u64 * SAMPLE).max(self.files.first_no());
        let mut hi = (m.samples_base + (i as u64 + 1) * SAMPLE).min(self.files.next_no());
        // Binary search through the block cache: timers firing in a burst sit next to each
        // other, so most lookups read no file at all.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(e) = self.files.read_cached(mid)? else {
                tracing::error!(entry = mid, "unreadable timer entry");
                return Ok(None);
            };
            match e.sched_phy.cmp(&sched_phy) {
                std::cmp::Ordering::Equal => return Ok(Some(e)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// Slots up to `slot` that hold pending timers, with their heads (`chain` walks them).
    pub fn slots_upto(&self, slot: i64) -> Vec<(i64, u64)> {
        self.mem
            .slots
            .range(..=slot)
            .map(|(s, v)| (*s, v.head))
            .collect()
    }

    /// The earliest slot with pending timers.
    pub fn first_slot(&self) -> Option<i64> {
        self.mem.slots.keys().next().copied()
    }

    /// The pending entries of a chain from `head` down to (not including) `stop` (a head seen
    /// before, or 0 for the whole chain), newest first.
    pub fn chain(&mut self, head: u64, stop: u64) -> io::Result<Vec<TimerEntry>> {
        let mut out = Vec::new();
        let mut at = head;
        let first = self.files.first_no() + 1;
        while at != 0 && at != stop && at >= first {
            let Some(e) = self.files.read_cached(at - 1)? else {
                tracing::error!(entry = at - 1, "unreadable timer entry; chain cut");
                break;
            };
            if e.is_pending() {
                out.push(e);
            }
            if e.prev >= at {
                tracing::error!(
                    entry = at - 1,
                    prev = e.prev,
                    "timer chain does not go back; cut"
                );
                break;
            }
            at = e.prev;
        }
        Ok(out)
    }

    /// The commit-log offset below which no pending timer's record lies (`u64::MAX`: none).
    pub fn floor(&mut self) -> io::Result<u64> {
        let next = self.files.next_no();
        if self.mem.pending == 0 {
            self.mem.first_pending = Some(next);
            return Ok(u64::MAX);
        }
        if let Some(f) = self.mem.floor {
            return Ok(f);
        }
        let mut from = self
            .mem
            .first_pending
            .unwrap_or(0)
            .max(self.files.first_no());
        while from < next {
            let upto = (from + 1024).min(next);
            for e in self.files.read_range(from, upto)? {
                if e.is_pending() {
                    self.mem.first_pending = Some(e.no);
                    self.mem.floor = Some(e.sched_phy);
                    return Ok(e.sched_phy);
                }
            }
            from = upto;
            self.mem.first_pending = Some(from);
        }
        Ok(u64::MAX)
    }

    /// Drops what records at or after `phy` did (a truncated log tail): their entries go, and
    /// timers they resolved are pending again.
    pub fn truncate(&mut self, phy: u64) -> io::Result<()> {
        let mut mem = Mem::default();
        self.files.cut(phy, &mut |e| mem.visit(e))?;
        mem.finish(self.files.next_no());
        self.mem = mem;
        Ok(())
    }

    /// Snapshot install: every entry goes.
    pub fn reset(&mut self) -> io::Result<()> {
        self.files.clear()?;
        self.mem = Mem::default();
        self.mem.finish(0);
        Ok(())
    }

    /// Writes buffered entries to the files (the dispatcher calls it when it publishes).
    pub fn flush(&mut self) -> io::Result<()> {
        self.files.flush()
    }

    /// Makes the index durable (for a checkpoint about to be written).
    pub fn sync(&mut self) -> io::Result<()> {
        self.files.sync()
    }

    /// Deletes files whose every entry was resolved by a record below `checkpoint` (a
    /// checkpoint already stored: re-dispatch never needs them again).
    pub fn gc(&mut self, checkpoint: u64) -> io::Result<()> {
        if let Some(first) = self.files.drop_resolved(checkpoint)? {
            let m = &mut self.mem;
            while m.samples_base + SAMPLE <= first && m.samples.len() > 1 {
                m.samples.pop_front();
                m.samples_base += SAMPLE;
            }
        }
        Ok(())
    }

    pub fn disk_bytes(&self) -> u64 {
        self.files.disk_bytes()
    }
}

#[cfg(test)]
mod tests;
