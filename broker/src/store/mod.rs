//! The message store: one segmented, CRC-checked commit log shared by all topics, per-queue
//! consume queues and a message index derived from it.
//!
//! Shape (see ARCHITECTURE.md): a single writer task owns appends to the commit log and is fed
//! over a channel; readers share immutable segment mappings and never block it. A dispatcher
//! follows the commit log up to the *confirmed offset* and builds consume queues and the index.
//!
//! Modules: `record` (on-disk format), `commitlog` (segments, shared read side), `writer`
//! (the writer thread), `flusher` (fdatasync, group commit), `dispatcher` (consume queues,
//! index, checkpoints), `cq`, `index`, `checkpoint`, `recovery` (open after a crash),
//! `retention`, `reader` (read paths), `shared` (state the threads share), `entry` and
//! `raftlog` (raft mode: the commit log as the Raft log, see `raftlog/mod.rs`). The writer,
//! flusher, dispatcher and retention run on dedicated threads: their work is blocking file
//! I/O. "Segment mappings" are plain files read with `pread` into pooled buffers, which keeps
//! reads free of `unsafe` and of SIGBUS on truncated files.
//!
//! THE PUBLIC API BELOW IS THE CONTRACT WITH THE BROKER SERVICE: extend it, do not change
//! signatures without updating `crate::service`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

mod checkpoint;
mod commitlog;
mod cq;
mod dispatcher;
mod entries;
mod entry;
pub mod error;
mod filtered;
mod flusher;
mod index;
mod mixed;
mod raftlog;
mod reader;
mod reads;
pub mod record;
mod recovery;
mod retention;
mod sequenced;
mod shared;
pub mod timer;
mod writer;

pub use entry::{
    decode_entry, encode_for_proposal, encode_meta_for_proposal, is_meta_entry, meta_bodies,
};
pub use error::StoreError;
pub use filtered::QueueFilter;
pub use mixed::{encode_mixed_for_proposal, MixedBatch};
pub use raftlog::CommitLogRaft;
pub use record::tag_hash;
pub use sequenced::{batch_marks, entry_marks, BatchMarks, HalfBatch, LogState, SequencedBatch};

use recovery::Started;
pub use writer::EncodedBatch;
use writer::WriterCmd;

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Ack once the record is in the page cache; a background flush runs every `flush_interval`.
    Async,
    /// Ack only after fsync; concurrent appends share one fsync (group commit).
    Sync,
}

/// Who moves the confirmed offset (the end of what readers and the dispatcher see).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmMode {
    /// Confirmed follows acknowledged writes (after the write in async mode, after the fsync
    /// in sync mode). Standalone brokers.
    FollowWrite,
    /// Only `MessageStore::set_confirmed_offset` moves it (replication: the committed
    /// position).
    External,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root of the store's files (commit log, consume queues, index, checkpoint).
    pub data_dir: PathBuf,
    /// Commit log segment size in bytes (1 GiB default; tests use small ones).
    pub segment_size: u64,
    pub flush: FlushMode,
    /// Background flush period in async mode (500 ms default).
    pub flush_interval: Duration,
    /// How long a sync-mode append waits for its fsync before failing with `StoreError::Timeout`.
    pub sync_flush_timeout: Duration,
    /// Largest accepted body + properties, in bytes (4 MiB default).
    pub max_message_size: usize,
    /// Segments older than this are deleted (72 h default).
    pub retention: Duration,
    /// Above this share of the disk in use, the oldest segments are deleted whatever their age.
    pub disk_high_ratio: f64,
    /// Above this share, appends fail with `StoreError::DiskFull`; reads keep working.
    pub disk_hard_ratio: f64,
    /// When set, the ratios are computed against this many bytes of store files instead of the
    /// file system's size (tests, and operators who give the broker a quota).
    pub disk_budget_bytes: Option<u64>,
    /// How often retention and the disk check run.
    pub retention_check_interval: Duration,
    /// Recorded as the store host of every record (the broker's address).
    pub store_host: String,
    /// Who moves the confirmed offset (`FollowWrite` default).
    pub confirm: ConfirmMode,
    /// Raft mode (needs `confirm = External`): the commit log is the replica group's Raft
    /// log, written only through [`MessageStore::raft_log`]; `append` and `truncate_to` are
    /// refused. Every replica must use the same `segment_size`, and a store keeps the mode
    /// and segment size it was created with.
    pub raft: bool,
    /// Entries per consume-queue file (300,000 default); also per raft entry-index file.
    pub cq_entries_per_file: u64,
    /// Hash slots per index file (1 Mi default).
    pub index_slots: u32,
    /// Entries per index file (4 Mi default).
    pub index_entries_per_file: u32,
    /// How often consume queues and index are fsynced and the checkpoint written (1 s default).
    pub checkpoint_interval: Duration,
    /// Entries per timer-index file (1 Mi default, 48 MiB).
    pub timer_entries_per_file: u64,
    /// Retention and Raft compaction keep every segment until the first
    /// [`MessageStore::set_transaction_floor`] (a broker's transactions set it once their
    /// state is loaded). Off (the default), nothing is held for transactions until then.
    pub hold_until_transaction_floor: bool,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            segment_size: 1 << 30,
            flush: FlushMode::Async,
            flush_interval: Duration::from_millis(500),
            sync_flush_timeout: Duration::from_secs(5),
            max_message_size: 4 << 20,
            retention: Duration::from_secs(72 * 3600),
            disk_high_ratio: 0.75,
            disk_hard_ratio: 0.90,
            disk_budget_bytes: None,
            retention_check_interval: Duration::from_secs(10),
            store_host: String::new(),
            confirm: ConfirmMode::FollowWrite,
            raft: false,
            cq_entries_per_file: 300_000,
            index_slots: 1 << 20,
            index_entries_per_file: 4 << 20,
            checkpoint_interval: Duration::from_secs(1),
            timer_entries_per_file: 1 << 20,
            hold_until_transaction_floor: false,
        }
    }
}

