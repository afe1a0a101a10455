//! Committed consumer offsets per (group, topic, queue), in the metadata store.

use std::sync::Arc;

use crate::meta::{MetaError, MetaStore};

const TREE: &str = "offsets";

pub struct OffsetTable {
    meta: Arc<dyn MetaStore>,
}

/// Key layout: group \0 topic \0 queue-id (big endian), so a prefix scan lists a group or a
/// group's topic in queue order. Names cannot contain \0 (validated on the way in).
fn key(group: &str, topic: &str, queue_id: u32) -> Vec<u8> {
    let mut k = prefix(group, Some(topic));
    k.extend_from_slice(&queue_id.to_be_bytes());
    k
}

fn prefix(group: &str, topic: Option<&str>) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + 40);
    k.extend_from_slice(group.as_bytes());
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

impl OffsetTable {
    pub fn new(meta: Arc<dyn MetaStore>) -> Self {
        OffsetTable { meta }
    }

    pub fn get(&self, group: &str, topic: &str, queue_id: u32) -> Result<Option<u64>, MetaError> {
        match self.meta.get(TREE, &key(group, topic, queue_id))? {
            None => Ok(None),
            Some(v) => decode_u64(&v).map(Some),
        }
    }

    /// Records offsets; durable once `flush` returns.
    pub fn commit(&self, group: &str, entries: &[CommittedOffset]) -> Result<(), MetaError> {
        for e in entries {
            self.meta.put(
                TREE,
                &key(group, &e.topic, e.queue_id),
                &e.offset.to_be_bytes(),
            )?;
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<(), MetaError> {
        self.meta.flush()
    }

    /// Every committed offset of a group, optionally of one topic.
    pub fn list(
        &self,
        group: &str,
        topic: Option<&str>,
    ) -> Result<Vec<CommittedOffset>, MetaError> {
        let mut out = Vec::new();
        for (k, v) in self.meta.scan_prefix(TREE, &prefix(group, topic))? {
            let rest = &k[group.len() + 1..];
            let corrupt = || MetaError::Corrupt {
                tree: TREE.into(),
                reason: format!("bad offset key {:?}", String::from_utf8_lossy(&k)),
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MemMeta;

    #[test]
    fn commit_get_list() {
        let t = OffsetTable::new(Arc::new(MemMeta::default()));
        let e = |topic: &str, q, o| CommittedOffset {
            topic: topic.into(),
            queue_id: q,
            offset: o,
        };
        t.commit("g", &[e("a", 1, 10), e("a", 0, 5), e("ab", 0, 7)])
            .unwrap();
        t.commit("g2", &[e("a", 0, 99)]).unwrap();
        assert_eq!(t.get("g", "a", 1).unwrap(), Some(10));
        assert_eq!(t.get("g", "a", 2).unwrap(), None);
        assert_eq!(
            t.list("g", Some("a")).unwrap(),
            vec![e("a", 0, 5), e("a", 1, 10)]
        );
        assert_eq!(t.list("g", None).unwrap().len(), 3);
    }
}
