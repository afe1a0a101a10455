//! The writer: the only task that appends to, truncates or deletes commit-log segments.
//!
//! It runs on its own thread fed by a channel. Each round it drains what is queued (up to
//! [`MAX_GROUP_BYTES`]), assigns queue offsets, positions and store time, and writes the group
//! with one positioned write per segment touched. In async mode the producers are acked at
//! once; in sync mode the acks go to the flusher, which acks after one fdatasync for the whole
//! group (group commit).
//!
//! Segment layout is a pure function of the write position, so replicas that write the same
//! entries lay them out byte for byte alike (raft mode relies on it): a segment ends at the
//! next multiple of `segment_size` after its start (a filler marks the unused rest), and a
//! record group that starts at such a boundary goes there even if it is larger (raft mode
//! only; standalone batches always fit).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use super::commitlog::{sync_dir, write_parts_at, Segment};
use super::flusher::{FlushMsg, FlushReq};
use super::record::{self, FILLER_LEN};
use super::retention::RetentionMsg;
use super::shared::{DispatchMsg, Shared, Written};
use super::{AppendResult, Appended, FlushMode, StoreError};
use crate::replication::LogStoreError;

mod maintenance;
mod mixed;
mod raft_ops;

pub use raft_ops::{RaftOp, RaftWriter};

/// Upper bound of bytes written per round.
const MAX_GROUP_BYTES: usize = 4 << 20;
/// Capacity asked for the buffer that replaces one handed to the dispatcher. Replica groups
/// write many small groups (one Raft append each, at most 1 MiB by default) while the last
/// few wait for their commit; the hand-off budget counts capacity, so 4 MiB buffers for them
/// left it spent after 16 groups. A bigger group grows its buffer, which the pool keeps.
const NEXT_BUF_CAPACITY: usize = 1 << 20;

pub type AppendReply = oneshot::Sender<Result<AppendResult, StoreError>>;

/// A batch encoded by the caller; the writer only patches positions and CRCs in.
pub struct EncodedBatch {
    pub topic: String,
    pub queue_id: u32,
    pub buf: Vec<u8>,
    /// `(start, len)` of each record in `buf`.
    pub records: Vec<(usize, usize)>,
    /// A mixed batch (state records and messages of several queues): each record's queue,
    /// `None` for a state record (no queue offset). Empty: every record is `topic`/`queue_id`.
    pub queues: Vec<Option<(String, u32)>>,
}

pub enum WriterCmd {
    Append {
        batch: EncodedBatch,
        reply: AppendReply,
    },
    Truncate {
        offset: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Delete the `count` oldest segments (never the active one).
    DeleteHead {
        count: usize,
        reply: oneshot::Sender<Result<Deleted, StoreError>>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// A write of the raft view (raft mode); answered on a std channel, so the raft thread
    /// can wait without a runtime.
    Raft {
        op: RaftOp,
        reply: mpsc::Sender<Result<(), LogStoreError>>,
    },
}

/// Segments retention deleted, and the commit log's new start. Their files are unlinked
/// already; whoever drops this closes them, and the last close frees the blocks, which on a
/// file system mounted with `discard` waits for the device: not on the writer's thread
/// (a 1 GiB segment stalled every write behind it).
pub struct Deleted {
    pub log_min: u64,
    pub segments: Vec<Arc<Segment>>,
}

/// Closes deleted segments on a thread of their own (see [`Deleted`]).
fn close_elsewhere(segments: Vec<Arc<Segment>>) {
    if segments.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("sluice-seg-close".into())
        .spawn(move || drop(segments));
    if let Err(e) = spawned {
        // The segments went with the failed closure and are closed here.
        tracing::warn!(error = %e, "no thread to close deleted segments; closed on the writer");
    }
}

/// What the writer loop does next.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
    /// A failpoint simulated a crash: stop without any cleanup (tests).
    Crash,
}

pub struct Writer {
    shared: Arc<Shared>,
    active: Arc<Segment>,
    pos: u64,
    next: HashMap<String, HashMap<u32, u64>>,
    last_ts: i64,
    /// Raft mode's group: entries are filled in place here.
    buf: Vec<u8>,
    /// Standalone mode's group: the producers' batches as their encoders built them, sealed
    /// in place and written with one vectored write (copying them into `buf` first was ~3 %
    /// of a pipelined run's CPU). At most one of `buf` and `batches` holds bytes.
    batches: Vec<Vec<u8>>,
    batches_len: usize,
    flush_tx: mpsc::Sender<FlushMsg>,
    /// A failed write may have left bytes after `pos`; cut them before the next write.
    tail_dirty: bool,
    retention_kick: Option<mpsc::Sender<RetentionMsg>>,
    /// Raft mode's writer-side state.
    raft: Option<RaftWriter>,
    /// Acked data the dispatcher has not been woken for yet (see [`Writer::run`]).
    wake_due: bool,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // However the writer ends, the flusher has nothing more to wait for.
        let _ = self.flush_tx.send(FlushMsg::Stop);
    }
}

