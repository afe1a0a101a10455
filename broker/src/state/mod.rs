//! The broker's replicated state machine: one registry of tables (topic configs, committed
//! offsets, ...) in one tree of the metadata store, each table under a key prefix of its own.
//!
//! Rules (see ARCHITECTURE.md, "Replicated state"):
//! - every change is a [`StateOp`] applied here, deterministically: the result depends only on
//!   the op and the state before it (no clock, no randomness);
//! - the ops of one apply call and the applied index are written in one atomic batch, so a
//!   crash never leaves ops applied without the index that says so (or the reverse);
//! - a dump carries every table whole with the index it is at; restoring clears each table
//!   first, so a key deleted on the leader does not come back on a replica that installs it.
//!
//! A replica group applies ops from the Raft log (`replication/applier.rs`); a standalone
//! broker applies them directly (`messaging::WritePath`). Both go through [`StateMachine::apply`].

pub mod acl;
pub mod groups;
pub mod locks;
pub mod offsets;
pub mod producers;
mod staged;
pub mod topics;
pub mod transactions;
pub mod tx_ended;
pub mod tx_index;

use std::sync::Arc;

use parking_lot::Mutex;
use prost::Message as _;
use sluice_proto::v1::meta_op::Op;
use sluice_proto::v1::{MetaKeyValue, StateDump, StateTable, TopicConfig};
use tokio::sync::Notify;

use crate::meta::{MetaError, MetaStore, WriteOp};
pub use offsets::{CommittedOffset, OffsetTable};
pub use sluice_proto::v1::MetaOp as StateOp;
pub(crate) use staged::Staged;
pub use topics::TopicTable;

/// The metadata-store tree every table lives in (one tree: sled batches are atomic per tree).
pub const TREE: &str = "state";

/// Every table of the registry, by key prefix. A dump carries each; a restore clears each.
pub const TABLES: &[&str] = &[
    topics::TABLE,
    offsets::TABLE,
    offsets::RESETS,
    groups::TABLE,
    producers::PRODUCERS,
    producers::SEQUENCES,
    transactions::TABLE,
    tx_ended::TABLE,
    tx_ended::LEGACY,
    locks::TABLE,
    locks::CLOCK,
    acl::USERS,
    acl::POLICIES,
];

/// Bookkeeping keys outside the tables (never dumped: the dump's own index replaces them).
const APPLIED_KEY: &[u8] = b"sys/applied_index";

/// Trees of earlier builds, moved into [`TREE`] at open.
const OLD_TOPICS_TREE: &str = "topics";
const OLD_OFFSETS_TREE: &str = "offsets";
const OLD_REPLICATION_TREE: &str = "replication";

/// Full key of `key` in `table`.
pub fn table_key(table: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(table.len() + 1 + key.len());
    k.extend_from_slice(table.as_bytes());
    k.push(b'/');
    k.extend_from_slice(key);
    k
}

/// The op that commits `offsets` for `group`.
fn offset_entries(offsets: &[CommittedOffset]) -> Vec<sluice_proto::v1::OffsetEntry> {
    offsets
        .iter()
        .map(|o| sluice_proto::v1::OffsetEntry {
            topic: o.topic.clone(),
            queue_id: o.queue_id,
            offset: o.offset,
        })
        .collect()
}

/// Forgets a consumer group (offsets, reset epoch, retry policy).
pub fn delete_group_op(group: &str) -> StateOp {
    StateOp {
        op: Some(Op::DeleteGroup(group.to_string())),
    }
}

/// An operator's reset of `group`'s offsets (the group's reset epoch goes up by one).
pub fn reset_offsets_op(group: &str, offsets: &[CommittedOffset]) -> StateOp {
    StateOp {
        op: Some(Op::ResetOffsets(sluice_proto::v1::ResetOffsetsOp {
            group: group.to_string(),
            offsets: offset_entries(offsets),
        })),
    }
}

