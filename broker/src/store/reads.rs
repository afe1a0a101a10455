//! The store's read API: queues by offset (decoded or raw), a record by its commit-log
//! position, by message id, by key and by time.

use super::*;

impl MessageStore {
    /// Reads up to `max_messages` / `max_bytes` (at least one record if any is available)
    /// from a queue starting at `offset`. Only dispatched (confirmed) entries are visible.
    /// `offset` outside `[min, max]` gives `StoreError::OffsetOutOfRange`.
    pub fn read_queue(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<QueueRead, StoreError> {
        reader::read_queue_with(
            self.shared(),
            topic,
            queue_id,
            offset,
            max_messages,
            max_bytes,
            commitlog::decoded_at,
        )
    }

    /// [`Self::read_queue`] handing out the records' bytes as stored (for pulls that asked for
    /// raw records: nothing decoded, nothing re-encoded).
    pub fn read_queue_raw(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<QueueRead<RawRecord>, StoreError> {
        reader::read_queue_with(
            self.shared(),
            topic,
            queue_id,
            offset,
            max_messages,
            max_bytes,
            commitlog::raw_at,
        )
    }

    /// [`Self::read_queue`], keeping only what `filter` takes when there is one (looking at no
    /// more than its `scan_limit` entries; `next_offset` moves past what it skipped).
    pub fn read_queue_where(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
        filter: Option<&QueueFilter<'_>>,
    ) -> Result<QueueRead, StoreError> {
        let Some(f) = filter else {
            return self.read_queue(topic, queue_id, offset, max_messages, max_bytes);
        };
        let s = self.shared();
        filtered::read_queue_filtered_with(
            s,
            topic,
            queue_id,
            offset,
            max_messages,
            max_bytes,
            f,
            commitlog::decoded_at,
        )
    }

    /// [`Self::read_queue_raw`], filtered like [`Self::read_queue_where`].
    pub fn read_queue_raw_where(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
        filter: Option<&QueueFilter<'_>>,
    ) -> Result<QueueRead<RawRecord>, StoreError> {
        let Some(f) = filter else {
            return self.read_queue_raw(topic, queue_id, offset, max_messages, max_bytes);
        };
        let s = self.shared();
        filtered::read_queue_filtered_with(
            s,
            topic,
            queue_id,
            offset,
            max_messages,
            max_bytes,
            f,
            commitlog::raw_at,
        )
    }

    /// `(min, max)` visible queue offsets; `(0, 0)` for a queue never written.
    pub fn queue_offsets(&self, topic: &str, queue_id: u32) -> (u64, u64) {
        self.shared()
            .queue(topic, queue_id)
            .map_or((0, 0), |q| (q.min(), q.max()))
    }

    /// Store time of the last visible message of a queue, if any.
    pub fn last_store_timestamp(&self, topic: &str, queue_id: u32) -> Option<i64> {
        self.shared()
            .queue(topic, queue_id)
            .and_then(|q| q.last_store_ts())
    }

    /// The first queue offset whose message was stored at or after `timestamp_ms`
    /// (the max offset when none is).
    pub fn offset_for_timestamp(&self, topic: &str, queue_id: u32, timestamp_ms: i64) -> u64 {
        let Some(q) = self.shared().queue(topic, queue_id) else {
            return 0;
        };
        q.offset_for_timestamp(timestamp_ms).unwrap_or_else(|e| {
            tracing::error!(error = %e, topic, queue_id, "consume queue read failed");
            q.max()
        })
    }

    /// The commit-log position up to which consume queues and the index are built: readers see
    /// the messages below it.
    pub fn dispatched_offset(&self) -> u64 {
        *self.shared().dispatched.borrow()
    }

    /// A watch on the dispatched commit-log position; it changes whenever new entries become
    /// visible to readers. Long-polling pulls wait on it.
    pub fn subscribe_dispatched(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared().dispatched.subscribe()
    }

    /// Reads the record at a commit-log offset (must be a record boundary below the confirmed offset).
    pub fn read_at(&self, commit_log_offset: u64) -> Result<StoredRecord, StoreError> {
        let s = self.shared();
        let confirmed = s.confirmed.load(Ordering::Acquire);
        let min = s.log.min_offset().unwrap_or(0);
        if commit_log_offset >= confirmed || commit_log_offset < min {
            return Err(StoreError::OffsetOutOfRange {
                offset: commit_log_offset,
                min,
                max: confirmed,
            });
        }
        s.log.read_record(commit_log_offset)
    }

    /// Looks a message up by its unique id.
    pub fn get_by_id(&self, message_id: &str) -> Result<Option<StoredRecord>, StoreError> {
        reader::get_by_id(self.shared(), message_id)
    }

    /// Messages of `topic` carrying `key`, newest first, at most `max`.
    pub fn find_by_key(
        &self,
        topic: &str,
        key: &str,
        max: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        reader::find_by_key(self.shared(), topic, key, max)
    }

    /// Messages of `topic` stored within `[from_ms, to_ms]`, oldest first, at most `max`.
    pub fn find_by_time(
        &self,
        topic: &str,
        from_ms: i64,
        to_ms: i64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        reader::find_by_time(self.shared(), topic, from_ms, to_ms, max)
    }
}
