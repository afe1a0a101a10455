//! Broker configuration: a TOML file, overridden by command-line flags.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::messaging::timer::{parse_duration, parse_levels, TimerSettings};
use crate::replication::{AckPolicy, ReplicaConfig};
use crate::store::{ConfirmMode, FlushMode, StoreConfig};

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
    /// Ordered consumption: how long a queue lock lasts without a renewal (a consumer that
    /// dies holds its queues this long).
    pub orderly_lock_lease_ms: u64,
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
    /// Members of this broker's replica group, replica id -> address (this broker included;
    /// the address is the one clients and peers reach it at). Empty: a standalone broker.
    /// TOML: `peers = { 1 = "10.0.0.1:10911", 2 = "10.0.0.2:10911", 3 = "10.0.0.3:10911" }`.
    #[serde(deserialize_with = "deserialize_peers")]
    pub peers: BTreeMap<u64, String>,
    /// Voting members; empty means every peer that is not a learner.
    pub voters: Vec<u64>,
    /// Non-voting members (they replicate but never vote or lead).
    pub learners: Vec<u64>,
    /// When a replicated send is acknowledged: `quorum` (a majority stored it; with sync flush,
    /// fsynced it) or `leader` (local append only: a failover can lose acknowledged messages).
    pub ack: AckPolicy,
    /// Raft tick length.
    pub raft_tick_ms: u64,
    /// A follower campaigns after a random number of silent ticks in
    /// `[election_ticks, max_election_ticks)`; a leader steps down after `election_ticks`
    /// without hearing from a quorum.
    pub election_ticks: usize,
    pub max_election_ticks: usize,
    /// Enables the `InjectFault` RPC (partition tests). Never turn on in production.
    pub enable_fault_injection: bool,
    /// Replica groups: consumers may be sent to pull from slaves (read hints). Set it the same
    /// on every replica of a group.
    pub slave_read_enable: bool,
    /// The master sends a consumer to a slave when it reads more than this share of physical
    /// memory behind the commit log's end (that data is likely out of the page cache).
    pub read_hint_behind_memory_ratio: f64,
    /// At this many appended bytes per second the group counts as under write pressure: the
    /// master sends readers to slaves that hold the data, and slaves keep them. 0: never.
    pub read_hint_write_pressure_bytes_per_sec: u64,
    /// Serve Send on a framed-TCP data port next to gRPC (docs/protocol.md); its address goes
    /// to the nameservers with the broker's registration.
    pub data_port_enable: bool,
    /// Port of the data port, on the `listen` host; 0 takes any free port.
    pub data_port: u16,
    /// Standalone broker: an idle data-port connection whose client sends one message (batch)
    /// at a time reads its socket without sleeping for this long, in microseconds, before it
    /// waits (docs/protocol.md, "Where connections run"). 0 turns it off.
    pub data_port_busy_poll_us: u64,
    /// Prometheus metrics over HTTP (`GET /metrics`) on this address, e.g. "127.0.0.1:9090";
    /// off when absent.
    pub metrics_listen: Option<String>,
    /// Message trace: whether this broker takes trace events (and creates the trace topic
    /// `SLUICE_TRACE` with `trace_queues` queues when it becomes master). Off, sends to the
    /// trace topic are refused and tracing clients drop their events.
    pub trace_enabled: bool,
    pub trace_queues: u32,
    /// A file holding the cluster secret, when the nameservers require signed registrations
    /// (the same file as theirs).
    pub cluster_secret_file: Option<PathBuf>,
    /// Authentication and authorization (docs/security.md): refuse unsigned requests and
    /// enforce the ACL's policies.
    pub auth_enabled: bool,
    /// The bootstrap admin, a super user: its access key, and a file holding its secret.
    pub auth_admin: Option<String>,
    pub auth_admin_secret_file: Option<PathBuf>,
    /// Users of the ACL who skip its policies.
    pub auth_super_users: Vec<String>,
    /// How far a request's timestamp may be from this broker's clock, units ms s m h d.
    pub auth_window: String,
    /// Refused requests and ACL changes, one JSON line each; by default `audit.log` in the
    /// data directory once authentication or a cluster secret is on.
    pub audit_log: Option<PathBuf>,
    /// TLS on the gRPC port (PEM files, reloaded when they change), and the CA that issued
    /// the certificates of the other nodes: replicas and nameservers are reached over TLS
    /// verified by it, and clients that show a certificate must have one it issued.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    /// Refuse clients (and peers) without a certificate from `tls_ca_file` (mutual TLS).
    pub tls_client_cert_required: bool,
    /// Delay levels for `delay_level` 1..=n (RocketMQ's 18 by default), units ms s m h d.
    pub delay_levels: String,
    /// Latest due time a delayed message may ask for, from now (30 days by default).
    pub max_delay: String,
    /// Most delayed messages waiting at once; sends past it fail with LIMIT_EXCEEDED.
    pub max_pending_timers: u64,
    /// An idempotent producer's id and sequences are forgotten after this long without a send
    /// (7 days by default), units ms s m h d.
    pub producer_expiry: String,
    /// Transactions: first check-back of one left open this long; checks then back off
    /// (doubling) up to the max interval; after max checks it is parked.
    pub transaction_check_after: String,
    pub transaction_check_max_interval: String,
    pub transaction_max_checks: u32,
    /// Most check-backs a master sends a second: a storm of abandoned transactions (each
    /// answer is an end in the log) must not crowd out produce.
    pub transaction_check_rate: u32,
    /// Limits of one transaction, and of open transactions per producer group.
    pub max_transaction_messages: u64,
    pub max_transaction_bytes: u64,
    pub max_open_transactions: u64,
    /// Sends to a transaction older than this are refused (LIMIT_EXCEEDED).
    pub transaction_timeout: String,
    /// Resolved transactions are remembered this long (a retried commit gets its answer).
    pub transaction_keep_resolved: String,
    /// At most this many resolved transactions are remembered (the oldest go first, 10 ms of
    /// resolutions at a time); each costs about 50-100 bytes of memory on every replica.
    pub transaction_max_resolved: u64,
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
            orderly_lock_lease_ms: 30_000,
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
            peers: BTreeMap::new(),
            voters: Vec::new(),
            learners: Vec::new(),
            ack: AckPolicy::Quorum,
            raft_tick_ms: 100,
            // 0.6-1.2 s of silence: with heartbeats every tick that is six missed in a row, and
            // a dead master is replaced in about a second.
            election_ticks: 6,
            max_election_ticks: 12,
            enable_fault_injection: false,
            slave_read_enable: true,
            read_hint_behind_memory_ratio: 0.40,
            read_hint_write_pressure_bytes_per_sec: 128 << 20,
            data_port_enable: true,
            data_port: 0,
            data_port_busy_poll_us: 100,
            metrics_listen: None,
            cluster_secret_file: None,
            auth_enabled: false,
            auth_admin: None,
            auth_admin_secret_file: None,
            auth_super_users: Vec::new(),
            auth_window: "5m".into(),
            audit_log: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            tls_client_cert_required: false,
            trace_enabled: true,
            trace_queues: 4,
            delay_levels: crate::messaging::timer::DEFAULT_LEVELS.into(),
            max_delay: "30d".into(),
            max_pending_timers: 100_000_000,
            producer_expiry: "7d".into(),
            transaction_check_after: "6s".into(),
            transaction_check_max_interval: "60s".into(),
            transaction_max_checks: 15,
            transaction_check_rate: 500,
            max_transaction_messages: 10_000,
            max_transaction_bytes: 4 << 20,
            max_open_transactions: 1_000_000,
            transaction_timeout: "1h".into(),
            transaction_keep_resolved: "1h".into(),
            transaction_max_resolved: 2_000_000,
        }
    }
}

