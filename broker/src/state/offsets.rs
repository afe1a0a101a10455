//! Committed consumer offsets per (group, topic, queue): a table of the replicated state.

use std::sync::Arc;

use sluice_proto::v1::{CommitOffsetsOp, ResetOffsetsOp};

use super::{table_key, Applied, Staged, TREE};
use crate::meta::{MetaError, MetaStore};

pub const TABLE: &str = "offsets";
/// Each group's reset epoch (key: the group; value: u64, big endian): how many times an
/// operator reset its offsets. Absent: 0.
pub const RESETS: &str = "offset_resets";

fn reset_key(group: &str) -> Vec<u8> {
    table_key(RESETS, group.as_bytes())
}

fn epoch_in(meta: &dyn MetaStore, staged: &Staged, group: &str) -> Result<u64, MetaError> {
    staged
        .get(meta, &reset_key(group))?
        .map_or(Ok(0), |v| decode_u64(&v))
}

/// Reads of the table (writes are [`super::StateMachine::apply`]'s).
pub struct OffsetTable {
    meta: Arc<dyn MetaStore>,
}

/// Key layout in the table: group \0 topic \0 queue-id (big endian), so a prefix scan lists a
/// group or a group's topic in queue order. Names cannot contain \0 (validated on the way in).
fn key(group: &str, topic: &str, queue_id: u32) -> Vec<u8> {
    let mut k = prefix(group, Some(topic));
    k.extend_from_slice(&queue_id.to_be_bytes());
    k
}

fn prefix(group: &str, topic: Option<&str>) -> Vec<u8> {
    let mut k = Vec::with_capacity(TABLE.len() + group.len() + 40);
    k.extend_from_slice(&table_key(TABLE, group.as_bytes()));
    k.push(0);
    if let Some(t) = topic {
        k.extend_from_slice(t.as_bytes());
        k.push(0);
    }
    k
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
}

pub(super) fn apply_commit(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    c: &CommitOffsetsOp,
) -> Result<Applied, MetaError> {
    // A commit made before a reset (by a consumer that had not heard of it) would undo it.
    if let Some(known) = c.reset_epoch {
        if epoch_in(meta, staged, &c.group)? > known {
            return Ok(Applied::Unchanged);
        }
    }
    for o in &c.offsets {
        if !c.lock_owner.is_empty()
            && super::locks::holder(meta, staged, &c.group, &o.topic, o.queue_id)?.as_deref()
                != Some(c.lock_owner.as_str())
        {
            // An ordered consumer that lost the queue: the new holder's position stands.
            continue;
        }
        staged.put(
            key(&c.group, &o.topic, o.queue_id),
            o.offset.to_be_bytes().to_vec(),
        );
    }
    Ok(Applied::Changed)
}

/// Forgets a group's offsets (its retry policy is `groups`'). The reset epoch goes up instead
/// of away, so a live member's later commits (made before it heard) are ignored and it starts
/// again from its start position.
pub(super) fn apply_delete_group(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    group: &str,
) -> Result<Applied, MetaError> {
    let keys: Vec<Vec<u8>> = staged
        .scan_prefix(meta, &prefix(group, None))?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let epoch = staged.get(meta, &reset_key(group))?;
    if keys.is_empty() && epoch.is_none() {
        return Ok(Applied::Unchanged);
    }
    for k in keys {
        staged.delete(k);
    }
    let next = epoch.map_or(Ok(0), |v| decode_u64(&v))?.saturating_add(1);
    staged.put(reset_key(group), next.to_be_bytes().to_vec());
    Ok(Applied::Changed)
}

pub(super) fn apply_reset(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    r: &ResetOffsetsOp,
) -> Result<Applied, MetaError> {
    let epoch = epoch_in(meta, staged, &r.group)?.saturating_add(1);
    staged.put(reset_key(&r.group), epoch.to_be_bytes().to_vec());
    for o in &r.offsets {
        staged.put(
            key(&r.group, &o.topic, o.queue_id),
            o.offset.to_be_bytes().to_vec(),
        );
    }
    Ok(Applied::Changed)
}

impl OffsetTable {
    pub(crate) fn new(meta: Arc<dyn MetaStore>) -> Self {
        OffsetTable { meta }
    }

    /// The group's reset epoch (0: never reset).
    pub fn reset_epoch(&self, group: &str) -> Result<u64, MetaError> {
        epoch_in(self.meta.as_ref(), &Staged::default(), group)
    }

    pub fn get(&self, group: &str, topic: &str, queue_id: u32) -> Result<Option<u64>, MetaError> {
        match self.meta.get(TREE, &key(group, topic, queue_id))? {
            None => Ok(None),
            Some(v) => decode_u64(&v).map(Some),
        }
    }

    /// Every group with committed offsets, sorted.
    pub fn groups(&self) -> Result<Vec<String>, MetaError> {
        let table = table_key(TABLE, b"");
        let mut out: Vec<String> = Vec::new();
        for (k, _) in self.meta.scan_prefix(TREE, &table)? {
            let rest = k.get(table.len()..).unwrap_or_default();
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            let g = String::from_utf8_lossy(rest.get(..end).unwrap_or_default()).into_owned();
            if out.last() != Some(&g) {
                out.push(g);
            }
        }
        Ok(out)
    }

    /// Every committed offset of a group, optionally of one topic.
    pub fn list(
        &self,
        group: &str,
        topic: Option<&str>,
    ) -> Result<Vec<CommittedOffset>, MetaError> {
        let mut out = Vec::new();
        let group_prefix = prefix(group, None);
        for (k, v) in self.meta.scan_prefix(TREE, &prefix(group, topic))? {
            let corrupt = || MetaError::Corrupt {
                tree: TREE.into(),
                reason: format!("bad offset key {:?}", String::from_utf8_lossy(&k)),
            };
            let rest = k.get(group_prefix.len()..).ok_or_else(corrupt)?;
            let sep = rest.iter().position(|b| *b == 0).ok_or_else(corrupt)?;
            let topic = String::from_utf8(rest[..sep].to_vec()).map_err(|_| corrupt())?;
            let qid: [u8; 4] = rest[sep + 1..].try_into().map_err(|_| corrupt())?;
            out.push(CommittedOffset {
                topic,
                queue_id: u32::from_be_bytes(qid),
                offset: decode_u64(&v)?,
            });
        }
        Ok(out)
    }
}

fn decode_u64(v: &[u8]) -> Result<u64, MetaError> {
    let b: [u8; 8] = v.try_into().map_err(|_| MetaError::Corrupt {
        tree: TREE.into(),
        reason: format!("offset value of {} bytes", v.len()),
    })?;
    Ok(u64::from_be_bytes(b))
}
