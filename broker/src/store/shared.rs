//! State shared by the store's tasks and readers. Each mutable piece has one writer: the
//! writer thread (segments, write position), the flusher (flushed position), the dispatcher
//! (consume queues, index, dispatched position); everyone else only reads.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::watch;

use super::commitlog::CommitLog;
use super::cq::ConsumeQueue;
use super::index::Index;
use super::raftlog::{QueueTable, RaftShared};
use super::timer::TimerIndex;
use super::{ConfirmMode, StoreConfig};

pub type Queues = HashMap<String, HashMap<u32, Arc<ConsumeQueue>>>;

pub struct Shared {
    pub config: StoreConfig,
    pub log: CommitLog,
    pub cq_root: PathBuf,
    pub queues: RwLock<Queues>,
    pub index: Index,
    /// End of the data written to the commit log (page cache).
    pub write_pos: AtomicU64,
    /// End of the data known to be fsynced.
    pub flushed: AtomicU64,
    /// Readers (and the dispatcher) see records below this offset.
    pub confirmed: AtomicU64,
    pub dispatched: watch::Sender<u64>,
    pub disk: DiskUsage,
    /// Set once `shutdown` ran; appends then fail with `Closed`.
    pub closed: AtomicBool,
    /// Coalesces dispatcher wake-ups: only one `Wake` is in flight at a time.
    pub wake_pending: AtomicBool,
    pub dispatch_tx: mpsc::Sender<DispatchMsg>,
    /// Groups the writer wrote, for the dispatcher to dispatch from instead of reading them
    /// back. A channel of its own: the dispatcher drains it when it has work, so a write does
    /// not wake it (the confirmation that follows does).
    pub written_tx: mpsc::Sender<Written>,
    /// Raft mode: the entry index and the raft view (`None` in standalone mode).
    pub raft: Option<Arc<RaftShared>>,
    /// Delayed messages' due times. The dispatcher writes it; the leader's timer task reads.
    pub timers: parking_lot::Mutex<TimerIndex>,
    /// Lowest offset of a pending timer's scheduled record (`u64::MAX`: none): retention and
    /// Raft compaction keep the log from there on.
    pub timer_floor: AtomicU64,
    /// Where retention stops for unresolved transactions' half messages (`u64::MAX`: nowhere).
    pub tx_floor: AtomicU64,
    /// The transactions set `tx_floor` (a held store waits for it).
    pub tx_floor_set: std::sync::atomic::AtomicBool,
    pub timer_pending: AtomicU64,
    /// Retention checks completed (tests wait on it).
    pub retention_checks: AtomicU64,
    /// Bumped whenever the dispatcher changed the timer index (the timer task waits on it).
    pub timer_version: watch::Sender<u64>,
    pub flush_stats: FlushStats,
}

/// The flusher's fsyncs of the commit log, for metrics.
#[derive(Default)]
pub struct FlushStats {
    pub flushes: AtomicU64,
    pub nanos: AtomicU64,
    /// The longest since the last `take_max`.
    pub max_nanos: AtomicU64,
}

impl FlushStats {
    pub fn record(&self, took: std::time::Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
    }
}

/// `bytes` (whole records) were written at commit-log offset `at`.
pub struct Written {
    pub at: u64,
    pub bytes: Bytes,
}

/// Requests to the dispatcher thread.
pub enum DispatchMsg {
    /// The confirmed offset moved.
    Wake,
    /// Drop consume-queue and index entries at or above `offset`.
    Truncate {
        offset: u64,
        reply: tokio::sync::oneshot::Sender<io::Result<()>>,
    },
    /// The commit log's first segment moved up to `log_min`.
    Trim { log_min: u64 },
    /// Raft mode: the next queue offset of every queue at commit-log offset `at` (queues
    /// the dispatcher does not know start from `base`).
    QueueTable {
        at: u64,
        base: QueueTable,
        reply: tokio::sync::oneshot::Sender<io::Result<QueueTable>>,
    },
    /// Raft mode, snapshot install: drop every consume queue and the index; the log restarts
    /// at `start` with queues starting at `table`'s offsets.
    Reset {
        start: u64,
        table: QueueTable,
        reply: tokio::sync::oneshot::Sender<io::Result<()>>,
    },
    /// Stop at once, without a checkpoint (the store was dropped without `shutdown`).
    Stop,
    /// Dispatch what is confirmed, write a checkpoint and stop.
    Shutdown {
        reply: tokio::sync::oneshot::Sender<io::Result<()>>,
    },
}

impl Shared {
    /// Below this the log is dispatched and confirmed: what retention may delete, but for the
    /// timers' and transactions' floors.
    pub fn dispatched_and_confirmed(&self) -> u64 {
        let dispatched = *self.dispatched.borrow();
        dispatched.min(self.confirmed.load(std::sync::atomic::Ordering::Acquire))
    }

