//! Topic configurations of this broker, kept in memory and persisted in the metadata store.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use prost::Message as _;
use sluice_proto::names::validate_topic_name;
use sluice_proto::v1::TopicConfig;
use sluice_proto::{perm, ApiError, ErrorCode};

use crate::meta::{MetaError, MetaStore};

const TREE: &str = "topics";
/// Upper bound on queues per topic: consume queues are files, and a typo should not create 10^6.
pub const MAX_QUEUES: u32 = 1024;

pub struct TopicTable {
    meta: Arc<dyn MetaStore>,
    topics: RwLock<BTreeMap<String, TopicConfig>>,
}

impl TopicTable {
    pub fn load(meta: Arc<dyn MetaStore>) -> Result<Self, MetaError> {
        let mut topics = BTreeMap::new();
        for (k, v) in meta.scan_prefix(TREE, b"")? {
            let cfg = TopicConfig::decode(v.as_slice()).map_err(|e| MetaError::Corrupt {
                tree: TREE.into(),
                reason: format!("topic {:?}: {e}", String::from_utf8_lossy(&k)),
            })?;
            topics.insert(cfg.name.clone(), cfg);
        }
        Ok(TopicTable {
            meta,
            topics: RwLock::new(topics),
        })
    }

    pub fn get(&self, name: &str) -> Option<TopicConfig> {
        self.topics.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<TopicConfig> {
        self.topics.read().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.topics.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Creates a topic, or updates its queue counts / permission. Returns true when something changed.
    pub fn upsert(&self, cfg: TopicConfig) -> Result<bool, ApiError> {
        validate(&cfg)?;
        let mut topics = self.topics.write();
        if topics.get(&cfg.name) == Some(&cfg) {
            return Ok(false);
        }
        self.meta
            .put(TREE, cfg.name.as_bytes(), &cfg.encode_to_vec())?;
        self.meta.flush()?;
        topics.insert(cfg.name.clone(), cfg);
        Ok(true)
    }

    pub fn delete(&self, name: &str) -> Result<bool, ApiError> {
        let mut topics = self.topics.write();
        if topics.remove(name).is_none() {
            return Ok(false);
        }
        self.meta.delete(TREE, name.as_bytes())?;
        self.meta.flush()?;
        Ok(true)
    }
}

/// Checks a topic config a client sent. Zero read/write queue counts are allowed only together
/// with the matching permission missing.
pub fn validate(cfg: &TopicConfig) -> Result<(), ApiError> {
    validate_topic_name(&cfg.name)?;
    if cfg.write_queues == 0 && cfg.read_queues == 0 {
        return Err(ApiError::invalid("a topic needs at least one queue"));
    }
    if cfg.write_queues > MAX_QUEUES || cfg.read_queues > MAX_QUEUES {
        return Err(ApiError::invalid(format!(
            "at most {MAX_QUEUES} queues per topic"
        )));
    }
    if cfg.perm & !perm::READ_WRITE != 0 {
        return Err(ApiError::invalid(format!(
            "permission {} is not a combination of READ (4) and WRITE (2)",
            cfg.perm
        )));
    }
    Ok(())
}

/// The topic, or TOPIC_NOT_FOUND.
pub fn require(table: &TopicTable, name: &str) -> Result<TopicConfig, ApiError> {
    validate_topic_name(name)?;
    table.get(name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::TopicNotFound,
            format!("topic {name} does not exist on this broker"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MemMeta;

    fn cfg(name: &str, q: u32) -> TopicConfig {
        TopicConfig {
            name: name.into(),
            read_queues: q,
            write_queues: q,
            perm: perm::READ_WRITE,
        }
    }

    #[test]
    fn upsert_persists_and_reloads() {
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
        let t = TopicTable::load(meta.clone()).unwrap();
        assert!(t.upsert(cfg("a", 4)).unwrap());
        assert!(!t.upsert(cfg("a", 4)).unwrap());
        assert!(t.upsert(cfg("a", 8)).unwrap());
        let t2 = TopicTable::load(meta).unwrap();
        assert_eq!(t2.get("a").unwrap().read_queues, 8);
        assert!(t2.delete("a").unwrap());
        assert!(t2.get("a").is_none());
    }

    #[test]
    fn rejects_bad_configs() {
        let t = TopicTable::load(Arc::new(MemMeta::default())).unwrap();
        assert_eq!(
            t.upsert(cfg("", 4)).unwrap_err().code,
            ErrorCode::InvalidTopicName
        );
        assert_eq!(
            t.upsert(cfg("a", 0)).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            t.upsert(cfg("a", 5000)).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            require(&t, "nope").unwrap_err().code,
            ErrorCode::TopicNotFound
        );
    }
}