/// One message to append. The store assigns queue offset, commit-log offset and store time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppendMessage {
    pub message_id: String,
    pub body: Bytes,
    pub tag: String,
    pub keys: Vec<String>,
    /// User properties, in the order given.
    pub properties: Vec<(String, String)>,
    pub flag: u32,
    pub sys_flag: u32,
    pub born_timestamp_ms: i64,
    pub born_host: String,
    pub reconsume_times: u32,
    pub prepared_transaction_offset: u64,
}

/// Messages for one queue, appended atomically and contiguously.
#[derive(Debug, Clone, Default)]
pub struct AppendBatch {
    pub topic: String,
    pub queue_id: u32,
    pub messages: Vec<AppendMessage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub queue_offset: u64,
    pub commit_log_offset: u64,
    pub size: u32,
    /// The store time sealed into the record.
    pub store_timestamp_ms: i64,
}

#[derive(Debug, Clone)]
pub struct AppendResult {
    /// One per message, in order.
    pub entries: Vec<Appended>,
    pub store_timestamp_ms: i64,
}

/// A record read back from the commit log. `body` is a slice of the store's read buffer or
/// mapping, not a per-message copy.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub commit_log_offset: u64,
    pub store_size: u32,
    pub body_crc: u32,
    pub message_id: String,
    pub body: Bytes,
    pub tag: String,
    pub keys: Vec<String>,
    pub properties: Vec<(String, String)>,
    pub flag: u32,
    pub sys_flag: u32,
    pub born_timestamp_ms: i64,
    pub born_host: String,
    pub store_timestamp_ms: i64,
    pub store_host: String,
    pub reconsume_times: u32,
    pub prepared_transaction_offset: u64,
}

impl StoredRecord {
    /// The message of this record, to write again (a delayed message delivered, a retry or a
    /// dead letter), with the properties and sys flag the copy carries.
    pub fn into_message(self, properties: Vec<(String, String)>, sys_flag: u32) -> AppendMessage {
        AppendMessage {
            message_id: self.message_id,
            body: self.body,
            tag: self.tag,
            keys: self.keys,
            properties,
            flag: self.flag,
            sys_flag,
            born_timestamp_ms: self.born_timestamp_ms,
            born_host: self.born_host,
            reconsume_times: self.reconsume_times,
            prepared_transaction_offset: 0,
        }
    }
}

/// The result of reading a queue: decoded records, or [`RawRecord`]s.
#[derive(Debug, Clone)]
pub struct QueueRead<R = StoredRecord> {
    pub records: Vec<R>,
    /// The queue offset to read next.
    pub next_offset: u64,
    pub min_offset: u64,
    /// One past the last dispatched (visible) entry.
    pub max_offset: u64,
    /// A filtered read: the commit-log position just past the last entry it looked at (where
    /// the reader is in the log even when nothing was kept).
    pub scanned_to: Option<u64>,
}

impl<R> QueueRead<R> {
    /// Nothing read at `offset` (queue range `min..max`).
    pub fn empty(offset: u64, min: u64, max: u64) -> Self {
        QueueRead {
            records: Vec::new(),
            next_offset: offset,
            min_offset: min,
            max_offset: max,
            scanned_to: None,
        }
    }
}

