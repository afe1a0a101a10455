//! Topic configurations of this broker: a table of the replicated state (key: the name, value:
//! the encoded `TopicConfig`) with an in-memory view the request handlers read.

use std::collections::BTreeMap;

use parking_lot::RwLock;
use prost::Message as _;
use sluice_proto::names::validate_topic_name;
use sluice_proto::v1::TopicConfig;
use sluice_proto::{perm, ApiError, ErrorCode};

use super::{table_key, Applied, Staged, TREE};
use crate::meta::{MetaError, MetaStore};

pub const TABLE: &str = "topics";
/// Upper bound on queues per topic: consume queues are files, and a typo should not create 10^6.
pub const MAX_QUEUES: u32 = 1024;

/// The in-memory view of the table; only [`super::StateMachine`] refreshes it.
pub struct TopicTable {
    topics: RwLock<BTreeMap<String, TopicConfig>>,
}

fn decode(k: &[u8], v: &[u8]) -> Result<TopicConfig, MetaError> {
    TopicConfig::decode(v).map_err(|e| MetaError::Corrupt {
        tree: TREE.into(),
        reason: format!("topic {:?}: {e}", String::from_utf8_lossy(k)),
    })
}

impl TopicTable {
    pub(crate) fn load(meta: &dyn MetaStore) -> Result<Self, MetaError> {
        let t = TopicTable {
            topics: RwLock::new(BTreeMap::new()),
        };
        t.reload(meta)?;
        Ok(t)
    }

    pub(crate) fn reload(&self, meta: &dyn MetaStore) -> Result<(), MetaError> {
        let mut topics = BTreeMap::new();
        for (k, v) in meta.scan_prefix(TREE, &table_key(TABLE, b""))? {
            let cfg = decode(&k, &v)?;
            topics.insert(cfg.name.clone(), cfg);
        }
        *self.topics.write() = topics;
        Ok(())
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
}

pub(super) fn apply_upsert(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    cfg: &TopicConfig,
) -> Result<Applied, MetaError> {
    if let Err(e) = validate(cfg) {
        tracing::error!(topic = %cfg.name, error = %e, "skipping an invalid topic config");
        return Ok(Applied::Unchanged);
    }
    let key = table_key(TABLE, cfg.name.as_bytes());
    let value = cfg.encode_to_vec();
    if staged.get(meta, &key)?.as_deref() == Some(value.as_slice()) {
        return Ok(Applied::Unchanged);
    }
    tracing::info!(topic = %cfg.name, queues = cfg.write_queues, "topic config applied");
    staged.put(key, value);
    Ok(Applied::Changed)
}

pub(super) fn apply_delete(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    name: &str,
) -> Result<Applied, MetaError> {
    let key = table_key(TABLE, name.as_bytes());
    if staged.get(meta, &key)?.is_none() {
        return Ok(Applied::Unchanged);
    }
    tracing::info!(topic = %name, "topic deletion applied");
    staged.delete(key);
    Ok(Applied::Changed)
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