    pub fn queue(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        self.queues
            .read()
            .get(topic)
            .and_then(|m| m.get(&queue_id))
            .cloned()
    }

    /// The queue, created if new. Dispatcher only (it alone creates queue files).
    pub fn queue_or_create(&self, topic: &str, queue_id: u32) -> io::Result<Arc<ConsumeQueue>> {
        if let Some(q) = self.queue(topic, queue_id) {
            return Ok(q);
        }
        let q = Arc::new(ConsumeQueue::open(
            &self.cq_root,
            topic,
            queue_id,
            self.config.cq_entries_per_file,
        )?);
        self.queues
            .write()
            .entry(topic.to_owned())
            .or_default()
            .insert(queue_id, q.clone());
        Ok(q)
    }

    pub fn all_queues(&self) -> Vec<Arc<ConsumeQueue>> {
        self.queues
            .read()
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// Moves the confirmed offset (never past the write position) and wakes the dispatcher.
    /// Moves the confirmed offset up (never down: truncation lowers it directly).
    pub fn confirm(&self, offset: u64) {
        if self.confirmed.fetch_max(offset, Ordering::AcqRel) < offset {
            self.wake_dispatcher();
        }
    }

    pub fn wake_dispatcher(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            // A closed channel means the dispatcher stopped; nothing to wake.
            let _ = self.dispatch_tx.send(DispatchMsg::Wake);
        }
    }

    /// Called by the writer (async mode) or flusher (sync mode) once data up to `offset` is
    /// acknowledged.
    pub fn acked_up_to(&self, offset: u64) {
        if self.acked_up_to_deferred(offset) {
            self.wake_dispatcher();
        }
    }

    /// [`Self::acked_up_to`] without waking the dispatcher: true when the caller should call
    /// [`Self::wake_dispatcher`], which it does after sending its acks so that the wake-up (a
    /// syscall, and a thread competing for the CPU) does not delay them.
    pub fn acked_up_to_deferred(&self, offset: u64) -> bool {
        self.config.confirm == ConfirmMode::FollowWrite
            && self.confirmed.fetch_max(offset, Ordering::AcqRel) < offset
    }
}

/// Disk use against the budget (or the file system).
pub struct DiskUsage {
    pub budget: Option<u64>,
    pub dir: PathBuf,
    /// Bytes of commit-log segments (the writer keeps it exact).
    pub log_bytes: AtomicU64,
    /// Bytes of consume queues and index (refreshed by the retention task).
    pub derived_bytes: AtomicU64,
    /// Last measured file-system usage ratio (as f64 bits) when there is no budget.
    fs_ratio: AtomicU64,
    /// Size of the file system in bytes (last measured).
    fs_total: AtomicU64,
}

impl DiskUsage {
    pub fn new(budget: Option<u64>, dir: &Path) -> DiskUsage {
        let d = DiskUsage {
            budget,
            dir: dir.to_owned(),
            log_bytes: AtomicU64::new(0),
            derived_bytes: AtomicU64::new(0),
            fs_ratio: AtomicU64::new(0f64.to_bits()),
            fs_total: AtomicU64::new(0),
        };
        d.refresh_fs();
        d
    }

    pub fn ratio(&self) -> f64 {
        match self.budget {
            Some(b) => {
                let used = self.log_bytes.load(Ordering::Acquire)
                    + self.derived_bytes.load(Ordering::Acquire);
                used as f64 / b.max(1) as f64
            }
            None => f64::from_bits(self.fs_ratio.load(Ordering::Acquire)),
        }
    }

    /// Bytes the ratio is computed against.
    pub fn capacity(&self) -> u64 {
        self.budget
            .unwrap_or_else(|| self.fs_total.load(Ordering::Acquire))
    }

    /// Re-measures the file system (no-op with a budget).
    pub fn refresh_fs(&self) {
        if self.budget.is_some() {
            return;
        }
        match fs_usage_ratio(&self.dir) {
            Ok((r, total)) => {
                self.fs_ratio.store(r.to_bits(), Ordering::Release);
                self.fs_total.store(total, Ordering::Release);
            }
            Err(e) => tracing::warn!(error = %e, "cannot measure disk usage"),
        }
    }
}

/// Share of the usable file system holding `dir` that is in use, and the usable size.
fn fs_usage_ratio(dir: &Path) -> io::Result<(f64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs initialises it fully when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: rc == 0, so statvfs initialised `st`.
    let st = unsafe { st.assume_init() };
    // As `df` computes Use%: blocks reserved for root count neither as used nor as available.
    let used = st.f_blocks.saturating_sub(st.f_bfree);
    let usable = used.saturating_add(st.f_bavail);
    if usable == 0 {
        return Ok((0.0, 0));
    }
    Ok((
        used as f64 / usable as f64,
        usable.saturating_mul(st.f_frsize),
    ))
}