/// One record's bytes exactly as the commit log holds them (see `sluice_proto::record`),
/// checked (CRC, structure, position) before it is handed out.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub bytes: Bytes,
    pub commit_log_offset: u64,
}

/// Where a record read from the log sits in it.
pub trait LogPlaced {
    fn commit_log_offset(&self) -> u64;
    fn store_size(&self) -> u32;
}

impl LogPlaced for StoredRecord {
    fn commit_log_offset(&self) -> u64 {
        self.commit_log_offset
    }
    fn store_size(&self) -> u32 {
        self.store_size
    }
}

impl LogPlaced for RawRecord {
    fn commit_log_offset(&self) -> u64 {
        self.commit_log_offset
    }
    fn store_size(&self) -> u32 {
        self.bytes.len() as u32
    }
}

/// A copy of an I/O error for each of several waiters (keeps the OS error code).
pub(crate) fn copy_io_error(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Handle to the store; cheap to clone, shared by all request handlers.
#[derive(Clone)]
pub struct MessageStore {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<shared::Shared>,
    /// `None` only while dropping: the writer stops when every sender is gone.
    writer_tx: Option<tokio::sync::mpsc::Sender<WriterCmd>>,
    /// The runtime the writer waits on.
    writer_runtime: tokio::runtime::Handle,
    /// Taken by `shutdown` (joins the threads) or by `Drop` (stops them without flushing).
    started: parking_lot::Mutex<Option<Started>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.writer_tx = None;
        if let Some(s) = self.started.get_mut().take() {
            recovery::stop(s);
        }
    }
}

impl MessageStore {
    /// Opens (creating if needed) the store under `config.data_dir`, recovering after a crash:
    /// scans from the checkpoint, truncates at the first torn or corrupt record, rebuilds
    /// consume queues and index past the checkpoint. Starts the writer, flusher, dispatcher
    /// and retention tasks (dedicated threads: their work is blocking file I/O).
    pub async fn open(config: StoreConfig) -> Result<MessageStore, StoreError> {
        let (started, writer_tx) =
            tokio::task::spawn_blocking(move || recovery::open_blocking(config))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
        Ok(MessageStore {
            inner: Arc::new(Inner {
                shared: started.shared.clone(),
                writer_tx: Some(writer_tx),
                writer_runtime: started.writer_runtime.clone(),
                started: parking_lot::Mutex::new(Some(started)),
            }),
        })
    }

    pub(crate) fn shared(&self) -> &shared::Shared {
        &self.inner.shared
    }

    /// Root of the store's files.
    pub fn data_dir(&self) -> &Path {
        &self.shared().config.data_dir
    }

    /// The single-threaded runtime the writer thread waits on, outside raft mode: a task
    /// spawned there that appends hands its batch over and gets its answer without a
    /// cross-thread wake-up (two on an idle machine: ~70 us of a ~180 us send here), but it
    /// also takes its CPU time from the writer. `None` in raft mode, where appends go through
    /// the Raft thread.
    pub fn writer_runtime(&self) -> Option<&tokio::runtime::Handle> {
        match self.shared().raft {
            Some(_) => None,
            None => Some(&self.inner.writer_runtime),
        }
    }

    pub(crate) async fn to_writer(&self, cmd: WriterCmd) -> Result<(), StoreError> {
        let tx = self.inner.writer_tx.as_ref().ok_or(StoreError::Closed)?;
        tx.send(cmd).await.map_err(|_| StoreError::Closed)
    }

    /// Validates and encodes a batch (on the caller's task, off the writer's thread).
    pub fn encode(&self, batch: &AppendBatch) -> Result<EncodedBatch, StoreError> {
        let cfg = &self.shared().config;
        let (buf, records) =
            entry::encode_batch(batch, &cfg.store_host, Some(cfg.max_message_size))?;
        // A batch is written contiguously into one segment (one future Raft entry).
        let limit = (cfg.segment_size as usize).saturating_sub(record::FILLER_LEN);
        if buf.len() > limit {
            return Err(StoreError::MessageTooLarge {
                size: buf.len(),
                limit,
            });
        }
        Ok(EncodedBatch {
            topic: batch.topic.clone(),
            queue_id: batch.queue_id,
            buf,
            records,
            queues: Vec::new(),
        })
    }

    fn refuse_in_raft_mode(&self, what: &str) -> Result<(), StoreError> {
        if self.shared().raft.is_some() {
            return Err(StoreError::Invalid(format!(
                "{what} is not available in raft mode: the log is written through replication"
            )));
        }
        Ok(())
    }

