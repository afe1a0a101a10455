//! Metadata replicated through the Raft log: consumer offset commits and topic changes travel
//! as META entries (a prost-encoded [`MetaOp`] as the record body) and are applied to the
//! metadata store of every replica, in log order. Every operation is an idempotent put or
//! delete, so re-applying entries after a restart, or over a newer snapshot, converges.

use std::sync::Arc;

use prost::Message as _;
use sluice_proto::v1::meta_op::Op;
use sluice_proto::v1::{CommitOffsetsOp, MetaKeyValue, MetaOp, OffsetEntry, TopicConfig};
use tokio::sync::Notify;

use super::io::ApplyError;
use crate::meta::{MetaError, MetaStore};
use crate::offsets::{CommittedOffset, OffsetTable};
use crate::topics::TopicTable;

/// The metadata tree `crate::offsets` keeps committed offsets in (copied whole in snapshots;
/// a unit test below checks it is the one `OffsetTable` writes).
const OFFSETS_TREE: &str = "offsets";

pub fn commit_offsets(group: &str, offsets: &[CommittedOffset]) -> MetaOp {
    MetaOp {
        op: Some(Op::CommitOffsets(CommitOffsetsOp {
            group: group.to_string(),
            offsets: offsets
                .iter()
                .map(|o| OffsetEntry {
                    topic: o.topic.clone(),
                    queue_id: o.queue_id,
                    offset: o.offset,
                })
                .collect(),
        })),
    }
}

pub fn upsert_topic(cfg: TopicConfig) -> MetaOp {
    MetaOp {
        op: Some(Op::UpsertTopic(cfg)),
    }
}

pub fn delete_topic(name: &str) -> MetaOp {
    MetaOp {
        op: Some(Op::DeleteTopic(name.to_string())),
    }
}

/// What applying an operation changed, for the caller's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed,
    Unchanged,
}

/// The replicated metadata of one broker: topic configs and consumer offsets.
#[derive(Clone)]
pub struct MetaState {
    pub(crate) meta: Arc<dyn MetaStore>,
    pub(crate) topics: Arc<TopicTable>,
    pub(crate) offsets: Arc<OffsetTable>,
    /// Wakes nameserver registration after a topic change.
    pub(crate) reregister: Arc<Notify>,
}

fn fault(e: impl std::fmt::Display) -> ApplyError {
    ApplyError(format!("metadata store: {e}"))
}

impl MetaState {
    /// Applies one encoded operation. An operation that is invalid here (it was validated
    /// before it was proposed, so only a bug or a version mismatch gets here) is skipped with
    /// an error log: every replica skips it alike. Storage faults stop the replica.
    pub fn apply(&self, body: &[u8]) -> Result<Applied, ApplyError> {
        let op = match MetaOp::decode(body) {
            Ok(MetaOp { op: Some(op) }) => op,
            Ok(MetaOp { op: None }) | Err(_) => {
                tracing::error!(len = body.len(), "skipping an undecodable metadata entry");
                return Ok(Applied::Unchanged);
            }
        };
        match op {
            Op::CommitOffsets(c) => {
                let entries: Vec<CommittedOffset> = c
                    .offsets
                    .into_iter()
                    .map(|o| CommittedOffset {
                        topic: o.topic,
                        queue_id: o.queue_id,
                        offset: o.offset,
                    })
                    .collect();
                self.offsets.commit(&c.group, &entries).map_err(fault)?;
                Ok(Applied::Changed)
            }
            Op::UpsertTopic(cfg) => match self.topics.upsert(cfg.clone()) {
                Ok(true) => {
                    tracing::info!(topic = %cfg.name, queues = cfg.write_queues, "replicated topic change applied");
                    self.reregister.notify_one();
                    Ok(Applied::Changed)
                }
                Ok(false) => Ok(Applied::Unchanged),
                Err(e) if e.code == sluice_proto::ErrorCode::StoreError => Err(fault(e)),
                Err(e) => {
                    tracing::error!(topic = %cfg.name, error = %e, "skipping an invalid replicated topic config");
                    Ok(Applied::Unchanged)
                }
            },
            Op::DeleteTopic(name) => match self.topics.delete(&name) {
                Ok(true) => {
                    tracing::info!(topic = %name, "replicated topic deletion applied");
                    self.reregister.notify_one();
                    Ok(Applied::Changed)
                }
                Ok(false) => Ok(Applied::Unchanged),
                Err(e) => Err(fault(e)),
            },
        }
    }

