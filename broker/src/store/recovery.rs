//! Opening the store: lock the directory, recover the commit log after a crash (scan from
//! the checkpoint, verify every record, cut at the first torn or corrupt one), bring consume
//! queues and index back to the checkpoint, re-dispatch past it, and start the tasks.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use parking_lot::RwLock;
use tokio::sync::watch;

use super::checkpoint;
use super::commitlog::{list_offset_files, read_full, sync_dir, CommitLog, Segment};
use super::cq::ConsumeQueue;
use super::dispatcher::Dispatcher;
use super::index::Index;
use super::raftlog::{self, RaftShared, RaftView};
use super::record::{self, Fixed as _, Probe, RecordView, FILLER_LEN};
use super::retention::{self, RetentionMsg};
use super::shared::{DiskUsage, DispatchMsg, Queues, Shared};
use super::timer::TimerIndex;
use super::writer::{RaftWriter, Writer, WriterCmd};
use super::{ConfirmMode, StoreConfig, StoreError};

const WRITER_QUEUE: usize = 4096;

/// A running store's handles (see `MessageStore`).
pub struct Started {
    pub shared: Arc<Shared>,
    pub retention_tx: mpsc::Sender<RetentionMsg>,
    /// Writer, flusher, dispatcher, retention.
    pub threads: Vec<JoinHandle<()>>,
    /// The writer thread's runtime, for tasks that should run beside the writer.
    pub writer_runtime: tokio::runtime::Handle,
    /// Holds the directory lock for the store's lifetime.
    pub lock: File,
}

fn validate(config: &StoreConfig) -> Result<(), StoreError> {
    let bad = |m: &str| Err(StoreError::Invalid(format!("store config: {m}")));
    if config.segment_size < 4096 {
        return bad("segment_size must be at least 4096 bytes");
    }
    if config.cq_entries_per_file == 0 {
        return bad("cq_entries_per_file must be positive");
    }
    if config.index_slots == 0 || config.index_entries_per_file < 16 {
        return bad("index_slots must be positive and index_entries_per_file at least 16");
    }
    if !(config.disk_high_ratio > 0.0 && config.disk_high_ratio <= config.disk_hard_ratio) {
        return bad("need 0 < disk_high_ratio <= disk_hard_ratio");
    }
    if config.flush_interval.is_zero() || config.checkpoint_interval.is_zero() {
        return bad("flush_interval and checkpoint_interval must be positive");
    }
    if config.retention_check_interval.is_zero() {
        return bad("retention_check_interval must be positive");
    }
    if config.raft && config.confirm != ConfirmMode::External {
        return bad("raft mode needs confirm = external (the committed position)");
    }
    Ok(())
}

/// Takes an exclusive lock on `data_dir/LOCK` so two stores never share a directory.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("LOCK"))?;
    // SAFETY: flock only reads the descriptor number, which `f` keeps open.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(StoreError::Invalid(format!(
            "store directory {} is in use by another store: {e}",
            dir.display()
        )));
    }
    Ok(f)
}

/// Where the commit log really ends, and the next queue offsets seen while scanning.
struct LogScan {
    end: u64,
    next: HashMap<String, HashMap<u32, u64>>,
}

/// Scans the log from `start` (a record boundary), verifying every record, to the first
/// torn or corrupt one.
fn scan_log(log: &CommitLog, start: u64) -> io::Result<LogScan> {
    let mut next: HashMap<String, HashMap<u32, u64>> = HashMap::new();
    let end = walk_log(log, start, |_, view| {
        if !view.is_system() {
            let n = next
                .entry(view.topic.to_owned())
                .or_default()
                .entry(view.queue_id())
                .or_insert(0);
            *n = (*n).max(view.queue_offset() + 1);
        }
        Walk::Continue
    })?;
    Ok(LogScan { end, next })
}

/// What a [`walk_log`] visitor wants next.
#[derive(Debug, PartialEq, Eq)]
pub enum Walk {
    Continue,
    /// The log ends before this record.
    Stop,
}

