//! The writer's raft-mode operations: persisting entries (filling in positions, term and
//! index), truncating a divergent tail, compaction, snapshot install, and making it durable.
//!
//! Ordering on disk: entries go to the commit log first (one positioned write per segment
//! touched; an entry never spans segments), then to the entry index. Hard state and
//! membership are only written to the control file by `sync`, after the log's fdatasync, so
//! a crash can never leave a hard state durable that names entries which are not. Compaction
//! and snapshot install write the control file before they delete anything.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use raft::prelude::{ConfState, Entry, HardState, SnapshotMetadata};
use tokio::sync::oneshot;

use super::{Deleted, Flow, Writer};
use crate::replication::LogStoreError;
use crate::store::commitlog::{sync_dir, Segment};
use crate::store::cq::ENTRY_LEN;
use crate::store::entry;
use crate::store::raftlog::control::{self, CompactionPoint, Control, QueueTable};
use crate::store::raftlog::{EntryLoc, LocErr, RaftShared};
use crate::store::record::{self, OFF_STORE_TS, OFF_SYS_FLAG, SYS_FLAGS_SYSTEM};
use crate::store::shared::DispatchMsg;
use crate::store::{FlushMode, StoreError};

/// Raft writes the writer performs for `CommitLogRaft`.
pub enum RaftOp {
    Append(Vec<Entry>),
    HardState(HardState),
    ConfState(ConfState),
    /// `data`: where the leader's log restarts and its queue offsets there (`None`: here).
    InstallSnapshot {
        meta: SnapshotMetadata,
        data: Option<(u64, QueueTable)>,
    },
    Compact(u64),
    Sync,
}

/// The writer's raft state.
pub struct RaftWriter {
    shared: Arc<RaftShared>,
    /// The raft directory (control file).
    dir: PathBuf,
    /// What the control file holds.
    durable: Control,
    /// The view's hard state or membership is newer than the control file's.
    dirty: bool,
}

impl RaftWriter {
    pub fn new(shared: Arc<RaftShared>, dir: PathBuf, durable: Control) -> Self {
        RaftWriter {
            shared,
            dir,
            durable,
            dirty: false,
        }
    }
}

/// Why a raft operation stopped.
pub enum Halt {
    Fail(LogStoreError),
    /// A failpoint simulated a crash: the writer stops at once (tests).
    Crash,
}

impl From<LogStoreError> for Halt {
    fn from(e: LogStoreError) -> Self {
        Halt::Fail(e)
    }
}

impl From<std::io::Error> for Halt {
    fn from(e: std::io::Error) -> Self {
        Halt::Fail(LogStoreError::Io(e))
    }
}

impl From<StoreError> for Halt {
    fn from(e: StoreError) -> Self {
        Halt::Fail(log_err(e))
    }
}

pub fn log_err(e: StoreError) -> LogStoreError {
    match e {
        StoreError::Io(e) => LogStoreError::Io(e),
        other => LogStoreError::Corrupt(other.to_string()),
    }
}

fn loc_err(index: u64, first: u64, e: LocErr) -> LogStoreError {
    match e {
        LocErr::Compacted => LogStoreError::Compacted {
            index,
            first_index: first,
        },
        LocErr::Unavailable => LogStoreError::Corrupt(format!("entry {index} is not in the log")),
        LocErr::Corrupt(why) => LogStoreError::Corrupt(why),
    }
}

/// Entries buffered for the entry index, and queue offsets to restore if their write fails.
#[derive(Default)]
struct Pending {
    first: u64,
    idx: Vec<u8>,
    undo: Vec<(String, u32, u64)>,
    max_ts: i64,
}

impl Writer {
    fn raft_parts(&mut self) -> Result<(Arc<RaftShared>, &mut RaftWriter), LogStoreError> {
        match self.raft.as_mut() {
            Some(rw) => Ok((rw.shared.clone(), rw)),
            None => Err(LogStoreError::Corrupt(
                "the store is not in raft mode".into(),
            )),
        }
    }

    fn raft_shared(&mut self) -> Result<Arc<RaftShared>, LogStoreError> {
        Ok(self.raft_parts()?.0)
    }