/// Peers as a TOML table keyed by replica id (TOML keys are strings).
fn deserialize_peers<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, String>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            k.trim()
                .parse::<u64>()
                .map(|id| (id, v))
                .map_err(|_| serde::de::Error::custom(format!("peer id {k:?} is not a number")))
        })
        .collect()
}

/// Parses `1=host:port,2=host:port` (the `--peers` flag).
pub fn parse_peers(list: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid(format!("peer {item:?} is not ID=HOST:PORT")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("peer id {id:?} is not a number")))?;
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(ConfigError::Invalid(format!("peer {id} is listed twice")));
        }
    }
    Ok(peers)
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
        if self.trace_queues == 0 || self.trace_queues > 1024 {
            return bad("trace_queues must be within 1..=1024");
        }
        if self.max_message_size == 0 || self.max_request_size < self.max_message_size {
            return bad("max_request_size must be >= max_message_size > 0");
        }
        // A request, or a commit's copies, is one Raft entry: larger than a replication RPC
        // carries, it would never commit, and every write after it would wait behind it.
        if self.max_request_size > MAX_ENTRY_BYTES {
            return bad("max_request_size must be <= 48 MiB (one Raft entry)");
        }
        let tx_entry = self
            .max_transaction_messages
            .saturating_mul(TX_RECORD_OVERHEAD)
            .saturating_add(self.max_transaction_bytes);
        if tx_entry > MAX_ENTRY_BYTES as u64 {
            return bad(
                "max_transaction_bytes + 1 KiB per max_transaction_messages must be <= 48 MiB \
                 (a commit's copies are one Raft entry)",
            );
        }
        if !(0.0..=1.0).contains(&self.disk_high_ratio)
            || !(0.0..=1.0).contains(&self.disk_hard_ratio)
        {
            return bad("disk ratios must be within 0..=1");
        }
        if !(0.0..=1.0).contains(&self.read_hint_behind_memory_ratio) {
            return bad("read_hint_behind_memory_ratio must be within 0..=1");
        }
        if !(300..=crate::state::locks::MAX_LEASE_MS).contains(&self.orderly_lock_lease_ms) {
            return bad("orderly_lock_lease_ms must be 300..=3600000");
        }
        if self.heartbeat_interval_ms == 0 || self.consumer_expiry_ms == 0 {
            return bad("heartbeat_interval_ms and consumer_expiry_ms must be > 0");
        }
        self.timer_settings()?;
        crate::access::settings::from_config(self).map_err(ConfigError::Invalid)?;
        if let Some(r) = self.replica_config()? {
            r.validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// Delayed-message settings, checked.
    pub fn timer_settings(&self) -> Result<TimerSettings, ConfigError> {
        let invalid = |what: &str, e: String| ConfigError::Invalid(format!("{what}: {e}"));
        let levels = parse_levels(&self.delay_levels).map_err(|e| invalid("delay_levels", e))?;
        if levels.is_empty() {
            return Err(invalid("delay_levels", "needs at least one level".into()));
        }
        let max_delay = parse_duration(&self.max_delay).map_err(|e| invalid("max_delay", e))?;
        if let Some(l) = levels.iter().find(|l| **l > max_delay) {
            return Err(invalid(
                "delay_levels",
                format!("level {l:?} is longer than max_delay {}", self.max_delay),
            ));
        }
        Ok(TimerSettings {
            levels,
            max_delay,
            max_pending: self.max_pending_timers,
        })
    }

    /// How long an idle idempotent producer is remembered, checked.
    pub fn producer_expiry(&self) -> Result<std::time::Duration, ConfigError> {
        let d = parse_duration(&self.producer_expiry)
            .map_err(|e| ConfigError::Invalid(format!("producer_expiry: {e}")))?;
        if d < std::time::Duration::from_secs(1) {
            return Err(ConfigError::Invalid("producer_expiry: at least 1s".into()));
        }
        Ok(d)
    }

    /// Transaction settings, checked.
    pub fn transaction_settings(&self) -> Result<crate::messaging::txn::TxSettings, ConfigError> {
        let d = |what: &str, v: &str| {
            parse_duration(v).map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))
        };
        let s = crate::messaging::txn::TxSettings {
            check_after: d("transaction_check_after", &self.transaction_check_after)?,
            max_check_interval: d(
                "transaction_check_max_interval",
                &self.transaction_check_max_interval,
            )?,
            max_checks: self.transaction_max_checks,
            check_rate: self.transaction_check_rate,
            max_messages: self.max_transaction_messages,
            max_bytes: self.max_transaction_bytes,
            max_open: self.max_open_transactions,
            timeout: d("transaction_timeout", &self.transaction_timeout)?,
            keep_resolved: d("transaction_keep_resolved", &self.transaction_keep_resolved)?,
            max_resolved: self.transaction_max_resolved,
        };
        if s.check_after.is_zero()
            || s.max_checks == 0
            || s.check_rate == 0
            || s.max_messages == 0
            || s.max_bytes == 0
        {
            return Err(ConfigError::Invalid(
                "transaction_check_after, transaction_max_checks, transaction_check_rate, max_transaction_messages and max_transaction_bytes must be above zero".into(),
            ));
        }
        Ok(s)
    }

    /// True when this broker is a member of a replica group.
    pub fn is_replicated(&self) -> bool {
        !self.peers.is_empty()
    }

    /// The Raft settings of a replicated broker (`None` when standalone), checked against the
    /// peers table.
    pub fn replica_config(&self) -> Result<Option<ReplicaConfig>, ConfigError> {
        if self.peers.is_empty() {
            if !self.voters.is_empty() || !self.learners.is_empty() {
                return Err(ConfigError::Invalid(
                    "voters/learners are set but peers is empty".into(),
                ));
            }
            return Ok(None);
        }
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (id, addr) in &self.peers {
            if *id == 0 {
                return bad("peer ids must be >= 1".into());
            }
            if !valid_address(addr) {
                return bad(format!(
                    "peer {id} has address {addr:?}, expected HOST:PORT"
                ));
            }
        }
        if !self.peers.contains_key(&self.replica_id) {
            return bad(format!(
                "replica_id {} is not in peers (ids {:?})",
                self.replica_id,
                self.peers.keys().collect::<Vec<_>>()
            ));
        }
        let learners: BTreeSet<u64> = self.learners.iter().copied().collect();
        let voters: Vec<u64> = if self.voters.is_empty() {
            self.peers
                .keys()
                .copied()
                .filter(|id| !learners.contains(id))
                .collect()
        } else {
            self.voters.clone()
        };
        for id in voters.iter().chain(self.learners.iter()) {
            if !self.peers.contains_key(id) {
                return bad(format!("member {id} has no address in peers"));
            }
        }
        if let Some(id) = self
            .peers
            .keys()
            .find(|id| !voters.contains(id) && !learners.contains(id))
        {
            return bad(format!("peer {id} is neither a voter nor a learner"));
        }
        if self.raft_tick_ms == 0 {
            return bad("raft_tick_ms must be > 0".into());
        }
        let mut r = ReplicaConfig::new(self.replica_id, voters, self.learners.clone());
        r.tick_interval = Duration::from_millis(self.raft_tick_ms);
        r.election_ticks = self.election_ticks;
        r.max_election_ticks = self.max_election_ticks;
        r.ack_policy = self.ack;
        Ok(Some(r))
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
        c.hold_until_transaction_floor = true;
        if self.is_replicated() {
            // The commit log is the Raft log; the confirmed position is Raft's commit index,
            // moved by the replica's applier.
            c.confirm = ConfirmMode::External;
            c.raft = true;
        }
        c
    }
}

fn valid_address(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// Largest Raft entry a request or a commit may make: a replication RPC
/// (`replication::transport::MAX_RPC_BYTES`, 64 MiB) carries one beside a batch of others.
const MAX_ENTRY_BYTES: usize = 48 << 20;
/// A transaction's message's bytes in its commit besides what `max_transaction_bytes` counts:
/// record header, message id (<= 128 bytes), born host (<= 255), the copy's properties.
const TX_RECORD_OVERHEAD: u64 = 1024;

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
