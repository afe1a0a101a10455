//! Applies committed entries on every replica: metadata operations go to the metadata store,
//! and the commit log's confirmed position moves up so consume queues and the index include
//! the entries' messages. The applied index is kept in the metadata store (written after the
//! operations it covers), so a restart resumes where it stopped.

use tokio::sync::watch;

use super::backend::LogBackend;
use super::io::{Applier, ApplyError, CommittedEntry, EntryKind};
use super::meta_ops::MetaState;
use super::snapshot_log::decode_snapshot;

const TREE: &str = "replication";
const APPLIED_KEY: &[u8] = b"applied_index";

pub struct BrokerApplier<B: LogBackend> {
    backend: B,
    meta: MetaState,
    applied: u64,
    applied_tx: watch::Sender<u64>,
}

fn store_fault(e: impl std::fmt::Display) -> ApplyError {
    ApplyError(format!("commit log: {e}"))
}

impl<B: LogBackend> BrokerApplier<B> {
    /// Resumes after the persisted applied index, clamped to the log `[first - 1, last]` (a
    /// log that lost its unsynced tail in a crash re-applies from what it kept).
    pub fn open(
        backend: B,
        meta: MetaState,
        first_index: u64,
        last_index: u64,
    ) -> Result<(Self, watch::Receiver<u64>), ApplyError> {
        let persisted = match meta.meta.get(TREE, APPLIED_KEY) {
            Ok(Some(v)) => <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| ApplyError(format!("applied index of {} bytes", v.len())))?,
            Ok(None) => 0,
            Err(e) => return Err(ApplyError(e.to_string())),
        };
        let applied = persisted.min(last_index).max(first_index.saturating_sub(1));
        if applied != persisted {
            tracing::warn!(
                persisted,
                applied,
                first_index,
                last_index,
                "applied index adjusted to the log held"
            );
        }
        backend.resume(applied).map_err(store_fault)?;
        let (applied_tx, rx) = watch::channel(applied);
        Ok((
            BrokerApplier {
                backend,
                meta,
                applied,
                applied_tx,
            },
            rx,
        ))
    }

    fn record_applied(&mut self, index: u64) -> Result<(), ApplyError> {
        // Not flushed here: sled flushes on its own timer, and a lost update only re-applies
        // idempotent operations after a crash.
        self.meta
            .meta
            .put(TREE, APPLIED_KEY, &index.to_be_bytes())
            .map_err(|e| ApplyError(e.to_string()))?;
        self.applied = index;
        self.applied_tx.send_replace(index);
        Ok(())
    }
}

