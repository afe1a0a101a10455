//! The dispatcher: follows the commit log up to the confirmed offset and builds the consume
//! queues, the index and the timer index (`timer/`); writes checkpoints. Runs on its own thread (all its work is blocking
//! file I/O) and is the only writer of consume queues, index and checkpoint.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::checkpoint::{self, Checkpoint, Stored};
use super::cq::{ConsumeQueue, CqEntry, ENTRY_LEN};
use super::index::{id_hash, key_hash, IndexWriter};
use super::raftlog::QueueTable;
use super::record::{self, DispatchView, Fixed as _, Probe};
use super::shared::{DispatchMsg, Shared, Written};
use super::timer;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

mod durable;

const CHUNK: usize = 4 << 20;

struct PendingQueue {
    queue: Arc<ConsumeQueue>,
    /// Queue offset of the first buffered entry.
    first: u64,
    data: Vec<u8>,
    last_ts: i64,
}

pub struct Dispatcher {
    shared: Arc<Shared>,
    /// Everything below is dispatched.
    pos: u64,
    /// Offset recorded by the last checkpoint.
    ckpt_pos: u64,
    last_ckpt: Instant,
    buf: Vec<u8>,
    /// Groups the writer handed over, in log order, not yet dispatched past: records are
    /// taken from here rather than read back from the file.
    recent: VecDeque<(u64, Bytes)>,
    written: Receiver<Written>,
    /// Looked up twice per record: keyed with foldhash, not SipHash (no untrusted keys here:
    /// topics and queue ids of records already in the log).
    pending: FastMap<String, FastMap<u32, PendingQueue>>,
    /// Queues written since the last checkpoint, with the first queue offset written.
    dirty: HashMap<(String, u32), (Arc<ConsumeQueue>, u64)>,
    index: IndexWriter,
    /// Records below this offset are already indexed (re-dispatch after recovery).
    index_floor: u64,
    /// Set when a record cannot be dispatched (corruption): stop rather than skip it.
    stalled: bool,
    /// The timer index changed since the last publish (floor and counts to refresh).
    timers_changed: bool,
    /// A timer due within `timer::HINT_MS` was scheduled since the last publish.
    timers_due_soon: bool,
}

/// How the dispatcher thread ended.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    Stop,
    /// A failpoint simulated a crash (tests).
    Crashed,
}