    /// Appends a batch; returns when acknowledged under the flush mode.
    /// Errors: `MessageTooLarge`, `DiskFull`, `Timeout` (sync flush), `Io`, `Closed`,
    /// `Invalid` (bad topic name, empty batch, empty message id, oversized fields).
    pub async fn append(&self, batch: AppendBatch) -> Result<AppendResult, StoreError> {
        let batch = self.encode(&batch)?;
        self.append_encoded(batch).await
    }

    /// Appends a batch [`MessageStore::encode`] encoded (the send path takes the message ids
    /// for its answer out of the batch in between instead of copying them).
    pub async fn append_encoded(&self, batch: EncodedBatch) -> Result<AppendResult, StoreError> {
        if self.shared().closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.refuse_in_raft_mode("append")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cfg = &self.shared().config;
        let wait = async {
            self.to_writer(WriterCmd::Append { batch, reply: tx })
                .await?;
            rx.await.map_err(|_| StoreError::Closed)?
        };
        match cfg.flush {
            FlushMode::Async => wait.await,
            FlushMode::Sync => tokio::time::timeout(cfg.sync_flush_timeout, wait)
                .await
                .map_err(|_| StoreError::Timeout(cfg.sync_flush_timeout))?,
        }
    }

    /// Fsyncs of the commit log since start and their total time, and the longest one since
    /// the previous call (then reset).
    pub fn flush_stats(&self) -> (u64, std::time::Duration, std::time::Duration) {
        let f = &self.shared().flush_stats;
        (
            f.flushes.load(Ordering::Relaxed),
            std::time::Duration::from_nanos(f.nanos.load(Ordering::Relaxed)),
            std::time::Duration::from_nanos(f.max_nanos.swap(0, Ordering::Relaxed)),
        )
    }

    /// Commit-log segments on disk.
    pub fn segment_count(&self) -> usize {
        self.shared().log.snapshot().len()
    }

    /// Commit-log byte range held: `(min, max)`; max is the write position.
    pub fn commit_log_range(&self) -> (u64, u64) {
        let s = self.shared();
        (
            s.log.min_offset().unwrap_or(0),
            s.write_pos.load(Ordering::Acquire),
        )
    }

    /// Highest commit-log offset visible to readers (the dispatcher stops there).
    pub fn confirmed_offset(&self) -> u64 {
        self.shared().confirmed.load(Ordering::Acquire)
    }

    /// Moves the confirmed offset (only with `ConfirmMode::External`): records that end at
    /// or below it become visible. It never moves backwards (use `truncate_to`) and never past
    /// the write position (a larger value is clamped to it). A call in `FollowWrite` mode is a
    /// caller bug: it is logged and ignored.
    pub fn set_confirmed_offset(&self, offset: u64) {
        let s = self.shared();
        if s.config.confirm != ConfirmMode::External {
            tracing::warn!(
                offset,
                "set_confirmed_offset ignored: confirm = follow_write"
            );
            return;
        }
        let write = s.write_pos.load(Ordering::Acquire);
        if offset > write {
            tracing::warn!(
                offset,
                write,
                "confirmed offset past the write position; clamped"
            );
        }
        s.confirm(offset.min(write));
    }

    /// End of what the writer wrote (page cache).
    pub fn write_position(&self) -> u64 {
        self.shared().write_pos.load(Ordering::Acquire)
    }

    /// Share of the disk budget in use, 0..1.
    pub fn disk_usage_ratio(&self) -> f64 {
        self.shared().disk.ratio()
    }

    /// Flushes, writes a checkpoint and stops the store's tasks. Reads keep working;
    /// appends fail with `Closed`.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let s = self.shared();
        if s.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let flushed = match self.to_writer(WriterCmd::Shutdown { reply: tx }).await {
            Ok(()) => rx.await.unwrap_or(Err(StoreError::Closed)),
            Err(_) => Err(StoreError::Closed),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let checkpointed = match s
            .dispatch_tx
            .send(shared::DispatchMsg::Shutdown { reply: tx })
        {
            Ok(()) => rx
                .await
                .map_err(|_| StoreError::Closed)
                .and_then(|r| r.map_err(StoreError::from)),
            Err(_) => Err(StoreError::Closed),
        };
        let started = self.inner.started.lock().take();
        if let Some(started) = started {
            tokio::task::spawn_blocking(move || recovery::stop(started))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        }
        flushed?;
        checkpointed
    }
}

/// Ids of records already returned (lookups may meet an entry twice after a re-dispatch).
type Seen = HashSet<u64>;