/// A consumer's commit; `reset_epoch` is the group's epoch it knows (None: no check);
/// `lock_owner` the ordered consumer committing (only its locked queues count; "": no check).
pub fn commit_offsets_at(
    group: &str,
    offsets: &[CommittedOffset],
    reset_epoch: Option<u64>,
    lock_owner: &str,
) -> StateOp {
    StateOp {
        op: Some(Op::CommitOffsets(sluice_proto::v1::CommitOffsetsOp {
            group: group.to_string(),
            offsets: offset_entries(offsets),
            reset_epoch,
            lock_owner: lock_owner.to_string(),
        })),
    }
}

pub fn commit_offsets_op(group: &str, offsets: &[CommittedOffset]) -> StateOp {
    StateOp {
        op: Some(Op::CommitOffsets(sluice_proto::v1::CommitOffsetsOp {
            group: group.to_string(),
            offsets: offset_entries(offsets),
            reset_epoch: None,
            lock_owner: String::new(),
        })),
    }
}

pub fn upsert_topic_op(cfg: TopicConfig) -> StateOp {
    StateOp {
        op: Some(Op::UpsertTopic(cfg)),
    }
}

pub fn set_group_config_op(cfg: sluice_proto::v1::GroupConfig) -> StateOp {
    StateOp {
        op: Some(Op::SetGroupConfig(cfg)),
    }
}

pub fn delete_topic_op(name: &str) -> StateOp {
    StateOp {
        op: Some(Op::DeleteTopic(name.to_string())),
    }
}

/// A META record's body as an op; an undecodable one is skipped with an error log, alike on
/// every replica.
pub fn decode_op(body: &[u8]) -> Option<StateOp> {
    match StateOp::decode(body) {
        Ok(op) => Some(op),
        Err(e) => {
            tracing::error!(len = body.len(), error = %e, "skipping an undecodable state operation");
            None
        }
    }
}

/// The ops a batch's first record announces (its sequence, its half messages); `locator`
/// finds the batch again (a replica group's entry index, a standalone commit-log offset).
pub fn batch_ops(m: &crate::store::BatchMarks, locator: u64) -> Vec<StateOp> {
    let mut ops = Vec::new();
    if let Some(b) = &m.sequence {
        ops.push(producers::record_op(
            &b.mark,
            &b.topic,
            b.queue_id,
            &b.first_message_id,
            locator,
            b.store_timestamp_ms,
            0,
        ));
    }
    if let Some(h) = &m.half {
        ops.push(transactions::half_op(sluice_proto::v1::TxHalfOp {
            transaction_id: h.transaction_id.clone(),
            producer_group: h.mark.producer_group.clone(),
            topic: h.topic.clone(),
            queue_id: h.queue_id,
            locator,
            count: h.mark.count,
            bytes: h.mark.bytes,
            at_ms: h.store_timestamp_ms,
            first_message_id: h.first_message_id.clone(),
        }));
    }
    ops
}

/// What applying one op changed, for the caller's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed,
    Unchanged,
}

/// The registry. Cheap to share (`Arc`); applies are serialized inside.
pub struct StateMachine {
    meta: Arc<dyn MetaStore>,
    pub topics: Arc<TopicTable>,
    /// Users and policies, as the request checks read them.
    pub acl: Arc<acl::AclTable>,
    pub offsets: OffsetTable,
    /// Open transactions per producer group.
    pub tx_open: tx_index::OpenIndex,
    /// Where each resolved transaction is.
    pub tx_ended: tx_ended::EndedIndex,
    /// Wakes nameserver registration after a topic change.
    reregister: Arc<Notify>,
    /// One apply at a time (the replica thread, or a standalone broker's handlers).
    apply_lock: Mutex<()>,
}

impl StateMachine {
    /// Opens the state in `meta`, moving an earlier build's trees into the state tree first.
    pub fn open(meta: Arc<dyn MetaStore>, reregister: Arc<Notify>) -> Result<Self, MetaError> {
        migrate(meta.as_ref())?;
        let topics = Arc::new(TopicTable::load(meta.as_ref())?);
        Ok(StateMachine {
            offsets: OffsetTable::new(meta.clone()),
            tx_open: tx_index::OpenIndex::load(meta.as_ref())?,
            tx_ended: tx_ended::EndedIndex::load(meta.as_ref())?,
            acl: Arc::new(acl::AclTable::load(meta.as_ref())?),
            meta,
            topics,
            reregister,
            apply_lock: Mutex::new(()),
        })
    }