/// Visits every verified record from `start` (a record boundary) on, skipping segment
/// fillers, until the first torn or corrupt record or until `visit` says stop; returns that
/// position (where the log ends).
pub fn walk_log(
    log: &CommitLog,
    start: u64,
    mut visit: impl FnMut(u64, &RecordView<'_>) -> Walk,
) -> io::Result<u64> {
    let mut pos = start;
    let mut buf = vec![0u8; 4 << 20];
    'segments: while let Some(seg) = log.segment_for(pos) {
        let seg_len = seg.len.load(Ordering::Acquire);
        loop {
            let in_seg = pos - seg.base;
            if in_seg >= seg_len {
                // Data of this segment ends here. Legal only if no filler fits before the
                // next segment; otherwise the tail was lost and the log ends here.
                match log.next_after(seg.base) {
                    Some(n) if n.base.saturating_sub(pos) < FILLER_LEN as u64 => {
                        pos = n.base;
                        continue 'segments;
                    }
                    _ => break 'segments,
                }
            }
            let want = ((seg_len - in_seg) as usize).min(buf.len());
            let got = read_full(&seg.file, &mut buf[..want], in_seg)?;
            let mut at = 0usize;
            while at < got {
                match record::probe(&buf[at..got]) {
                    Probe::Record(t) => {
                        let t = t as usize;
                        let phy = pos + at as u64;
                        let Ok(view) = record::parse(&buf[at..at + t]) else {
                            tracing::warn!(offset = phy, "record fails to parse; log ends here");
                            return Ok(phy);
                        };
                        if view.physical_offset() != phy {
                            tracing::warn!(
                                offset = phy,
                                "record names another offset; log ends here"
                            );
                            return Ok(phy);
                        }
                        if visit(phy, &view) == Walk::Stop {
                            return Ok(phy);
                        }
                        at += t;
                    }
                    Probe::Filler => {
                        let phy = pos + at as u64;
                        match log.next_after(seg.base) {
                            Some(n) => {
                                pos = n.base;
                                continue 'segments;
                            }
                            // A filler with no next segment: the roll did not finish. Cut the
                            // filler so the writer rolls again.
                            None => return Ok(phy),
                        }
                    }
                    Probe::Incomplete => {
                        let phy = pos + at as u64;
                        let left_in_seg = seg_len - in_seg - at as u64;
                        if at > 0 && left_in_seg > (got - at) as u64 {
                            // The record continues past this read: read again from it.
                            break;
                        }
                        let total = if got - at >= 4 {
                            record::u32_at(&buf, at) as usize
                        } else {
                            0
                        };
                        if at == 0 && total > buf.len() && total as u64 <= left_in_seg {
                            buf.resize(total, 0);
                            break;
                        }
                        tracing::warn!(
                            offset = phy,
                            "torn record at the end of the log; truncating"
                        );
                        return Ok(phy);
                    }
                    Probe::Corrupt(why) => {
                        let phy = pos + at as u64;
                        tracing::warn!(
                            offset = phy,
                            why,
                            "corrupt record; truncating the log here"
                        );
                        return Ok(phy);
                    }
                }
            }
            pos += at as u64;
        }
    }
    Ok(pos)
}

/// Cuts the log at `end`: later segments are deleted, the one holding `end` is shortened.
fn truncate_log(log: &CommitLog, end: u64) -> io::Result<()> {
    let Some(keep) = log.segment_for(end) else {
        return Ok(());
    };
    let mut changed = false;
    for seg in log.remove_from(keep.base + 1) {
        tracing::warn!(
            segment = seg.base,
            "deleting commit-log segment after the recovered end"
        );
        fs::remove_file(&seg.path)?;
        changed = true;
    }
    let len = end - keep.base;
    if keep.len.load(Ordering::Acquire) != len {
        keep.file.set_len(len)?;
        keep.file.sync_all()?;
        keep.len.store(len, Ordering::Release);
    }
    if changed {
        sync_dir(&log.dir)?;
    }
    Ok(())
}