    /// Runs one raft write (the writer thread's `control` step).
    pub(super) fn raft_op(&mut self, op: RaftOp) -> Result<(), Halt> {
        match op {
            RaftOp::Append(entries) => self.raft_append(&entries),
            RaftOp::HardState(hs) => {
                let (rs, rw) = self.raft_parts()?;
                // Only term and vote must be durable before Raft acts on them; the commit index
                // is persisted lazily (on the next term/vote/membership write) and re-learned
                // from the leader after a restart. Rewriting the control file for every
                // commit advance would cost four fsyncs per replicated write.
                let d = &rw.durable.hard_state;
                if hs.term != d.term || hs.vote != d.vote {
                    rw.dirty = true;
                }
                rs.view.write().hard_state = hs;
                Ok(())
            }
            RaftOp::ConfState(cs) => {
                let (rs, rw) = self.raft_parts()?;
                if cs != rw.durable.conf_state {
                    rw.dirty = true;
                }
                rs.view.write().conf_state = cs;
                Ok(())
            }
            RaftOp::InstallSnapshot { meta, data } => self.raft_install(&meta, data),
            RaftOp::Compact(index) => Ok(self.raft_compact(index)?),
            RaftOp::Sync => {
                // The log is fdatasynced before a control file that may name its entries
                // (commit index) is written. Otherwise only sync flush pays for it: async flush
                // acks entries from the page cache, as a single broker does (the flusher
                // thread writes them back on its interval), so a quorum ack means a majority
                // of processes hold the entry, which survives kill -9 of any minority.
                let dirty = self.raft_parts()?.1.dirty;
                if dirty || self.shared.config.flush == FlushMode::Sync {
                    self.flush_all()?;
                }
                Ok(self.raft_sync_control()?)
            }
        }
    }

    /// Writes hard state and membership to the control file if they changed. The caller has
    /// made the log durable first.
    pub(super) fn raft_sync_control(&mut self) -> Result<(), LogStoreError> {
        let (rs, rw) = self.raft_parts()?;
        if !rw.dirty {
            return Ok(());
        }
        {
            let v = rs.view.read();
            rw.durable.hard_state = v.hard_state.clone();
            rw.durable.conf_state = v.conf_state.clone();
        }
        control::store(&rw.dir, &rw.durable).map_err(log_err)?;
        rw.dirty = false;
        Ok(())
    }

    fn raft_append(&mut self, entries: &[Entry]) -> Result<(), Halt> {
        let rs = self.raft_shared()?;
        let Some(head) = entries.first() else {
            return Ok(());
        };
        for w in entries.windows(2) {
            if w[1].index != w[0].index + 1 {
                return Err(LogStoreError::NotContiguous {
                    prev: w[0].index,
                    got: w[1].index,
                }
                .into());
            }
        }
        let (first, last) = (rs.first_index(), rs.last_index());
        if head.index < first {
            return Err(LogStoreError::Compacted {
                index: head.index,
                first_index: first,
            }
            .into());
        }
        if head.index > last + 1 {
            return Err(LogStoreError::Gap {
                first: head.index,
                last,
            }
            .into());
        }
        let forms: Vec<_> = entries.iter().map(entry::stored_form).collect();
        if let Some(f) = forms.iter().find(|f| u32::try_from(f.len()).is_err()) {
            return Err(LogStoreError::Corrupt(format!("entry of {} bytes", f.len())).into());
        }
        if head.index <= last {
            // Raft overwrites an uncommitted tail; committed entries are never rewritten, so
            // a request to do so means the replicas diverged.
            let loc = rs
                .locate(head.index)
                .map_err(|e| loc_err(head.index, first, e))?;
            let confirmed = self.shared.confirmed.load(Ordering::Acquire);
            if loc.offset < confirmed {
                return Err(LogStoreError::Corrupt(format!(
                    "refusing to truncate the log at entry {} (offset {}): the confirmed \
                     (committed) offset is {confirmed}",
                    head.index, loc.offset
                ))
                .into());
            }
            self.truncate(loc.offset)?;
            rs.entries.truncate(head.index)?;
        }
        let mut p = Pending {
            first: head.index,
            ..Default::default()
        };
        // One reservation for the whole append (see `write_group`).
        self.buf.reserve(forms.iter().map(|f| f.len()).sum());
        for (e, form) in entries.iter().zip(forms) {
            let size = form.len() as u64;
            if let Some(target) = self.roll_target(self.pos + self.buf.len() as u64, size) {
                self.raft_write(&rs, &mut p)?;
                self.roll_to(target)?;
            }
            let at = self.pos + self.buf.len() as u64;
            // Filled in place in the write buffer.
            let start = self.buf.len();
            self.buf.extend_from_slice(&form);
            if let Err(err) = fill_entry(&mut self.next, &mut self.buf[start..], at, e, &mut p) {
                self.undo_next(&mut p.undo);
                self.buf.clear();
                return Err(err.into());
            }
            let loc = EntryLoc {
                offset: at,
                len: size as u32,
                term: e.term,
            };
            p.idx.extend_from_slice(&loc.to_cq(e.index).encode());
        }
        self.raft_write(&rs, &mut p)
    }