impl<B: LogBackend> Applier for BrokerApplier<B> {
    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn apply(&mut self, entries: &[CommittedEntry]) -> Result<(), ApplyError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        for e in entries {
            if e.kind != EntryKind::Normal {
                continue;
            }
            for body in self.backend.meta_bodies(&e.data).map_err(store_fault)? {
                self.meta.apply(&body)?;
            }
        }
        self.backend.commit(entries).map_err(store_fault)?;
        self.record_applied(last.index)
    }

    fn apply_snapshot(&mut self, index: u64, term: u64) -> Result<(), ApplyError> {
        Err(ApplyError(format!(
            "snapshot at {index} (term {term}) without data; a broker snapshot carries metadata"
        )))
    }

    fn apply_snapshot_data(
        &mut self,
        index: u64,
        _term: u64,
        data: &[u8],
    ) -> Result<(), ApplyError> {
        let snap = decode_snapshot(data).map_err(ApplyError)?;
        self.meta.restore(snap.topics, &snap.offsets)?;
        self.backend.commit_snapshot(index).map_err(store_fault)?;
        self.record_applied(index)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use parking_lot::Mutex;
    use prost::Message as _;
    use sluice_proto::v1::{ReplicaSnapshot, TopicConfig};
    use tokio::sync::Notify;

    use super::*;
    use crate::meta::{MemMeta, MetaStore};
    use crate::offsets::{CommittedOffset, OffsetTable};
    use crate::replication::backend::EntryCodec;
    use crate::replication::meta_ops;
    use crate::replication::MemLogStore;
    use crate::store::{AppendBatch, Appended, StoreError};
    use crate::topics::TopicTable;

    /// Entry data: b'M' + meta op, or anything else for a send. Records what it is told.
    #[derive(Clone, Default)]
    struct Fake {
        events: Arc<Mutex<Vec<String>>>,
    }

    impl EntryCodec for Fake {
        fn encode_send(&self, _b: &AppendBatch, _now: i64) -> Result<Bytes, StoreError> {
            Ok(Bytes::from_static(b"S"))
        }
        fn encode_meta(&self, body: &[u8], _now: i64) -> Bytes {
            [&b"M"[..], body].concat().into()
        }
        fn entry_results(&self, _index: u64) -> Result<Vec<Appended>, StoreError> {
            Ok(Vec::new())
        }
    }

    impl LogBackend for Fake {
        type Log = MemLogStore;
        fn raft_log(&self) -> Result<MemLogStore, StoreError> {
            Ok(MemLogStore::new())
        }
        fn meta_bodies(&self, data: &[u8]) -> Result<Vec<Bytes>, StoreError> {
            Ok(match data.split_first() {
                Some((b'M', body)) => vec![Bytes::copy_from_slice(body)],
                _ => Vec::new(),
            })
        }
        fn resume(&self, applied: u64) -> Result<(), StoreError> {
            self.events.lock().push(format!("resume {applied}"));
            Ok(())
        }
        fn commit(&self, entries: &[CommittedEntry]) -> Result<(), StoreError> {
            let last = entries.last().map_or(0, |e| e.index);
            self.events.lock().push(format!("commit {last}"));
            Ok(())
        }
        fn commit_snapshot(&self, index: u64) -> Result<(), StoreError> {
            self.events.lock().push(format!("snapshot {index}"));
            Ok(())
        }
    }

    fn meta_state(meta: Arc<dyn MetaStore>) -> MetaState {
        MetaState {
            topics: Arc::new(TopicTable::load(meta.clone()).unwrap()),
            offsets: Arc::new(OffsetTable::new(meta.clone())),
            meta,
            reregister: Arc::new(Notify::new()),
        }
    }

    fn entry(index: u64, data: Bytes) -> CommittedEntry {
        CommittedEntry {
            index,
            term: 1,
            kind: if data.is_empty() {
                EntryKind::LeaderNoop
            } else {
                EntryKind::Normal
            },
            data,
        }
    }

    fn topic(name: &str) -> TopicConfig {
        TopicConfig {
            name: name.into(),
            read_queues: 2,
            write_queues: 2,
            perm: sluice_proto::perm::READ_WRITE,
        }
    }

    #[test]
    fn applies_metadata_confirms_and_resumes_after_restart() {
        let fake = Fake::default();
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
        let (mut a, applied) =
            BrokerApplier::open(fake.clone(), meta_state(meta.clone()), 1, 0).unwrap();
        assert_eq!(a.applied_index(), 0);
        let op = fake.encode_meta(&meta_ops::upsert_topic(topic("t")).encode_to_vec(), 0);
        let offsets = meta_ops::commit_offsets(
            "g",
            &[CommittedOffset {
                topic: "t".into(),
                queue_id: 1,
                offset: 5,
            }],
        );
        let commit = fake.encode_meta(&offsets.encode_to_vec(), 0);
        a.apply(&[
            entry(1, Bytes::new()),
            entry(2, op),
            entry(3, Bytes::from_static(b"S")),
        ])
        .unwrap();
        a.apply(&[entry(4, commit)]).unwrap();
        assert_eq!(*applied.borrow(), 4);
        assert_eq!(
            fake.events.lock().clone(),
            ["resume 0", "commit 3", "commit 4"]
        );

        // A restart resumes after the persisted index, clamped to the log held.
        let state = meta_state(meta.clone());
        assert!(state.topics.get("t").is_some());
        assert_eq!(state.offsets.get("g", "t", 1).unwrap(), Some(5));
        let (a2, _) = BrokerApplier::open(fake.clone(), state, 1, 10).unwrap();
        assert_eq!(a2.applied_index(), 4);
        let (a3, _) = BrokerApplier::open(fake.clone(), meta_state(meta.clone()), 1, 3).unwrap();
        assert_eq!(a3.applied_index(), 3);
        let (a4, _) = BrokerApplier::open(fake.clone(), meta_state(meta), 8, 10).unwrap();
        assert_eq!(a4.applied_index(), 7);
    }

    #[test]
    fn a_snapshot_replaces_the_metadata() {
        let fake = Fake::default();
        let state = meta_state(Arc::new(MemMeta::default()));
        state.topics.upsert(topic("stale")).unwrap();
        let (mut a, _) = BrokerApplier::open(fake.clone(), state.clone(), 1, 0).unwrap();
        let donor = meta_state(Arc::new(MemMeta::default()));
        donor.topics.upsert(topic("fresh")).unwrap();
        donor
            .offsets
            .commit(
                "g",
                &[CommittedOffset {
                    topic: "fresh".into(),
                    queue_id: 0,
                    offset: 9,
                }],
            )
            .unwrap();
        let (topics, offsets) = donor.dump().unwrap();
        let data = ReplicaSnapshot {
            store: Bytes::from_static(b"store part"),
            topics,
            offsets,
        }
        .encode_to_vec();
        a.apply_snapshot_data(40, 3, &data).unwrap();
        assert_eq!(a.applied_index(), 40);
        assert!(state.topics.get("stale").is_none() && state.topics.get("fresh").is_some());
        assert_eq!(state.offsets.get("g", "fresh", 0).unwrap(), Some(9));
        assert_eq!(fake.events.lock().last().unwrap(), "snapshot 40");
        assert!(a.apply_snapshot_data(41, 3, b"\xff garbage").is_err());
        assert!(a.apply_snapshot(42, 3).is_err());
    }
}
