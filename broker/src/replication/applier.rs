//! Applies committed entries on every replica: state operations go to the state machine
//! (`crate::state`, in one atomic batch with the applied index), and the commit log's
//! confirmed position moves up so consume queues and the index include the entries'
//! messages. A restart resumes after the applied index the state recorded.

use std::sync::Arc;

use tokio::sync::watch;

use super::backend::LogBackend;
use super::io::{Applier, ApplyError, CommittedEntry, EntryKind};
use super::snapshot_log::decode_snapshot;
use crate::state::{self, StateMachine};

pub struct BrokerApplier<B: LogBackend> {
    backend: B,
    state: Arc<StateMachine>,
    /// Entries up to here are committed to the store.
    applied: u64,
    /// Entries up to here have their state ops in the state (a snapshot's dump may be ahead of
    /// the log: its ops are not applied twice).
    state_applied: u64,
    applied_tx: watch::Sender<u64>,
}

fn store_fault(e: impl std::fmt::Display) -> ApplyError {
    ApplyError(format!("commit log: {e}"))
}

fn state_fault(e: impl std::fmt::Display) -> ApplyError {
    ApplyError(format!("state store: {e}"))
}

impl<B: LogBackend> BrokerApplier<B> {
    /// Resumes after the persisted applied index, clamped to the log `[first - 1, last]` (a
    /// log that lost its unsynced tail in a crash re-applies from what it kept).
    pub fn open(
        backend: B,
        state: Arc<StateMachine>,
        first_index: u64,
        last_index: u64,
    ) -> Result<(Self, watch::Receiver<u64>), ApplyError> {
        let persisted = state.applied_index().map_err(state_fault)?;
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
                state,
                applied,
                state_applied: persisted,
                applied_tx,
            },
            rx,
        ))
    }

    fn record_applied(&mut self, index: u64) {
        self.applied = index;
        self.applied_tx.send_replace(index);
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
        if last.index > self.state_applied {
            let mut ops = Vec::new();
            for e in entries {
                if e.kind != EntryKind::Normal || e.index <= self.state_applied {
                    continue;
                }
                let bodies = self.backend.meta_bodies(&e.data).map_err(store_fault)?;
                if bodies.is_empty() {
                    // A send: what its first record announces, located by the entry.
                    ops.extend(state::batch_ops(&self.backend.marks(&e.data), e.index));
                }
                ops.extend(bodies.iter().filter_map(|b| state::decode_op(b)));
            }
            // Not flushed: the ops are in the log; a crash re-applies from the index kept.
            self.state
                .apply(Some(last.index), &ops, false)
                .map_err(state_fault)?;
            self.state_applied = last.index;
        }
        self.backend.commit(entries).map_err(store_fault)?;
        self.record_applied(last.index);
        Ok(())
    }

    fn apply_snapshot(&mut self, index: u64, term: u64) -> Result<(), ApplyError> {
        Err(ApplyError(format!(
            "snapshot at {index} (term {term}) without data; a broker snapshot carries its state"
        )))
    }

    fn apply_snapshot_data(
        &mut self,
        index: u64,
        _term: u64,
        data: &[u8],
    ) -> Result<(), ApplyError> {
        let snap = decode_snapshot(data).map_err(ApplyError)?;
        let dump = snap.state.unwrap_or_else(|| {
            // An earlier build's snapshot: idempotent puts at or after `index`.
            StateMachine::legacy_dump(index, &snap.topics, &snap.offsets)
        });
        self.state.restore(&dump).map_err(state_fault)?;
        self.state_applied = dump.applied_index;
        self.backend.commit_snapshot(index).map_err(store_fault)?;
        self.record_applied(index);
        Ok(())
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
    use crate::replication::backend::EntryCodec;
    use crate::replication::MemLogStore;
    use crate::state::{self, CommittedOffset};
    use crate::store::{AppendBatch, Appended, StoreError};

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

    fn meta_state(meta: Arc<dyn MetaStore>) -> Arc<StateMachine> {
        Arc::new(StateMachine::open(meta, Arc::new(Notify::new())).unwrap())
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
        let op = fake.encode_meta(&state::upsert_topic_op(topic("t")).encode_to_vec(), 0);
        let offsets = state::commit_offsets_op(
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
    fn a_snapshot_replaces_the_state_and_its_ops_are_not_applied_twice() {
        let fake = Fake::default();
        let state = meta_state(Arc::new(MemMeta::default()));
        state
            .apply(Some(1), &[state::upsert_topic_op(topic("stale"))], false)
            .unwrap();
        let (mut a, _) = BrokerApplier::open(fake.clone(), state.clone(), 1, 1).unwrap();
        // The donor's dump is at 45, ahead of the snapshot index 40: it created "late" at 43
        // and deleted it at 45.
        let donor = meta_state(Arc::new(MemMeta::default()));
        let offsets = [CommittedOffset {
            topic: "fresh".into(),
            queue_id: 0,
            offset: 9,
        }];
        donor
            .apply(
                Some(40),
                &[
                    state::upsert_topic_op(topic("fresh")),
                    state::commit_offsets_op("g", &offsets),
                ],
                false,
            )
            .unwrap();
        let create_late = state::upsert_topic_op(topic("late"));
        donor
            .apply(Some(43), std::slice::from_ref(&create_late), false)
            .unwrap();
        donor
            .apply(Some(45), &[state::delete_topic_op("late")], false)
            .unwrap();
        let data = ReplicaSnapshot {
            store: Bytes::from_static(b"store part"),
            state: Some(donor.dump().unwrap()),
            ..Default::default()
        }
        .encode_to_vec();
        a.apply_snapshot_data(40, 3, &data).unwrap();
        assert_eq!(a.applied_index(), 40);
        assert!(state.topics.get("stale").is_none() && state.topics.get("fresh").is_some());
        assert_eq!(state.offsets.get("g", "fresh", 0).unwrap(), Some(9));
        assert_eq!(fake.events.lock().last().unwrap(), "snapshot 40");
        // Entries 41-45 are in the dump already: "late" is not created again; 46 applies.
        let late = fake.encode_meta(&create_late.encode_to_vec(), 0);
        let newer = fake.encode_meta(&state::upsert_topic_op(topic("newer")).encode_to_vec(), 0);
        a.apply(&[entry(43, late), entry(46, newer)]).unwrap();
        assert!(state.topics.get("late").is_none());
        assert!(state.topics.get("newer").is_some());
        assert_eq!(state.applied_index().unwrap(), 46);

        // An earlier build's snapshot (topics and offsets, no dump) still installs.
        let legacy = ReplicaSnapshot {
            store: Bytes::new(),
            topics: vec![topic("old-form")],
            ..Default::default()
        }
        .encode_to_vec();
        a.apply_snapshot_data(50, 4, &legacy).unwrap();
        assert_eq!(state.topics.list(), vec![topic("old-form")]);
        assert!(a.apply_snapshot_data(51, 4, b"\xff garbage").is_err());
        assert!(a.apply_snapshot(52, 4).is_err());
    }
}
