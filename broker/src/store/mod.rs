//! The message store: one segmented, CRC-checked commit log shared by all topics, per-queue
//! consume queues and a message index derived from it.
//!
//! Shape (see ARCHITECTURE.md): a single writer task owns appends to the commit log and is fed
//! over a channel; readers share immutable segment mappings and never block it. A dispatcher
//! follows the commit log up to the *confirmed offset* and builds consume queues and the index.
//!
//! THE PUBLIC API BELOW IS THE CONTRACT WITH THE BROKER SERVICE: extend it, do not change
//! signatures without updating `crate::service`.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

pub mod error;

pub use error::StoreError;

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Ack once the record is in the page cache; a background flush runs every `flush_interval`.
    Async,
    /// Ack only after fsync; concurrent appends share one fsync (group commit).
    Sync,
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

/// The result of reading a queue.
#[derive(Debug, Clone, Default)]
pub struct QueueRead {
    pub records: Vec<StoredRecord>,
    /// The queue offset to read next.
    pub next_offset: u64,
    pub min_offset: u64,
    /// One past the last dispatched (visible) entry.
    pub max_offset: u64,
}

/// Handle to the store; cheap to clone, shared by all request handlers.
#[derive(Clone)]
pub struct MessageStore {}

impl MessageStore {
    /// Opens (creating if needed) the store under `config.data_dir`, recovering after a crash:
    /// scans from the checkpoint, truncates at the first torn or corrupt record, rebuilds
    /// consume queues and index past the checkpoint. Starts the writer, flusher, dispatcher
    /// and retention tasks on the current tokio runtime.
    pub async fn open(_config: StoreConfig) -> Result<MessageStore, StoreError> {
        todo!("storage engine")
    }

    /// Appends a batch; returns when acknowledged under the flush mode.
    /// Errors: `MessageTooLarge`, `DiskFull`, `Timeout` (sync flush), `Io`, `Closed`.
    pub async fn append(&self, _batch: AppendBatch) -> Result<AppendResult, StoreError> {
        todo!("storage engine")
    }

    /// Reads up to `max_messages` / `max_bytes` (at least one record if any is available)
    /// from a queue starting at `offset`. Only dispatched (confirmed) entries are visible.
    /// `offset` outside `[min, max]` gives `StoreError::OffsetOutOfRange`.
    pub fn read_queue(
        &self,
        _topic: &str,
        _queue_id: u32,
        _offset: u64,
        _max_messages: usize,
        _max_bytes: usize,
    ) -> Result<QueueRead, StoreError> {
        todo!("storage engine")
    }

    /// `(min, max)` visible queue offsets; `(0, 0)` for a queue never written.
    pub fn queue_offsets(&self, _topic: &str, _queue_id: u32) -> (u64, u64) {
        todo!("storage engine")
    }

    /// Store time of the last visible message of a queue, if any.
    pub fn last_store_timestamp(&self, _topic: &str, _queue_id: u32) -> Option<i64> {
        todo!("storage engine")
    }

    /// The first queue offset whose message was stored at or after `timestamp_ms`
    /// (the max offset when none is).
    pub fn offset_for_timestamp(&self, _topic: &str, _queue_id: u32, _timestamp_ms: i64) -> u64 {
        todo!("storage engine")
    }

    /// A watch on the dispatched commit-log position; it changes whenever new entries become
    /// visible to readers. Long-polling pulls wait on it.
    pub fn subscribe_dispatched(&self) -> tokio::sync::watch::Receiver<u64> {
        todo!("storage engine")
    }

    /// Reads the record at a commit-log offset (must be a record boundary below the confirmed offset).
    pub fn read_at(&self, _commit_log_offset: u64) -> Result<StoredRecord, StoreError> {
        todo!("storage engine")
    }

    /// Looks a message up by its unique id.
    pub fn get_by_id(&self, _message_id: &str) -> Result<Option<StoredRecord>, StoreError> {
        todo!("storage engine")
    }

    /// Messages of `topic` carrying `key`, newest first, at most `max`.
    pub fn find_by_key(
        &self,
        _topic: &str,
        _key: &str,
        _max: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        todo!("storage engine")
    }

    /// Messages of `topic` stored within `[from_ms, to_ms]`, oldest first, at most `max`.
    pub fn find_by_time(
        &self,
        _topic: &str,
        _from_ms: i64,
        _to_ms: i64,
        _max: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        todo!("storage engine")
    }

    /// Commit-log byte range held: `(min, max)`; max is the write position.
    pub fn commit_log_range(&self) -> (u64, u64) {
        todo!("storage engine")
    }

    /// Highest commit-log offset visible to readers (the dispatcher stops there).
    pub fn confirmed_offset(&self) -> u64 {
        todo!("storage engine")
    }

    /// Share of the disk budget in use, 0..1.
    pub fn disk_usage_ratio(&self) -> f64 {
        todo!("storage engine")
    }

    /// Flushes, writes a checkpoint and stops the store's tasks.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        todo!("storage engine")
    }
}