    fn undo_next(&mut self, undo: &mut Vec<(String, u32, u64)>) {
        for (topic, qid, first) in undo.drain(..).rev() {
            if let Some(n) = self.next.get_mut(&topic).and_then(|m| m.get_mut(&qid)) {
                *n = first;
            }
        }
    }

    /// Writes the buffered entries, then their entry-index entries.
    fn raft_write(&mut self, rs: &RaftShared, p: &mut Pending) -> Result<(), Halt> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match self.write_buf(p.max_ts) {
            Ok(Flow::Continue) => {}
            Ok(_) => return Err(Halt::Crash),
            Err(e) => {
                self.undo_next(&mut p.undo);
                p.idx.clear();
                return Err(e.into());
            }
        }
        p.undo.clear();
        rs.entries.write(p.first, &p.idx)?;
        let n = (p.idx.len() / ENTRY_LEN) as u64;
        rs.entries.publish(p.first + n, 0);
        p.first += n;
        p.idx.clear();
        Ok(())
    }

    /// Asks the dispatcher for the next queue offsets at commit-log offset `at`.
    fn queue_table(&self, at: u64, base: QueueTable) -> Result<QueueTable, LogStoreError> {
        let (tx, rx) = oneshot::channel();
        let closed = || LogStoreError::Io(std::io::Error::other("the dispatcher stopped"));
        self.shared
            .dispatch_tx
            .send(DispatchMsg::QueueTable {
                at,
                base,
                reply: tx,
            })
            .map_err(|_| closed())?;
        super::wait_for(rx)
            .map_err(|_| closed())?
            .map_err(LogStoreError::Io)
    }

    /// Moves the raft view's start to `index` (first index after), durably; deletes nothing.
    fn compact_view(&mut self, index: u64) -> Result<(), LogStoreError> {
        let rs = self.raft_shared()?;
        let (first, last) = (rs.first_index(), rs.last_index());
        let prev = rs
            .locate(index - 1)
            .map_err(|e| loc_err(index - 1, first, e))?;
        let phy = if index <= last {
            rs.locate(index)
                .map_err(|e| loc_err(index, first, e))?
                .offset
        } else {
            prev.end()
        };
        let base = rs.view.read().cp.table.clone();
        let table = self.queue_table(phy, base)?;
        let cp = CompactionPoint {
            index: index - 1,
            term: prev.term,
            phy,
            table,
        };
        let (_, rw) = self.raft_parts()?;
        // Compacted entries are committed: the persisted commit index covers them, as Raft
        // requires of a log that starts after them.
        rw.durable.cp = cp.clone();
        let commit = &mut rw.durable.hard_state.commit;
        *commit = (*commit).max(index - 1);
        control::store(&rw.dir, &rw.durable).map_err(log_err)?;
        {
            let mut v = rs.view.write();
            v.cp = cp;
            v.hard_state.commit = v.hard_state.commit.max(index - 1);
        }
        rs.entries.trim_head(phy)?;
        Ok(())
    }

    /// `compact(index)`: the raft log starts at `index`; whole segments below it that are
    /// also confirmed and dispatched are deleted.
    fn raft_compact(&mut self, index: u64) -> Result<(), LogStoreError> {
        let rs = self.raft_shared()?;
        let (first, last) = (rs.first_index(), rs.last_index());
        if index <= first {
            return Ok(());
        }
        if index > last + 1 {
            return Err(LogStoreError::CompactBeyondLog { index, last });
        }
        self.compact_view(index)?;
        let limit = self.deletable_below().min(rs.view.read().cp.phy);
        self.delete_segments_below(limit, usize::MAX)
            .map(|d| super::close_elsewhere(d.segments))
            .map_err(log_err)
    }

    /// Retention in raft mode: deletes up to `count` old segments that lie below the
    /// confirmed offset and moves the raft view's start past them.
    pub(super) fn raft_retention(&mut self, count: usize) -> Result<Deleted, StoreError> {
        let limit = self.deletable_below();
        let segs = self.shared.log.snapshot();
        let allowed = segs
            .windows(2)
            .take(count)
            .take_while(|pair| pair[1].base <= limit)
            .count();
        if allowed == 0 {
            return Ok(Deleted {
                log_min: self.shared.log.min_offset().unwrap_or(0),
                segments: Vec::new(),
            });
        }
        let keep_from = segs[allowed].base;
        let rs = self
            .raft_shared()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let index = rs.first_at_or_after(keep_from).map_err(|e| match e {
            LocErr::Corrupt(why) => StoreError::Corrupt {
                offset: keep_from,
                reason: why,
            },
            _ => StoreError::Invalid(format!("no raft entry near offset {keep_from}")),
        })?;
        if index > rs.first_index() {
            self.compact_view(index).map_err(|e| match e {
                LogStoreError::Io(e) => StoreError::Io(e),
                other => StoreError::Corrupt {
                    offset: keep_from,
                    reason: other.to_string(),
                },
            })?;
        }
        let limit = limit.min(rs.view.read().cp.phy);
        self.delete_segments_below(limit, count)
    }

    /// Installs a leader's snapshot: the whole log, consume queues and index go; the log
    /// restarts at the snapshot's offset with its queue offsets.
    fn raft_install(
        &mut self,
        meta: &SnapshotMetadata,
        data: Option<(u64, QueueTable)>,
    ) -> Result<(), Halt> {
        let (phy, table) = match data {
            Some(d) => d,
            None => (self.pos, self.next_table()),
        };
        let rs = self.raft_shared()?;
        let cp = CompactionPoint {
            index: meta.index,
            term: meta.term,
            phy,
            table: table.clone(),
        };
        tracing::info!(
            index = meta.index,
            term = meta.term,
            offset = phy,
            queues = table.len(),
            "installing a snapshot: the commit log restarts"
        );
        // First durably record what is being installed: recovery finishes an interrupted
        // install from it.
        let (_, rw) = self.raft_parts()?;
        rw.durable.cp = cp.clone();
        rw.durable.conf_state = meta.get_conf_state().clone();
        let commit = &mut rw.durable.hard_state.commit;
        *commit = (*commit).max(meta.index);
        rw.durable.installing = true;
        control::store(&rw.dir, &rw.durable).map_err(log_err)?;
        // A crash right after the install was recorded, with nothing done yet (tests).
        fail::fail_point!("store::raft::install_begin", |_| Err(Halt::Crash));
        {
            let mut v = rs.view.write();
            v.cp = cp;
            v.conf_state = meta.get_conf_state().clone();
            v.hard_state.commit = v.hard_state.commit.max(meta.index);
        }
        self.flush_all().map_err(log_err)?;
        self.shared.confirmed.store(phy, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        let closed = || LogStoreError::Io(std::io::Error::other("the dispatcher stopped"));
        self.shared
            .dispatch_tx
            .send(DispatchMsg::Reset {
                start: phy,
                table: table.clone(),
                reply: tx,
            })
            .map_err(|_| closed())?;
        super::wait_for(rx).map_err(|_| closed())??;
        for seg in self.shared.log.remove_from(0) {
            std::fs::remove_file(&seg.path)?;
        }
        // A crash with the old log gone and the install unfinished (tests).
        fail::fail_point!("store::raft::install", |_| Err(Halt::Crash));
        let seg = Arc::new(Segment::open(&self.shared.log.dir, phy, true)?);
        sync_dir(&self.shared.log.dir)?;
        self.shared.log.push(seg.clone());
        self.active = seg;
        self.pos = phy;
        self.tail_dirty = false;
        self.shared.write_pos.store(phy, Ordering::Release);
        self.shared.flushed.store(phy, Ordering::Release);
        self.shared.disk.log_bytes.store(0, Ordering::Release);
        self.next = table_to_next(&table);
        rs.entries.reset_to(meta.index + 1)?;
        let (_, rw) = self.raft_parts()?;
        rw.durable.installing = false;
        control::store(&rw.dir, &rw.durable).map_err(log_err)?;
        Ok(())
    }

    /// The writer's next queue offsets as a table.
    fn next_table(&self) -> QueueTable {
        let mut t: QueueTable = self
            .next
            .iter()
            .flat_map(|(topic, m)| m.iter().map(move |(q, n)| (topic.clone(), *q, *n)))
            .collect();
        t.sort();
        t
    }
}

