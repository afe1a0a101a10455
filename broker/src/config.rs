//! Broker configuration: a TOML file, overridden by command-line flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::store::{FlushMode, StoreConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// gRPC listen address; port 0 picks a free one.
    pub listen: String,
    /// Address announced to nameservers and clients; defaults to the bound listen address.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    pub nameservers: Vec<String>,
    pub cluster_name: String,
    pub broker_name: String,
    /// Replica id within the broker group (>= 1).
    pub replica_id: u64,
    pub flush: FlushMode,
    pub auto_create_topics: bool,
    pub default_queues: u32,
    /// Nameserver heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Longest a pull is held when there is nothing to read.
    pub max_poll_ms: u64,
    /// A consumer silent for this long leaves its group.
    pub consumer_expiry_ms: u64,
    pub max_message_size: usize,
    /// Largest Send request accepted (all messages of a batch), in bytes.
    pub max_request_size: usize,
    pub segment_size: u64,
    pub flush_interval_ms: u64,
    pub sync_flush_timeout_ms: u64,
    pub retention_hours: f64,
    pub disk_high_ratio: f64,
    pub disk_hard_ratio: f64,
    pub disk_budget_bytes: Option<u64>,
    pub retention_check_interval_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: "127.0.0.1:10911".into(),
            advertise: None,
            data_dir: PathBuf::from("./data/broker"),
            nameservers: vec!["127.0.0.1:9876".into()],
            cluster_name: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            replica_id: 1,
            flush: FlushMode::Async,
            auto_create_topics: false,
            default_queues: 8,
            heartbeat_interval_ms: 30_000,
            max_poll_ms: 15_000,
            consumer_expiry_ms: 30_000,
            max_message_size: 4 << 20,
            max_request_size: 32 << 20,
            segment_size: 1 << 30,
            flush_interval_ms: 500,
            sync_flush_timeout_ms: 5_000,
            retention_hours: 72.0,
            disk_high_ratio: 0.75,
            disk_hard_ratio: 0.90,
            disk_budget_bytes: None,
            retention_check_interval_ms: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl BrokerConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.broker_name.is_empty() || self.cluster_name.is_empty() {
            return bad("broker_name and cluster_name must not be empty");
        }
        if self.replica_id == 0 {
            return bad("replica_id must be >= 1 (0 means 'no master' in routes)");
        }
        if self.default_queues == 0 || self.default_queues > 1024 {
            return bad("default_queues must be within 1..=1024");
        }
        if self.max_message_size == 0 || self.max_request_size < self.max_message_size {
            return bad("max_request_size must be >= max_message_size > 0");
        }
        if !(0.0..=1.0).contains(&self.disk_high_ratio)
            || !(0.0..=1.0).contains(&self.disk_hard_ratio)
        {
            return bad("disk ratios must be within 0..=1");
        }
        if self.heartbeat_interval_ms == 0 || self.consumer_expiry_ms == 0 {
            return bad("heartbeat_interval_ms and consumer_expiry_ms must be > 0");
        }
        Ok(())
    }

    pub fn store_config(&self, store_host: &str) -> StoreConfig {
        let mut c = StoreConfig::new(self.data_dir.join("store"));
        c.segment_size = self.segment_size;
        c.flush = self.flush;
        c.flush_interval = Duration::from_millis(self.flush_interval_ms);
        c.sync_flush_timeout = Duration::from_millis(self.sync_flush_timeout_ms);
        c.max_message_size = self.max_message_size;
        c.retention = Duration::from_secs_f64(self.retention_hours.max(0.0) * 3600.0);
        c.disk_high_ratio = self.disk_high_ratio;
        c.disk_hard_ratio = self.disk_hard_ratio;
        c.disk_budget_bytes = self.disk_budget_bytes;
        c.retention_check_interval = Duration::from_millis(self.retention_check_interval_ms);
        c.store_host = store_host.to_string();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_toml_and_rejects_unknown_keys() {
        let c: BrokerConfig = toml::from_str(
            "listen = \"127.0.0.1:0\"\nflush = \"sync\"\nnameservers = [\"a:1\", \"b:2\"]\nauto_create_topics = true\n",
        )
        .unwrap();
        assert_eq!(c.flush, FlushMode::Sync);
        assert_eq!(c.nameservers.len(), 2);
        assert!(c.auto_create_topics);
        assert_eq!(c.default_queues, 8);
        assert!(toml::from_str::<BrokerConfig>("bogus = 1").is_err());
    }

    #[test]
    fn validation() {
        let c = BrokerConfig {
            replica_id: 0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        assert!(BrokerConfig::default().validate().is_ok());
    }
}
