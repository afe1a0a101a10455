//! Consumer-group settings (retry policy): a table of the replicated state. Key: the group
//! name; value: the encoded `GroupConfig`. A group never configured uses the defaults.

use prost::Message as _;
use sluice_proto::v1::GroupConfig;
use sluice_proto::ApiError;

use super::{table_key, Applied, Staged, TREE};
use crate::meta::{MetaError, MetaStore};

pub const TABLE: &str = "groups";

/// RocketMQ's default: 16 retries.
pub const DEFAULT_MAX_RETRIES: u32 = 16;
/// Most retries a group may ask for.
pub const MAX_RETRIES_LIMIT: u32 = 1_000;
/// Most backoff steps.
pub const MAX_BACKOFF_STEPS: usize = 64;
/// RocketMQ's retry delays (its delay levels 3-18).
pub const DEFAULT_BACKOFF_MS: [u64; 16] = [
    10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000, 480_000, 540_000,
    600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
];

/// A group's retry policy with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub backoff_ms: Vec<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: DEFAULT_MAX_RETRIES,
            backoff_ms: DEFAULT_BACKOFF_MS.to_vec(),
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after failed attempt `attempt` (1-based); the last step
    /// repeats.
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let i = (attempt.max(1) as usize - 1).min(self.backoff_ms.len().saturating_sub(1));
        self.backoff_ms.get(i).copied().unwrap_or(10_000)
    }

    pub fn to_config(&self, group: &str) -> GroupConfig {
        GroupConfig {
            group: group.to_string(),
            max_retries: self.max_retries,
            backoff_ms: self.backoff_ms.clone(),
        }
    }
}

/// Checks a config a client sent (the proposer's check; apply skips what fails it).
pub fn validate(cfg: &GroupConfig, max_delay_ms: u64) -> Result<(), ApiError> {
    sluice_proto::names::validate_group_name(&cfg.group)?;
    if cfg.max_retries > MAX_RETRIES_LIMIT {
        return Err(ApiError::invalid(format!(
            "max_retries {} is above the limit of {MAX_RETRIES_LIMIT}",
            cfg.max_retries
        )));
    }
    if cfg.backoff_ms.len() > MAX_BACKOFF_STEPS {
        return Err(ApiError::invalid(format!(
            "a backoff has at most {MAX_BACKOFF_STEPS} steps"
        )));
    }
    if let Some(d) = cfg
        .backoff_ms
        .iter()
        .find(|d| **d == 0 || **d > max_delay_ms)
    {
        return Err(ApiError::invalid(format!(
            "backoff step {d} ms is outside 1..={max_delay_ms} ms (max_delay)"
        )));
    }
    Ok(())
}

/// The stored policy of `group` (defaults when never set).
pub fn policy(meta: &dyn MetaStore, group: &str) -> Result<RetryPolicy, MetaError> {
    let Some(v) = meta.get(TREE, &table_key(TABLE, group.as_bytes()))? else {
        return Ok(RetryPolicy::default());
    };
    let cfg = GroupConfig::decode(v.as_slice()).map_err(|e| MetaError::Corrupt {
        tree: TREE.into(),
        reason: format!("group {group:?}: {e}"),
    })?;
    Ok(RetryPolicy {
        max_retries: cfg.max_retries,
        backoff_ms: if cfg.backoff_ms.is_empty() {
            DEFAULT_BACKOFF_MS.to_vec()
        } else {
            cfg.backoff_ms
        },
    })
}

/// Stores a whole config (the proposer merged the update into the current one).
pub(super) fn apply_delete(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    group: &str,
) -> Result<Applied, MetaError> {
    let key = table_key(TABLE, group.as_bytes());
    if staged.get(meta, &key)?.is_none() {
        return Ok(Applied::Unchanged);
    }
    staged.delete(key);
    Ok(Applied::Changed)
}

pub(super) fn apply_set(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    cfg: &GroupConfig,
) -> Result<Applied, MetaError> {
    if sluice_proto::names::validate_group_name(&cfg.group).is_err()
        || cfg.max_retries > MAX_RETRIES_LIMIT
        || cfg.backoff_ms.len() > MAX_BACKOFF_STEPS
    {
        tracing::error!(group = %cfg.group, "skipping an invalid group config");
        return Ok(Applied::Unchanged);
    }
    let key = table_key(TABLE, cfg.group.as_bytes());
    let value = cfg.encode_to_vec();
    if staged.get(meta, &key)?.as_deref() == Some(value.as_slice()) {
        return Ok(Applied::Unchanged);
    }
    staged.put(key, value);
    Ok(Applied::Changed)
}