impl Dispatcher {
    /// Starts at `pos`; records below `index_floor` are already in the index.
    pub fn new(
        shared: Arc<Shared>,
        written: Receiver<Written>,
        pos: u64,
        ckpt_pos: u64,
        index_floor: u64,
    ) -> Dispatcher {
        Dispatcher {
            shared,
            pos,
            ckpt_pos,
            index_floor,
            last_ckpt: Instant::now(),
            buf: Vec::new(),
            recent: VecDeque::new(),
            written,
            pending: FastMap::default(),
            dirty: HashMap::new(),
            index: IndexWriter::default(),
            stalled: false,
            timers_changed: true,
            timers_due_soon: true,
        }
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The thread body.
    pub fn run(mut self, rx: Receiver<DispatchMsg>) {
        let interval = self.shared.config.checkpoint_interval;
        loop {
            let wait = interval
                .saturating_sub(self.last_ckpt.elapsed())
                .max(Duration::from_millis(1));
            let exit = match rx.recv_timeout(wait) {
                Ok(msg) => self.handle(msg),
                Err(RecvTimeoutError::Timeout) => Ok(None),
                Err(RecvTimeoutError::Disconnected) => Ok(Some(Exit::Stop)),
            };
            let exit = match exit {
                Ok(None) if self.last_ckpt.elapsed() >= interval => self.checkpoint(),
                other => other,
            };
            match exit {
                Ok(None) => {}
                Ok(Some(_)) => return,
                Err(e) => {
                    tracing::error!(error = %e, "dispatcher I/O error; retrying");
                    // Back off so a persistent error does not spin.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn handle(&mut self, msg: DispatchMsg) -> io::Result<Option<Exit>> {
        match msg {
            DispatchMsg::Wake => {
                self.shared.wake_pending.store(false, Ordering::Release);
                let target = self.shared.confirmed.load(Ordering::Acquire);
                self.dispatch_to(target)?;
                Ok(None)
            }
            DispatchMsg::Truncate { offset, reply } => {
                let (result, exit) = match self.truncate(offset) {
                    Ok(exit) => (Ok(()), exit),
                    Err(e) => (Err(e), None),
                };
                let _ = reply.send(result);
                Ok(exit)
            }
            DispatchMsg::Trim { log_min } => {
                // Tests hold the queues' heads here, after retention deleted segments.
                fail::fail_point!("store::dispatcher::before_trim");
                for q in self.shared.all_queues() {
                    q.trim_head(log_min)?;
                }
                self.shared.index.trim_head(log_min)?;
                Ok(None)
            }
            DispatchMsg::QueueTable { at, base, reply } => {
                let _ = reply.send(self.queue_table(at, base));
                Ok(None)
            }
            DispatchMsg::Reset {
                start,
                table,
                reply,
            } => {
                let r = self.reset(start, &table);
                let failed = r.is_err();
                let _ = reply.send(r);
                if failed {
                    // The caller fails the install; keep the dispatcher from building on a
                    // half-reset state.
                    self.stalled = true;
                }
                Ok(None)
            }
            DispatchMsg::Stop => Ok(Some(Exit::Stop)),
            DispatchMsg::Shutdown { reply } => {
                let target = self.shared.confirmed.load(Ordering::Acquire);
                let r = self.dispatch_to(target).and_then(|()| self.checkpoint());
                let _ = reply.send(r.map(|_| ()));
                Ok(Some(Exit::Stop))
            }
        }
    }

    /// Dispatches every complete record below `target`.
    pub fn dispatch_to(&mut self, target: u64) -> io::Result<()> {
        let shared = self.shared.clone();
        let log = &shared.log;
        let mut need = 0usize;
        self.take_written();
        while self.pos < target && !self.stalled {
            let Some(seg) = log.segment_for(self.pos) else {
                tracing::error!(
                    pos = self.pos,
                    "dispatch position is outside the commit log"
                );
                self.stalled = true;
                break;
            };
            let in_seg = self.pos - seg.base;
            let seg_len = seg.len.load(Ordering::Acquire);
            if in_seg >= seg_len {
                // End of this segment's data: the next record starts the next segment.
                match log.next_after(seg.base) {
                    Some(n) => {
                        self.pos = n.base;
                        continue;
                    }
                    None => break,
                }
            }
            let mut want =
                ((seg_len - in_seg).min(target - self.pos) as usize).min(CHUNK.max(need));
            // Taken out of `self` so records can borrow it while `self` is updated.
            let mut whole = std::mem::take(&mut self.buf);
            // A record the handed-over bytes end in the middle of is read from the file.
            let handed = if need == 0 {
                self.written_at(self.pos, target)
            } else {
                None
            };
            let buf: &[u8] = match &handed {
                Some(b) => {
                    want = b.len();
                    b
                }
                None => {
                    // The buffer keeps its length between rounds: only growing it zeroes
                    // memory.
                    if whole.len() < want {
                        whole.resize(want, 0);
                    }
                    match super::commitlog::read_full(&seg.file, &mut whole[..want], in_seg) {
                        Ok(n) => &whole[..n],
                        Err(e) => {
                            self.buf = whole;
                            return Err(e);
                        }
                    }
                }
            };
            let mut at = 0usize;
            let mut jump_segment = false;
            while at < buf.len() {
                let phy = self.pos + at as u64;
                match record::probe_written(&buf[at..]) {
                    Probe::Record(t) => {
                        let t = t as usize;
                        match record::parse_for_dispatch(&buf[at..at + t]) {
                            Ok(view) if view.physical_offset() == phy => {
                                if let Err(e) = self.dispatch_record(&view, phy) {
                                    self.buf = whole;
                                    return Err(e);
                                }
                            }
                            Ok(_) | Err(_) => {
                                tracing::error!(
                                    offset = phy,
                                    "undispatchable record; dispatch stops"
                                );
                                self.stalled = true;
                                break;
                            }
                        }
                        at += t;
                    }
                    Probe::Filler => {
                        jump_segment = true;
                        break;
                    }
                    Probe::Incomplete => break,
                    Probe::Corrupt(why) => {
                        tracing::error!(offset = phy, why, "corrupt record; dispatch stops");
                        self.stalled = true;
                        break;
                    }
                }
            }
            let head_total = if buf.len() >= 4 {
                record::u32_at(buf, 0) as usize
            } else {
                0
            };
            self.buf = whole;
            self.pos += at as u64;
            if jump_segment {
                match log.next_after(seg.base) {
                    Some(n) => {
                        self.pos = n.base;
                        continue;
                    }
                    None => break,
                }
            }
            if at == 0 && !self.stalled {
                // The record at `pos` is larger than what was read: read it whole next time,
                // unless it is not complete below the target yet.
                let total = head_total;
                if total > want
                    && self.pos + total as u64 <= target
                    && total as u64 <= seg_len - in_seg
                {
                    need = total;
                    continue;
                }
                break;
            }
            need = 0;
            self.publish()?;
        }
        self.publish()
    }

    /// Takes what the writer handed over since the last look. Everything it wrote before its
    /// latest message on the main channel is there by now.
    fn take_written(&mut self) {
        while let Ok(w) = self.written.try_recv() {
            self.keep_written(w.at, w.bytes);
        }
    }

    /// Keeps a group the writer handed over, unless it is already dispatched past.
    fn keep_written(&mut self, at: u64, bytes: Bytes) {
        let end = at + bytes.len() as u64;
        if end <= self.pos {
            return;
        }
        if self
            .recent
            .back()
            .is_some_and(|(a, b)| at < a + b.len() as u64)
        {
            // Not after what is kept (cannot happen without a truncation in between, which
            // drops what it cuts): keep only the newest bytes.
            self.recent.clear();
        }
        self.recent.push_back((at, bytes));
    }

    /// The handed-over bytes from `pos` up to `target` (or the end of their group), dropping
    /// groups that end at or before `pos`.
    fn written_at(&mut self, pos: u64, target: u64) -> Option<Bytes> {
        while self
            .recent
            .front()
            .is_some_and(|(a, b)| a + b.len() as u64 <= pos)
        {
            self.recent.pop_front();
        }
        let (at, bytes) = self.recent.front()?;
        if *at > pos {
            return None;
        }
        let end = (at + bytes.len() as u64).min(target);
        (end > pos).then(|| bytes.slice((pos - at) as usize..(end - at) as usize))
    }

    fn dispatch_record(&mut self, view: &DispatchView<'_>, phy: u64) -> io::Result<()> {
        if view.is_system() {
            // Raft bookkeeping and metadata operations: not messages.
            return Ok(());
        }
        let topic = view.topic;
        let qid = view.queue_id();
        let qoff = view.queue_offset();
        let ts = view.store_timestamp();
        if !self
            .pending
            .get(topic)
            .is_some_and(|m| m.contains_key(&qid))
        {
            let queue = self.shared.queue_or_create(topic, qid)?;
            let first = queue.max();
            self.pending.entry(topic.to_owned()).or_default().insert(
                qid,
                PendingQueue {
                    queue,
                    first,
                    data: Vec::new(),
                    last_ts: 0,
                },
            );
        }
        let Some(p) = self.pending.get_mut(topic).and_then(|m| m.get_mut(&qid)) else {
            return Ok(());
        };
        let mut expected = p.first + (p.data.len() / ENTRY_LEN) as u64;
        if qoff > expected && p.data.is_empty() && p.queue.is_empty() {
            // The queue's older records are gone (retention) and its files with them: it
            // starts where its oldest remaining record is.
            p.queue.start_at(qoff)?;
            p.first = qoff;
            expected = qoff;
        }
        if qoff == expected {
            let entry = CqEntry {
                phy,
                size: view.total_size(),
                tag_hash: record::tag_hash(view.tag),
                store_ts: ts,
            };
            p.data.extend_from_slice(&entry.encode());
            p.last_ts = ts;
        } else if qoff > expected {
            tracing::error!(
                topic,
                qid,
                qoff,
                expected,
                "queue offset gap; record not queued"
            );
        }
        // qoff < expected: already dispatched before a restart; nothing to add.
        let sys = view.sys_flag();
        let real_topic = if sys & record::SYS_FLAGS_TIMER != 0 {
            self.timers_changed = true;
            let hint = super::now_ms() + timer::HINT_MS;
            let done = self
                .shared
                .timers
                .lock()
                .index_record(view, phy, sys, hint)?;
            self.timers_due_soon |= done.due_soon;
            done.real_topic
        } else {
            None
        };
        if phy < self.index_floor {
            // Indexed before the restart (the index was kept up to here).
            return Ok(());
        }
        let index = &self.shared.index;
        if !view.message_id.is_empty() {
            index.add(&mut self.index, id_hash(view.message_id), phy)?;
        }
        // A scheduled message is found by key under the topic it is for.
        let key_topic = real_topic.as_deref().unwrap_or(topic);
        for k in view.keys() {
            index.add(&mut self.index, key_hash(key_topic, k), phy)?;
        }
        Ok(())
    }

    /// Writes buffered entries and makes everything below `pos` visible.
    fn publish(&mut self) -> io::Result<()> {
        for (topic, m) in &mut self.pending {
            for (qid, p) in m.iter_mut() {
                if p.data.is_empty() {
                    continue;
                }
                p.queue.write(p.first, &p.data)?;
                let max = p.first + (p.data.len() / ENTRY_LEN) as u64;
                p.queue.publish(max, p.last_ts);
                self.dirty
                    .entry((topic.clone(), *qid))
                    .or_insert_with(|| (p.queue.clone(), p.first));
                p.first = max;
                p.data.clear();
            }
        }
        self.shared.index.flush(&mut self.index)?;
        if self.timers_changed {
            self.timers_changed = false;
            // The floor moves before the dispatched position does: retention never deletes
            // a record the position says is dispatched while its timer is not counted yet.
            let (floor, pending) = self.shared.timers.lock().publish()?;
            self.shared.timer_floor.store(floor, Ordering::Release);
            self.shared.timer_pending.store(pending, Ordering::Release);
            if std::mem::take(&mut self.timers_due_soon) {
                self.shared.timer_version.send_modify(|v| *v += 1);
            }
        }
        self.shared.dispatched.send_if_modified(|d| {
            let changed = *d != self.pos;
            *d = self.pos;
            changed
        });
        Ok(())
    }
}
