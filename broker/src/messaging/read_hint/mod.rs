//! Read hints: every pull answer of a replica group tells the consumer which replica to pull
//! that queue from next (RocketMQ's "suggest pulling from a slave"). The master sends readers
//! that are far behind, or all readers while it is under write pressure, to a healthy slave
//! that already holds the data; a slave sends them back when it lacks the data, when it is cut
//! off, or when they caught up and the master is not loaded.
//!
//! `decide` is the rule as a pure function; `monitor` measures write load and slave progress in
//! the background; `stats` counts what each replica served.

pub mod decide;
mod monitor;
pub mod stats;

use std::sync::Arc;

use sluice_proto::v1::{ReadHint, ReadStats};
use tokio::sync::watch;

use crate::config::BrokerConfig;
use crate::replication::ReplicaGroup;
use crate::store::{LogPlaced, MessageStore};
pub use decide::Hint;
use decide::{decide, spread_key, HintInput, Position};
use monitor::{HintView, Monitor};
use stats::ReadCounters;

/// Used when physical memory cannot be read (not Linux, /proc not mounted).
const FALLBACK_MEMORY: u64 = 8 << 30;

/// The thresholds, from the broker config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadHintSettings {
    pub slave_read_enable: bool,
    /// A reader more than this many bytes behind the log's end is sent to a slave.
    pub behind_bytes: u64,
    /// The group counts as loaded at this many appended bytes per second (0: never).
    pub write_pressure_bytes_per_sec: u64,
}

impl ReadHintSettings {
    pub fn from_config(c: &BrokerConfig) -> Self {
        let memory = physical_memory().unwrap_or_else(|| {
            tracing::warn!(
                fallback = FALLBACK_MEMORY,
                "cannot read physical memory from /proc/meminfo; read hints assume the fallback"
            );
            FALLBACK_MEMORY
        });
        ReadHintSettings {
            slave_read_enable: c.slave_read_enable,
            behind_bytes: (memory as f64 * c.read_hint_behind_memory_ratio.clamp(0.0, 1.0)) as u64,
            write_pressure_bytes_per_sec: c.read_hint_write_pressure_bytes_per_sec,
        }
    }
}

/// Total physical memory in bytes, from `/proc/meminfo`.
pub fn physical_memory() -> Option<u64> {
    parse_mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | Some("KB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// The pull handler's side: counters, settings and the monitor's latest view.
pub struct ReadHints {
    settings: ReadHintSettings,
    counters: Arc<ReadCounters>,
    view: watch::Receiver<HintView>,
}

/// What a pull found, for the hint.
pub struct PullFacts<'a, R> {
    pub group: &'a str,
    pub topic: &'a str,
    pub queue_id: u32,
    pub records: &'a [R],
    /// The readable end of this replica's commit log.
    pub log_end: u64,
    pub lacks_offset: bool,
    /// A filtered read that kept nothing: where in the log it got to (the reader is that far
    /// behind, not caught up).
    pub scanned_to: Option<u64>,
}

impl ReadHints {
    /// Starts the monitor task (until `stop` turns true). Must run on the tokio runtime.
    pub fn start(
        settings: ReadHintSettings,
        store: MessageStore,
        group: Option<Arc<ReplicaGroup>>,
        stop: watch::Receiver<bool>,
    ) -> ReadHints {
        let counters = Arc::new(ReadCounters::default());
        let (tx, view) = watch::channel(HintView::default());
        // A standalone broker gives no hints, but still counts and reports what it serves.
        let monitor = Monitor {
            settings,
            store,
            group,
            counters: counters.clone(),
            tx,
        };
        tokio::spawn(monitor.run(stop));
        tracing::info!(
            slave_read_enable = settings.slave_read_enable,
            behind_bytes = settings.behind_bytes,
            write_pressure_bytes_per_sec = settings.write_pressure_bytes_per_sec,
            "read hints configured"
        );
        ReadHints {
            settings,
            counters,
            view,
        }
    }

    /// Counts a pull answer: its messages and its hint (`me` is this replica's id).
    pub fn served<R: LogPlaced>(&self, records: &[R], hint: Option<Hint>, me: u64) {
        let bytes = records.iter().map(|r| u64::from(r.store_size())).sum();
        self.counters.served(records.len(), bytes);
        if let Some(h) = hint {
            self.counters.hinted(h.reason, h.redirects(me));
        }
    }

    /// The hint for a pull answered by a member of `group`.
    pub fn hint<R: LogPlaced>(&self, group: &ReplicaGroup, f: &PullFacts<'_, R>) -> Hint {
        let master = group.master_state();
        let me = group.id();
        let position = if master.is_master {
            Position::Master
        } else {
            Position::Slave {
                leader: master.leader_id.filter(|&l| l != me),
            }
        };
        let view = self.view.borrow();
        let behind = f.records.first().map_or_else(
            || f.scanned_to.map_or(0, |at| f.log_end.saturating_sub(at)),
            |r| f.log_end.saturating_sub(r.commit_log_offset()),
        );
        let needed = f
            .records
            .last()
            .map(|r| r.commit_log_offset() + u64::from(r.store_size()))
            .or(f.scanned_to);
        decide(&HintInput {
            me,
            position,
            slave_read_enable: self.settings.slave_read_enable,
            behind_threshold: self.settings.behind_bytes,
            loaded: view.loaded,
            behind,
            needed,
            lacks_offset: f.lacks_offset,
            slaves: &view.slaves,
            spread_key: spread_key(f.group, f.topic, f.queue_id),
        })
    }

    pub fn stats(&self) -> ReadStats {
        let view = self.view.borrow();
        ReadStats {
            recent_messages_per_sec: view.recent_messages_per_sec,
            slave_read_enable: self.settings.slave_read_enable,
            write_bytes_per_sec: view.write_bytes_per_sec,
            write_pressure: view.loaded,
            ..self.counters.snapshot()
        }
    }
}

impl From<Hint> for ReadHint {
    fn from(h: Hint) -> Self {
        ReadHint {
            replica_id: h.replica_id,
            reason: h.reason as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total() {
        let m = "MemTotal:       24684096 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total(m), Some(24684096 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 5 MB\n"), None);
        // This machine has /proc.
        if cfg!(target_os = "linux") {
            assert!(physical_memory().is_some_and(|m| m > 0));
        }
    }

    #[test]
    fn settings_from_config() {
        let c = BrokerConfig {
            read_hint_behind_memory_ratio: 0.0,
            ..Default::default()
        };
        let s = ReadHintSettings::from_config(&c);
        assert_eq!(s.behind_bytes, 0);
        assert!(s.slave_read_enable);
        let s = ReadHintSettings::from_config(&BrokerConfig::default());
        assert!(s.behind_bytes > 0);
    }
}
