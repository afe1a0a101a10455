//! The store as a Raft log: truncation of a standalone log, the log handle, and the lookups
//! from an entry index to its place and its messages' positions.

use super::*;

impl MessageStore {
    /// Drops every record from `offset` (a record boundary) on, with their consume-queue and
    /// index entries, and resets the next queue offsets. Goes through the writer.
    pub async fn truncate_to(&self, offset: u64) -> Result<(), StoreError> {
        self.refuse_in_raft_mode("truncate_to")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.to_writer(WriterCmd::Truncate { offset, reply: tx })
            .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The Raft view of this commit log (raft mode only; `Invalid` otherwise). Handles are
    /// cheap; all writes go through the store's single writer.
    pub fn raft_log(&self) -> Result<CommitLogRaft, StoreError> {
        let raft = self.raft_shared()?.clone();
        Ok(CommitLogRaft::new(self.clone(), raft))
    }

    pub(super) fn raft_shared(&self) -> Result<&Arc<raftlog::RaftShared>, StoreError> {
        self.shared().raft.as_ref().ok_or_else(|| {
            StoreError::Invalid("the store is not in raft mode (StoreConfig::raft)".into())
        })
    }

    pub(super) fn locate_entry(&self, index: u64) -> Result<raftlog::EntryLoc, StoreError> {
        let r = self.raft_shared()?;
        r.locate(index).map_err(|e| match e {
            raftlog::LocErr::Corrupt(reason) => StoreError::Corrupt { offset: 0, reason },
            raftlog::LocErr::Compacted | raftlog::LocErr::Unavailable => {
                StoreError::OffsetOutOfRange {
                    offset: index,
                    min: r.first_index(),
                    max: r.last_index(),
                }
            }
        })
    }

    /// One past the last byte of raft entry `index` in the commit log (for the compaction
    /// point itself, where the log restarts). `OffsetOutOfRange` (in raft indexes) when the
    /// entry is compacted or not in the log.
    pub fn entry_end_offset(&self, index: u64) -> Result<u64, StoreError> {
        let r = self.raft_shared()?;
        {
            let v = r.view.read();
            if index == v.cp.index {
                return Ok(v.cp.phy);
            }
        }
        Ok(self.locate_entry(index)?.end())
    }

    /// Queue offset, commit-log offset and size of each message of the persisted raft entry
    /// `index` (none for a no-op or metadata entry): what a producer is told.
    pub fn entry_results(&self, index: u64) -> Result<Vec<Appended>, StoreError> {
        let loc = self.locate_entry(index)?;
        let bytes = self.shared().log.read_exact(loc.offset, loc.len as usize)?;
        entry::message_results(&bytes)
    }
}