    pub fn meta(&self) -> &Arc<dyn MetaStore> {
        &self.meta
    }

    /// The index of the last log entry whose ops are applied (0: none, or standalone).
    pub fn applied_index(&self) -> Result<u64, MetaError> {
        match self.meta.get(TREE, APPLIED_KEY)? {
            None => Ok(0),
            Some(v) => <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| MetaError::Corrupt {
                    tree: TREE.into(),
                    reason: format!("applied index of {} bytes", v.len()),
                }),
        }
    }

    /// Applies `ops` in order, and records `index` as applied in the same atomic batch (`None`:
    /// a standalone broker, no index). An op that is invalid here (only a bug or a version
    /// mismatch gets one past the proposer's checks) is skipped with an error log, alike on
    /// every replica. `durable` flushes before returning (standalone: the answer promises it;
    /// a replica group has the op in its log).
    pub fn apply(
        &self,
        index: Option<u64>,
        ops: &[StateOp],
        durable: bool,
    ) -> Result<Vec<Applied>, MetaError> {
        let _one = self.apply_lock.lock();
        let mut staged = Staged::default();
        let mut results = Vec::with_capacity(ops.len());
        let mut topics_changed = false;
        let mut acl_changed = false;
        let mut tx = transactions::TxApply {
            open: &self.tx_open,
            ended: &self.tx_ended,
            changes: tx_index::Changes::new(),
            pending: Default::default(),
        };
        for op in ops {
            let r = match &op.op {
                None => {
                    tracing::error!("skipping an empty state operation");
                    Applied::Unchanged
                }
                Some(Op::CommitOffsets(c)) => {
                    offsets::apply_commit(self.meta.as_ref(), &mut staged, c)?
                }
                Some(Op::ResetOffsets(r)) => {
                    offsets::apply_reset(self.meta.as_ref(), &mut staged, r)?
                }
                Some(Op::DeleteGroup(g)) => {
                    let a = offsets::apply_delete_group(self.meta.as_ref(), &mut staged, g)?;
                    let b = groups::apply_delete(self.meta.as_ref(), &mut staged, g)?;
                    let c = locks::apply_delete_group(self.meta.as_ref(), &mut staged, g)?;
                    if a == Applied::Changed || b == Applied::Changed || c {
                        Applied::Changed
                    } else {
                        Applied::Unchanged
                    }
                }
                Some(Op::UpsertTopic(cfg)) => {
                    topics::apply_upsert(self.meta.as_ref(), &mut staged, cfg)?
                }
                Some(Op::DeleteTopic(name)) => {
                    let r = topics::apply_delete(self.meta.as_ref(), &mut staged, name)?;
                    locks::apply_delete_topic(self.meta.as_ref(), &mut staged, name)?;
                    r
                }
                Some(Op::SetGroupConfig(cfg)) => {
                    groups::apply_set(self.meta.as_ref(), &mut staged, cfg)?
                }
                Some(Op::RegisterProducer(r)) => {
                    producers::apply_register(self.meta.as_ref(), &mut staged, r)?
                }
                Some(Op::RecordSequence(r)) => {
                    producers::apply_record(self.meta.as_ref(), &mut staged, r)?
                }
                Some(Op::ExpireProducers(e)) => {
                    producers::apply_expire(self.meta.as_ref(), &mut staged, e)?
                }
                Some(Op::StandaloneRescanPoint(p)) => {
                    producers::apply_rescan_point(&mut staged, *p)
                }
                Some(Op::TxHalf(h)) => {
                    transactions::apply_half(self.meta.as_ref(), &mut staged, h, &mut tx)?
                }
                Some(Op::TxResolve(r)) => transactions::apply_ends(
                    self.meta.as_ref(),
                    &mut staged,
                    std::slice::from_ref(r),
                    &mut tx,
                )?,
                Some(Op::TxEnds(e)) => {
                    transactions::apply_ends(self.meta.as_ref(), &mut staged, &e.ends, &mut tx)?
                }
                Some(Op::TxChecked(c)) => {
                    transactions::apply_checked(self.meta.as_ref(), &mut staged, c, &mut tx)?
                }
                Some(Op::QueueLock(l)) => locks::apply_lock(self.meta.as_ref(), &mut staged, l)?,
                Some(Op::TxForget(f)) => {
                    transactions::apply_forget(self.meta.as_ref(), &mut staged, f, &mut tx)?
                }
                Some(Op::PutUser(u)) => acl::apply_put_user(self.meta.as_ref(), &mut staged, u)?,
                Some(Op::DeleteUser(u)) => {
                    acl::apply_delete_user(self.meta.as_ref(), &mut staged, u)?
                }
                Some(Op::Grant(p)) => acl::apply_policy(self.meta.as_ref(), &mut staged, p, true)?,
                Some(Op::Revoke(p)) => {
                    acl::apply_policy(self.meta.as_ref(), &mut staged, p, false)?
                }
            };
            acl_changed |= r == Applied::Changed
                && matches!(
                    op.op,
                    Some(Op::PutUser(_) | Op::DeleteUser(_) | Op::Grant(_) | Op::Revoke(_))
                );
            topics_changed |= r == Applied::Changed
                && matches!(op.op, Some(Op::UpsertTopic(_) | Op::DeleteTopic(_)));
            results.push(r);
        }
        let mut writes = staged.into_ops();
        if let Some(index) = index {
            writes.push(WriteOp::Put(
                APPLIED_KEY.to_vec(),
                index.to_be_bytes().to_vec(),
            ));
        }
        if !writes.is_empty() {
            self.meta.write_batch_owned(TREE, writes)?;
        }
        // Right after the writes (a failed flush leaves them visible); resolved ones first,
        // which narrows the moment a reader finds a transaction neither open nor resolved.
        self.tx_ended.apply(tx.pending);
        self.tx_open.apply(tx.changes);
        if durable {
            self.meta.flush()?;
        }
        if acl_changed {
            self.acl.reload(self.meta.as_ref())?;
        }
        if topics_changed {
            self.topics.reload(self.meta.as_ref())?;
            self.reregister.notify_one();
        }
        Ok(results)
    }

    /// Decodes META record bodies and applies them (see [`Self::apply`]).
    pub fn apply_encoded(
        &self,
        index: Option<u64>,
        bodies: &[bytes::Bytes],
        durable: bool,
    ) -> Result<(), MetaError> {
        let ops: Vec<StateOp> = bodies.iter().filter_map(|b| decode_op(b)).collect();
        self.apply(index, &ops, durable).map(|_| ())
    }

    /// Every table whole, with the index it is at.
    pub fn dump(&self) -> Result<StateDump, MetaError> {
        let _one = self.apply_lock.lock();
        let mut tables = Vec::with_capacity(TABLES.len());
        for name in TABLES {
            let prefix = table_key(name, b"");
            let entries = self
                .meta
                .scan_prefix(TREE, &prefix)?
                .into_iter()
                .map(|(k, v)| MetaKeyValue {
                    key: k.get(prefix.len()..).unwrap_or_default().to_vec().into(),
                    value: v.into(),
                })
                .collect();
            tables.push(StateTable {
                name: (*name).to_string(),
                entries,
            });
        }
        Ok(StateDump {
            applied_index: self.applied_index()?,
            tables,
        })
    }

    /// Replaces every table with the dump's (tables it does not name end up empty) and the
    /// applied index with its index, in one atomic batch.
    pub fn restore(&self, dump: &StateDump) -> Result<(), MetaError> {
        let _one = self.apply_lock.lock();
        let mut writes = Vec::new();
        for name in TABLES {
            for (k, _) in self.meta.scan_prefix(TREE, &table_key(name, b""))? {
                writes.push(WriteOp::Delete(k));
            }
        }
        for t in &dump.tables {
            if !TABLES.contains(&t.name.as_str()) {
                // A newer build's table: this build has no use for it.
                tracing::warn!(table = %t.name, "snapshot table unknown to this build; skipped");
                continue;
            }
            for kv in &t.entries {
                writes.push(WriteOp::Put(table_key(&t.name, &kv.key), kv.value.to_vec()));
            }
        }
        writes.push(WriteOp::Put(
            APPLIED_KEY.to_vec(),
            dump.applied_index.to_be_bytes().to_vec(),
        ));
        self.meta.write_batch(TREE, &writes)?;
        self.meta.flush()?;
        self.topics.reload(self.meta.as_ref())?;
        self.acl.reload(self.meta.as_ref())?;
        self.tx_open.reload(self.meta.as_ref())?;
        self.tx_ended.reload(self.meta.as_ref())?;
        self.reregister.notify_one();
        Ok(())
    }

    /// An earlier build's snapshot (topics and offsets, no index): as a dump at `index`.
    pub fn legacy_dump(index: u64, topics: &[TopicConfig], offsets: &[MetaKeyValue]) -> StateDump {
        StateDump {
            applied_index: index,
            tables: vec![
                StateTable {
                    name: topics::TABLE.into(),
                    entries: topics
                        .iter()
                        .map(|t| MetaKeyValue {
                            key: t.name.clone().into_bytes().into(),
                            value: t.encode_to_vec().into(),
                        })
                        .collect(),
                },
                StateTable {
                    name: offsets::TABLE.into(),
                    entries: offsets.to_vec(),
                },
            ],
        }
    }

    /// A transaction as the applied state holds it (open or resolved); an id that is not
    /// open is looked up in memory first.
    pub fn transaction(&self, id: &str) -> Result<Option<sluice_proto::v1::TxRecord>, MetaError> {
        match self.tx_open.contains(id) {
            true => transactions::get(self.meta.as_ref(), &self.tx_ended, id),
            false => self.tx_ended.find(self.meta.as_ref(), id),
        }
    }

    /// The retry policy of a consumer group.
    pub fn retry_policy(&self, group: &str) -> Result<groups::RetryPolicy, MetaError> {
        groups::policy(self.meta.as_ref(), group)
    }

    /// Blocks until every applied op is on disk.
    pub fn flush(&self) -> Result<(), MetaError> {
        self.meta.flush()
    }
}