/// Producers waiting for the current chunk, and how to undo its queue offsets.
#[derive(Default)]
struct Chunk {
    acks: Vec<(AppendReply, AppendResult)>,
    undo: Vec<(String, u32, u64)>,
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        active: Arc<Segment>,
        pos: u64,
        next: HashMap<String, HashMap<u32, u64>>,
        flush_tx: mpsc::Sender<FlushMsg>,
        retention_kick: Option<mpsc::Sender<RetentionMsg>>,
        raft: Option<RaftWriter>,
    ) -> Writer {
        // Store times never go backwards, even if the clock does across a restart.
        let last_ts = shared
            .all_queues()
            .iter()
            .filter_map(|q| q.last_store_ts())
            .max()
            .unwrap_or(0);
        Writer {
            shared,
            active,
            pos,
            next,
            last_ts,
            buf: Vec::new(),
            batches: Vec::new(),
            batches_len: 0,
            flush_tx,
            tail_dirty: false,
            retention_kick,
            raft,
            wake_due: false,
        }
    }

    /// The thread body: returns when every sender is gone, on `Shutdown`, or on a simulated crash.
    /// It runs on the writer thread's own single-threaded runtime (see
    /// `MessageStore::writer_runtime`), where it waits for commands; writing blocks that thread,
    /// which only it and the tasks that feed it use.
    pub async fn run(mut self, mut rx: tokio::sync::mpsc::Receiver<WriterCmd>) {
        let mut appends: Vec<(EncodedBatch, AppendReply)> = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut cmd = Some(first);
            let mut bytes = 0usize;
            while let Some(c) = cmd.take() {
                match c {
                    WriterCmd::Append { batch, reply } => {
                        bytes += batch.buf.len();
                        appends.push((batch, reply));
                        if bytes < MAX_GROUP_BYTES {
                            cmd = rx.try_recv().ok();
                        }
                    }
                    other => {
                        if self.write_group(&mut appends) == Flow::Crash {
                            return;
                        }
                        if self.control(other) != Flow::Continue {
                            if self.wake_due {
                                self.shared.wake_dispatcher();
                            }
                            return;
                        }
                        cmd = rx.try_recv().ok();
                    }
                }
            }
            if self.write_group(&mut appends) == Flow::Crash {
                return;
            }
            if std::mem::take(&mut self.wake_due) {
                // Let the tasks beside the writer (data-port connections) send the answers it
                // just gave before the dispatcher's wake-up: waking a parked thread is the
                // costliest step of a small send here (an IPI), and the answer need not wait.
                tokio::task::yield_now().await;
                self.shared.wake_dispatcher();
            }
        }
    }

    fn control(&mut self, cmd: WriterCmd) -> Flow {
        match cmd {
            WriterCmd::Append { .. } => Flow::Continue,
            WriterCmd::Truncate { offset, reply } => {
                let r = self.truncate(offset);
                let _ = reply.send(r);
                Flow::Continue
            }
            WriterCmd::DeleteHead { count, reply } => {
                let r = if self.raft.is_some() {
                    self.raft_retention(count)
                } else {
                    let limit = self.deletable_below();
                    self.delete_segments_below(limit, count)
                };
                let _ = reply.send(r);
                Flow::Continue
            }
            WriterCmd::Shutdown { reply } => {
                let r = self.flush_all().and_then(|()| match self.raft.is_some() {
                    true => self.raft_sync_control().map_err(|e| match e {
                        LogStoreError::Io(e) => StoreError::Io(e),
                        other => StoreError::Io(std::io::Error::other(other.to_string())),
                    }),
                    false => Ok(()),
                });
                let _ = reply.send(r);
                Flow::Stop
            }
            WriterCmd::Raft { op, reply } => match self.raft_op(op) {
                Ok(()) => {
                    let _ = reply.send(Ok(()));
                    Flow::Continue
                }
                Err(raft_ops::Halt::Fail(e)) => {
                    tracing::error!(error = %e, "raft log write failed");
                    let _ = reply.send(Err(e));
                    Flow::Continue
                }
                Err(raft_ops::Halt::Crash) => Flow::Crash,
            },
        }
    }

    fn write_group(&mut self, appends: &mut Vec<(EncodedBatch, AppendReply)>) -> Flow {
        if appends.is_empty() {
            return Flow::Continue;
        }
        let ratio = self.shared.disk.ratio();
        let cfg = &self.shared.config;
        if ratio >= cfg.disk_high_ratio {
            if let Some(k) = &self.retention_kick {
                let _ = k.send(RetentionMsg::Kick);
            }
        }
        if ratio >= cfg.disk_hard_ratio {
            let limit = cfg.disk_hard_ratio;
            for (_, reply) in appends.drain(..) {
                let _ = reply.send(Err(StoreError::DiskFull { ratio, limit }));
            }
            return Flow::Continue;
        }
        let now = super::now_ms();
        let ts = now.max(self.last_ts);
        self.last_ts = ts;
        let mut chunk = Chunk::default();
        for (mut batch, reply) in appends.drain(..) {
            let size = batch.buf.len() as u64;
            if let Some(target) = self.roll_target(self.pos + self.group_len(), size) {
                let flow = self.write_chunk(&mut chunk, ts);
                if flow != Flow::Continue {
                    return flow;
                }
                if let Err(e) = self.roll_to(target) {
                    let _ = reply.send(Err(e.into()));
                    continue;
                }
            }
            let base = self.pos + self.group_len();
            let mut entries = Vec::with_capacity(batch.records.len());
            if batch.queues.is_empty() {
                let next = self
                    .next
                    .entry(batch.topic.clone())
                    .or_default()
                    .entry(batch.queue_id)
                    .or_insert(0);
                let first = *next;
                for (i, &(start, len)) in batch.records.iter().enumerate() {
                    let qoff = first + i as u64;
                    let phy = base + start as u64;
                    record::seal(&mut batch.buf[start..start + len], qoff, phy, ts);
                    entries.push(Appended {
                        queue_offset: qoff,
                        commit_log_offset: phy,
                        size: len as u32,
                        store_timestamp_ms: ts,
                    });
                }
                *next = first + batch.records.len() as u64;
                chunk.undo.push((batch.topic, batch.queue_id, first));
            } else {
                self.seal_mixed(&mut batch, base, ts, &mut entries, &mut chunk.undo);
            }
            self.batches_len += batch.buf.len();
            self.batches.push(batch.buf);
            chunk.acks.push((
                reply,
                AppendResult {
                    entries,
                    store_timestamp_ms: ts,
                },
            ));
        }
        self.write_chunk(&mut chunk, ts)
    }

    /// Writes the group at the write position and hands the acks on.
    fn write_chunk(&mut self, chunk: &mut Chunk, ts: i64) -> Flow {
        if self.group_len() == 0 {
            return Flow::Continue;
        }
        match self.write_buf(ts) {
            Ok(Flow::Continue) => {}
            Ok(other) => return other,
            Err(e) => {
                for (topic, qid, first) in chunk.undo.drain(..).rev() {
                    if let Some(n) = self.next.get_mut(&topic).and_then(|m| m.get_mut(&qid)) {
                        *n = first;
                    }
                }
                for (reply, _) in chunk.acks.drain(..) {
                    let _ = reply.send(Err(StoreError::Io(super::copy_io_error(&e))));
                }
                return Flow::Continue;
            }
        }
        fail::fail_point!("store::writer::after_write", |_| Flow::Crash);
        chunk.undo.clear();
        let acks = std::mem::take(&mut chunk.acks);
        match self.shared.config.flush {
            FlushMode::Async => {
                self.wake_due |= self.shared.acked_up_to_deferred(self.pos);
                for (reply, res) in acks {
                    let _ = reply.send(Ok(res));
                }
            }
            FlushMode::Sync => {
                let req = FlushReq {
                    upto: self.pos,
                    acks,
                    done: None,
                };
                if let Err(mpsc::SendError(FlushMsg::Req(req))) =
                    self.flush_tx.send(FlushMsg::Req(req))
                {
                    for (reply, _) in req.acks {
                        let _ = reply.send(Err(StoreError::Closed));
                    }
                }
            }
        }
        Flow::Continue
    }

    /// Bytes of the group not written yet.
    fn group_len(&self) -> u64 {
        (self.buf.len() + self.batches_len) as u64
    }

    /// The group's bytes in order.
    fn group_parts(&self) -> Vec<&[u8]> {
        if self.batches.is_empty() {
            vec![&self.buf]
        } else {
            self.batches.iter().map(Vec::as_slice).collect()
        }
    }

    fn clear_group(&mut self) {
        self.buf.clear();
        self.batches.clear();
        self.batches_len = 0;
    }

    /// Writes the group at the write position and advances it; the group is emptied either
    /// way. On an error nothing of it counts as written.
    /// `Ok(Flow::Crash)`: a failpoint simulated a crash half way through (tests).
    fn write_buf(&mut self, ts: i64) -> io::Result<Flow> {
        let at = self.pos - self.active.base;
        let len = self.group_len();
        fail::fail_point!("store::writer::partial_write", |_| {
            // A crash in the middle of the write: half the bytes reach the file.
            let parts = self.group_parts();
            let _ = write_parts_at(&self.active.file, &parts, at, len as usize / 2);
            Ok(Flow::Crash)
        });
        if let Err(e) = self.write_at(at) {
            tracing::error!(error = %e, offset = self.pos, "commit log write failed");
            self.tail_dirty = true;
            if self.active.file.set_len(at).is_ok() {
                self.tail_dirty = false;
            }
            self.clear_group();
            return Err(e);
        }
        self.hand_to_dispatcher();
        self.pos += len;
        self.active.len.store(at + len, Ordering::Release);
        self.active.last_store_ts.fetch_max(ts, Ordering::AcqRel);
        self.shared.write_pos.store(self.pos, Ordering::Release);
        self.shared.disk.log_bytes.fetch_add(len, Ordering::AcqRel);
        Ok(Flow::Continue)
    }

    /// Passes the group just written (at the write position) to the dispatcher, which would
    /// otherwise read it back from the file soon after; leaves the group empty either way.
    fn hand_to_dispatcher(&mut self) {
        // A stopped dispatcher reads nothing any more; the bytes are simply dropped.
        let mut at = self.pos;
        if !self.buf.is_empty() {
            if let Some(bytes) = self.shared.log.hand_off(&mut self.buf, NEXT_BUF_CAPACITY) {
                let _ = self.shared.written_tx.send(Written { at, bytes });
            }
        }
        for batch in self.batches.drain(..) {
            let len = batch.len() as u64;
            // One refused (too much handed out) leaves a gap the dispatcher reads from the file.
            if let Some(bytes) = self.shared.log.hand_off_batch(batch) {
                let _ = self.shared.written_tx.send(Written { at, bytes });
            }
            at += len;
        }
        self.clear_group();
    }

    fn write_at(&mut self, at: u64) -> io::Result<()> {
        if self.tail_dirty {
            self.active.file.set_len(at)?;
            self.tail_dirty = false;
        }
        let parts = self.group_parts();
        let len = self.group_len() as usize;
        fail::fail_point!("store::writer::enospc", |_| {
            // Simulates a disk that fills up half way through the write.
            write_parts_at(&self.active.file, &parts, at, len / 2)?;
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        });
        write_parts_at(&self.active.file, &parts, at, len)
    }

    /// Where a new segment must start before `size` bytes can be written at position `p`
    /// (`None`: write at `p`). Depends on `p` alone (and on whether a segment starts there),
    /// never on where the active segment started, so every replica decides alike.
    fn roll_target(&self, p: u64, size: u64) -> Option<u64> {
        let ss = self.shared.log.segment_size;
        if p.is_multiple_of(ss) {
            return (p != self.active.base).then_some(p);
        }
        let window_end = (p / ss + 1) * ss;
        (p + size > window_end).then_some(window_end)
    }

    /// Ends the active segment (a filler covers the rest up to `base` when it fits) and
    /// starts a new one at `base` (the write position, or a segment boundary after it).
    fn roll_to(&mut self, base: u64) -> io::Result<()> {
        let at = self.pos - self.active.base;
        if base >= self.pos + FILLER_LEN as u64 {
            let room = u32::try_from(base - self.pos)
                .map_err(|_| io::Error::other("segment filler longer than 4 GiB"))?;
            self.active.file.write_all_at(&record::filler(room), at)?;
            self.active
                .len
                .store(at + FILLER_LEN as u64, Ordering::Release);
            self.shared
                .disk
                .log_bytes
                .fetch_add(FILLER_LEN as u64, Ordering::AcqRel);
        }
        // Only the newest segment may ever have a torn tail.
        self.active.file.sync_data()?;
        let seg = Arc::new(Segment::open(&self.shared.log.dir, base, true)?);
        sync_dir(&self.shared.log.dir)?;
        self.shared.log.push(seg.clone());
        self.active = seg;
        self.pos = base;
        self.shared.write_pos.store(base, Ordering::Release);
        Ok(())
    }

    /// Waits until the flusher has made everything written so far durable.
    fn flush_all(&mut self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        self.flush_tx
            .send(FlushMsg::Req(FlushReq {
                upto: self.pos,
                acks: Vec::new(),
                done: Some(tx),
            }))
            .map_err(|_| StoreError::Closed)?;
        rx.recv()
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Io)
    }
}

/// Blocks the writer thread for another store thread's answer. The writer runs inside its own
/// runtime, where `blocking_recv` refuses to block; blocking is what is meant here (the
/// answer comes from a plain thread, and nothing on this runtime may move before it).
fn wait_for<T>(rx: oneshot::Receiver<T>) -> Result<T, oneshot::error::RecvError> {
    futures::executor::block_on(rx)
}