fn table_to_next(table: &QueueTable) -> HashMap<String, HashMap<u32, u64>> {
    let mut next: HashMap<String, HashMap<u32, u64>> = HashMap::new();
    for (topic, q, n) in table {
        next.entry(topic.clone()).or_default().insert(*q, *n);
    }
    next
}

/// Fills in the records of entry `e` placed at `at`, taking queue offsets from `next` (the
/// writer's). A record a peer already filled must already hold what this log would put there,
/// or the logs diverged; it is then kept as it came, CRC included (checked when the entry
/// arrived, see `entry::stored_form`).
fn fill_entry(
    next: &mut HashMap<String, HashMap<u32, u64>>,
    bytes: &mut [u8],
    at: u64,
    e: &Entry,
    p: &mut Pending,
) -> Result<(), LogStoreError> {
    let spans = entry::record_spans(bytes);
    let n = spans.len();
    for (k, (start, len)) in spans.into_iter().enumerate() {
        let rec = &mut bytes[start..start + len];
        let qoff = if record::u32_at(rec, OFF_SYS_FLAG) & SYS_FLAGS_SYSTEM != 0 {
            0
        } else {
            // `stored_form` parsed these records in full a moment ago.
            let topic = record::topic(rec).map_err(|w| LogStoreError::Corrupt(w.into()))?;
            let qid = record::u32_at(rec, record::OFF_QUEUE_ID);
            // Looked up by `&str` first: a String per record was a visible cost.
            let queues = match next.get_mut(topic) {
                Some(q) => q,
                None => next.entry(topic.to_owned()).or_default(),
            };
            let slot = queues.entry(qid).or_insert(0);
            let q = *slot;
            *slot += 1;
            // Undo restores each queue's first offset of this write; later ones add nothing
            // (past a few queues the check costs more than the duplicates).
            let seen =
                p.undo.len() <= 16 && p.undo.iter().any(|(t, id, _)| *id == qid && t == topic);
            if !seen {
                p.undo.push((topic.to_owned(), qid, q));
            }
            q
        };
        p.max_ts = p.max_ts.max(record::i64_at(rec, OFF_STORE_TS));
        let phy = at + start as u64;
        let last = k + 1 == n;
        if !record::is_filled(rec) {
            record::fill(rec, qoff, phy, e.term, e.index, last);
        } else if !record::holds_fill(rec, qoff, phy, e.term, e.index, last) {
            return Err(LogStoreError::Corrupt(format!(
                "divergent entry {} (term {}): record {k} was stored by a peer at \
                 offset {} with queue offset {}, this log puts it at {phy} with \
                 queue offset {qoff}",
                e.index,
                e.term,
                record::u64_at(rec, record::OFF_PHYSICAL),
                record::u64_at(rec, record::OFF_QUEUE_OFFSET),
            )));
        }
    }
    Ok(())
}