/// Moves the per-table trees of earlier builds into the state tree (one batch), then empties
/// them. A no-op once done.
fn migrate(meta: &dyn MetaStore) -> Result<(), MetaError> {
    let old_topics = meta.scan_prefix(OLD_TOPICS_TREE, b"")?;
    let old_offsets = meta.scan_prefix(OLD_OFFSETS_TREE, b"")?;
    let old_applied = meta.get(OLD_REPLICATION_TREE, b"applied_index")?;
    if old_topics.is_empty() && old_offsets.is_empty() && old_applied.is_none() {
        return Ok(());
    }
    let mut writes = Vec::new();
    for (k, v) in &old_topics {
        writes.push(WriteOp::Put(table_key(topics::TABLE, k), v.clone()));
    }
    for (k, v) in &old_offsets {
        writes.push(WriteOp::Put(table_key(offsets::TABLE, k), v.clone()));
    }
    if let Some(v) = old_applied {
        writes.push(WriteOp::Put(APPLIED_KEY.to_vec(), v));
    }
    meta.write_batch(TREE, &writes)?;
    meta.flush()?;
    let clear = |entries: &[(Vec<u8>, Vec<u8>)]| -> Vec<WriteOp> {
        entries
            .iter()
            .map(|(k, _)| WriteOp::Delete(k.clone()))
            .collect()
    };
    meta.write_batch(OLD_TOPICS_TREE, &clear(&old_topics))?;
    meta.write_batch(OLD_OFFSETS_TREE, &clear(&old_offsets))?;
    meta.delete(OLD_REPLICATION_TREE, b"applied_index")?;
    meta.flush()?;
    tracing::info!(
        topics = old_topics.len(),
        offsets = old_offsets.len(),
        "moved metadata of an earlier build into the state tree"
    );
    Ok(())
}

#[cfg(test)]
mod tests;