    /// The metadata to ship in a snapshot.
    pub fn dump(&self) -> Result<(Vec<TopicConfig>, Vec<MetaKeyValue>), MetaError> {
        let offsets = self
            .meta
            .scan_prefix(OFFSETS_TREE, b"")?
            .into_iter()
            .map(|(key, value)| MetaKeyValue {
                key: key.into(),
                value: value.into(),
            })
            .collect();
        Ok((self.topics.list(), offsets))
    }

    /// Replaces the topics with `topics` and writes `offsets` (a snapshot from the leader).
    pub fn restore(
        &self,
        topics: Vec<TopicConfig>,
        offsets: &[MetaKeyValue],
    ) -> Result<(), ApplyError> {
        let keep: std::collections::HashSet<&str> =
            topics.iter().map(|t| t.name.as_str()).collect();
        for old in self.topics.list() {
            if !keep.contains(old.name.as_str()) {
                self.topics.delete(&old.name).map_err(fault)?;
            }
        }
        for t in topics {
            if let Err(e) = self.topics.upsert(t.clone()) {
                if e.code == sluice_proto::ErrorCode::StoreError {
                    return Err(fault(e));
                }
                tracing::error!(topic = %t.name, error = %e, "snapshot holds an invalid topic config; skipped");
            }
        }
        for kv in offsets {
            self.meta
                .put(OFFSETS_TREE, &kv.key, &kv.value)
                .map_err(fault)?;
        }
        self.meta.flush().map_err(fault)?;
        self.reregister.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MemMeta;
    use sluice_proto::perm;

    fn state() -> MetaState {
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
        MetaState {
            topics: Arc::new(TopicTable::load(meta.clone()).unwrap()),
            offsets: Arc::new(OffsetTable::new(meta.clone())),
            meta,
            reregister: Arc::new(Notify::new()),
        }
    }

    fn topic(name: &str, q: u32) -> TopicConfig {
        TopicConfig {
            name: name.into(),
            read_queues: q,
            write_queues: q,
            perm: perm::READ_WRITE,
        }
    }

    #[test]
    fn ops_apply_and_snapshots_restore() {
        let a = state();
        let off = |t: &str, q, o| CommittedOffset {
            topic: t.into(),
            queue_id: q,
            offset: o,
        };
        let apply = |s: &MetaState, op: MetaOp| s.apply(&op.encode_to_vec()).unwrap();
        assert_eq!(apply(&a, upsert_topic(topic("t1", 4))), Applied::Changed);
        assert_eq!(apply(&a, upsert_topic(topic("t1", 4))), Applied::Unchanged);
        apply(&a, upsert_topic(topic("t2", 2)));
        apply(&a, commit_offsets("g", &[off("t1", 0, 7), off("t1", 3, 9)]));
        apply(&a, delete_topic("t2"));
        assert_eq!(a.offsets.get("g", "t1", 3).unwrap(), Some(9));
        assert!(a.topics.get("t2").is_none());
        // Garbage and invalid configs are skipped, not fatal.
        assert_eq!(a.apply(b"\xff\xff").unwrap(), Applied::Unchanged);
        assert_eq!(
            apply(&a, upsert_topic(topic("bad name!", 1))),
            Applied::Unchanged
        );

        // The offsets tree is the one OffsetTable writes.
        let (topics, offsets) = a.dump().unwrap();
        assert_eq!(offsets.len(), 2);
        let b = state();
        apply(&b, upsert_topic(topic("stale", 1)));
        b.restore(topics, &offsets).unwrap();
        assert_eq!(b.topics.list(), a.topics.list());
        assert_eq!(
            b.offsets.list("g", None).unwrap(),
            a.offsets.list("g", None).unwrap()
        );
    }
}