/// Opens every consume queue under `root`, cut back to durable entries below `keep_below`.
fn open_queues(
    root: &Path,
    per_file: u64,
    keep_below: u64,
    log_min: u64,
    durable: &HashMap<(String, u32), u64>,
) -> io::Result<Queues> {
    let mut queues: Queues = HashMap::new();
    for t in fs::read_dir(root)? {
        let t = t?;
        let Some(topic) = t.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if sluice_proto::names::validate_topic_name(&topic).is_err() || !t.file_type()?.is_dir() {
            tracing::warn!(name = %topic, "ignoring unexpected entry in the consume-queue directory");
            continue;
        }
        for q in fs::read_dir(t.path())? {
            let q = q?;
            let Some(qid) = q.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let cq = ConsumeQueue::open(root, &topic, qid, per_file)?;
            let durable = durable.get(&(topic.clone(), qid)).copied().unwrap_or(0);
            cq.recover(keep_below, log_min, durable)?;
            queues
                .entry(topic.clone())
                .or_default()
                .insert(qid, Arc::new(cq));
        }
    }
    Ok(queues)
}

/// Recovers the directory and starts the store's threads.
pub fn open_blocking(
    config: StoreConfig,
) -> Result<(Started, tokio::sync::mpsc::Sender<WriterCmd>), StoreError> {
    validate(&config)?;
    let dir = config.data_dir.clone();
    let log_dir = dir.join("commitlog");
    let cq_root = dir.join("consumequeue");
    let index_dir = dir.join("index");
    for d in [&dir, &log_dir, &cq_root, &index_dir] {
        fs::create_dir_all(d)?;
    }
    let lock = lock_dir(&dir)?;
    let control = raftlog::recover::prepare(&config)?;

    let mut segments = Vec::new();
    for (base, _) in list_offset_files(&log_dir)? {
        segments.push(Arc::new(Segment::open(&log_dir, base, false)?));
    }
    if segments.is_empty() {
        let base = control.as_ref().map_or(0, |c| c.cp.phy);
        segments.push(Arc::new(Segment::open(&log_dir, base, true)?));
        sync_dir(&log_dir)?;
    }
    let log = CommitLog::new(log_dir, config.segment_size, segments);
    let log_min = log.min_offset().unwrap_or(0);

    // Scan from the checkpoint when the log still holds it; otherwise from the start of the
    // segment where data was lost (or of the log).
    let ckpt = checkpoint::load(&dir)?;
    let start = match &ckpt {
        Some(c) if c.dispatched >= log_min => match log.segment_for(c.dispatched) {
            Some(seg) if seg.len.load(Ordering::Acquire) >= c.dispatched - seg.base => c.dispatched,
            Some(seg) => seg.base,
            None => log_min,
        },
        _ => log_min,
    };
    let mut scan = scan_log(&log, start)?;
    // Raft mode: the entry index is recovered and the log cut at an entry boundary.
    let (raft_control, raft_entries) = match control {
        Some(c) => {
            let rb = raftlog::recover::rebuild(&log, &config, &c, start, scan.end)?;
            scan.end = rb.end;
            for ((topic, qid), first) in &rb.dropped {
                if let Some(n) = scan.next.get_mut(topic).and_then(|m| m.get_mut(qid)) {
                    *n = (*n).min(*first);
                }
            }
            (Some(c), Some(rb.entries))
        }
        None => (None, None),
    };
    truncate_log(&log, scan.end)?;
    let end = scan.end;
    let dispatch_start = start.min(end);

    // Per-queue counts the checkpoint vouches for (none without a usable checkpoint).
    let durable: HashMap<(String, u32), u64> = match &ckpt {
        Some(c) if c.dispatched == start => c
            .queues
            .iter()
            .map(|(t, q, m)| ((t.clone(), *q), *m))
            .collect(),
        _ => HashMap::new(),
    };
    let queues = open_queues(
        &cq_root,
        config.cq_entries_per_file,
        dispatch_start,
        log_min,
        &durable,
    )?;
    // A queue holding fewer entries than the checkpoint recorded lost some below it (a torn
    // or damaged file): re-dispatch from where its valid entries end.
    let mut redispatch = dispatch_start;
    if let Some(c) = ckpt.as_ref().filter(|c| c.dispatched == start) {
        for (topic, qid, ck_max) in &c.queues {
            let q = queues.get(topic).and_then(|m| m.get(qid));
            let have = q.map_or(0, |q| q.max());
            if have < *ck_max {
                let resume = match q {
                    Some(q) => q.end_phy()?.unwrap_or(log_min),
                    None => log_min,
                };
                tracing::warn!(
                    topic,
                    qid,
                    have,
                    ck_max,
                    resume,
                    "consume queue lost entries; rebuilding it"
                );
                redispatch = redispatch.min(resume.max(log_min));
            }
        }
    }
    // The timer index keeps what the checkpoint vouches for; damaged entries below it are
    // rebuilt by dispatching again from the record they came from.
    let (timers, timer_rebuild) =
        TimerIndex::open(dir.join("timer"), config.timer_entries_per_file, redispatch)?;
    if let Some(from) = timer_rebuild {
        tracing::warn!(from, "timer index damaged; rebuilding it from the log");
        redispatch = redispatch.min(from.max(log_min));
    }
    let index = Index::open(
        index_dir,
        config.index_slots,
        config.index_entries_per_file,
        dispatch_start,
        log_min,
    )?;

    let log_bytes: u64 = log
        .snapshot()
        .iter()
        .map(|s| s.len.load(Ordering::Acquire))
        .sum();
    let disk = DiskUsage::new(config.disk_budget_bytes, &dir);
    disk.log_bytes.store(log_bytes, Ordering::Release);
    let confirmed = match config.confirm {
        ConfirmMode::FollowWrite => end,
        ConfirmMode::External => dispatch_start,
    };
    let (dispatch_tx, dispatch_rx) = mpsc::channel();
    let (written_tx, written_rx) = mpsc::channel();
    let (dispatched_tx, _) = watch::channel(redispatch);
    let Some(active) = log.last() else {
        return Err(StoreError::Corrupt {
            offset: 0,
            reason: "commit log has no segment".into(),
        });
    };
    // A broker's transactions set the real floor once their state is loaded; until then
    // retention must not take a segment an unresolved (even parked) transaction needs.
    let tx_floor_at_open = match config.hold_until_transaction_floor {
        true => 0,
        false => u64::MAX,
    };
    let shared = Arc::new(Shared {
        config,
        log,
        cq_root,
        queues: RwLock::new(queues),
        index,
        write_pos: AtomicU64::new(end),
        flushed: AtomicU64::new(end),
        confirmed: AtomicU64::new(confirmed),
        dispatched: dispatched_tx,
        disk,
        closed: AtomicBool::new(false),
        wake_pending: AtomicBool::new(false),
        dispatch_tx,
        written_tx,
        timers: parking_lot::Mutex::new(timers),
        timer_floor: AtomicU64::new(u64::MAX),
        tx_floor: AtomicU64::new(tx_floor_at_open),
        tx_floor_set: AtomicBool::new(false),
        timer_pending: AtomicU64::new(0),
        retention_checks: AtomicU64::new(0),
        timer_version: watch::channel(0).0,
        flush_stats: Default::default(),
        raft: raft_control.clone().zip(raft_entries).map(|(c, entries)| {
            Arc::new(RaftShared {
                entries,
                view: RwLock::new(RaftView {
                    hard_state: c.hard_state,
                    conf_state: c.conf_state,
                    cp: c.cp,
                }),
            })
        }),
    });

    // Re-dispatch past the checkpoint before anyone reads or writes.
    let mut dispatcher = Dispatcher::new(
        shared.clone(),
        written_rx,
        redispatch,
        redispatch,
        dispatch_start,
    );
    dispatcher.dispatch_to(confirmed)?;
    if dispatcher.position() < confirmed {
        tracing::warn!(
            at = dispatcher.position(),
            confirmed,
            "re-dispatch stopped early"
        );
    }
    retention::refresh_usage(&shared);

    // Next queue offsets: what the queues hold, raised by records not dispatched yet.
    let mut next: HashMap<String, HashMap<u32, u64>> = HashMap::new();
    for q in shared.all_queues() {
        next.entry(q.topic.clone())
            .or_default()
            .insert(q.queue_id, q.max());
    }
    for (topic, m) in scan.next {
        for (qid, n) in m {
            let e = next
                .entry(topic.clone())
                .or_default()
                .entry(qid)
                .or_insert(0);
            *e = (*e).max(n);
        }
    }
    // Queues a snapshot install started that have had no message since.
    if let Some(c) = &raft_control {
        for (topic, qid, n) in &c.cp.table {
            let e = next
                .entry(topic.clone())
                .or_default()
                .entry(*qid)
                .or_insert(0);
            *e = (*e).max(*n);
        }
    }

    let (writer_tx, writer_rx) = tokio::sync::mpsc::channel(WRITER_QUEUE);
    let (flush_tx, flush_rx) = mpsc::channel();
    let ftx = flush_tx.clone();
    let (retention_tx, retention_rx) = mpsc::channel();
    let raft_writer = match (&shared.raft, raft_control) {
        (Some(r), Some(c)) => Some(RaftWriter::new(r.clone(), dir.join(raftlog::DIR), c)),
        _ => None,
    };
    let writer = Writer::new(
        shared.clone(),
        active,
        end,
        next,
        flush_tx,
        Some(retention_tx.clone()),
        raft_writer,
    );
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new().name(name.to_owned()).spawn(f)
    };
    // The writer waits on a single-threaded runtime of its own, so that tasks placed beside it
    // (standalone data-port connections) hand it work without waking another thread.
    let writer_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("sluice-store-writer")
        .build()?;
    let writer_runtime = writer_rt.handle().clone();
    let mut threads = Vec::new();
    threads.push(spawn(
        "sluice-store-writer",
        Box::new(move || {
            writer_rt.block_on(writer.run(writer_rx));
            // Tasks still on the runtime (connections) are dropped here; one of them may hold
            // the last handle to the store, whose drop then stops the other threads from here.
            drop(writer_rt);
        }),
    )?);
    let s = shared.clone();
    threads.push(spawn(
        "sluice-store-flusher",
        Box::new(move || super::flusher::run(s, flush_rx, ftx)),
    )?);
    threads.push(spawn(
        "sluice-store-dispatch",
        Box::new(move || dispatcher.run(dispatch_rx)),
    )?);
    let s = shared.clone();
    let w = writer_tx.clone();
    threads.push(spawn(
        "sluice-store-retain",
        Box::new(move || retention::run(s, retention_rx, w)),
    )?);
    Ok((
        Started {
            shared,
            retention_tx,
            threads,
            writer_runtime,
            lock,
        },
        writer_tx,
    ))
}

/// Stops the threads (the caller has dropped its writer sender). Nothing is flushed: for a
/// store dropped without `shutdown` this is what a crash leaves behind, minus the page cache.
pub fn stop(started: Started) {
    let Started {
        shared,
        retention_tx,
        threads,
        writer_runtime: _,
        lock,
    } = started;
    let _ = retention_tx.send(RetentionMsg::Stop);
    let _ = shared.dispatch_tx.send(DispatchMsg::Stop);
    let me = std::thread::current().id();
    for t in threads {
        // The last handle can be dropped by a task on the writer's runtime, i.e. on the
        // writer thread, which is ending anyway: it cannot wait for itself.
        if t.thread().id() != me {
            let _ = t.join();
        }
    }
    drop(lock);
}
