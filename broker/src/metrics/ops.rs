//! Metrics of the broker's machinery rather than its traffic: fsyncs and segments of the
//! commit log, elections, timer delivery, filtered pulls, gRPC connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::{FloatGauge, GroupTopicLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RefusalLabels {
    /// unauthenticated or permission_denied.
    pub kind: String,
    /// A short fixed word (missing, bad_signature, stale, replayed, denied, ...).
    pub reason: String,
}

pub struct OpsMetrics {
    /// How late delayed messages (and retries) were delivered, from their due time.
    pub timer_lateness_seconds: Histogram,
    /// Time this replica went without a known leader before one was elected.
    pub election_seconds: Histogram,
    /// Filtered pulls: queue entries looked at, and those that matched.
    pub filter_scanned: Family<GroupTopicLabels, Counter>,
    pub filter_matched: Family<GroupTopicLabels, Counter>,
    /// gRPC connections open now (clients, other replicas, admin tools).
    pub grpc_connections: Gauge,
    /// Requests refused by authentication or authorization.
    pub auth_refusals: Family<RefusalLabels, Counter>,
    flushes: Counter,
    flush_seconds: Counter<f64, AtomicU64>,
    flush_max_seconds: FloatGauge,
    segments: Gauge,
    /// The store's totals at the previous scrape (its counters are read as deltas).
    seen_flushes: AtomicU64,
    seen_flush_nanos: AtomicU64,
}

impl OpsMetrics {
    pub fn new() -> OpsMetrics {
        OpsMetrics {
            // 1 ms to about 65 s.
            timer_lateness_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 50 ms to about 100 s.
            election_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            filter_scanned: Family::default(),
            filter_matched: Family::default(),
            grpc_connections: Gauge::default(),
            auth_refusals: Family::default(),
            flushes: Counter::default(),
            flush_seconds: Counter::default(),
            flush_max_seconds: FloatGauge::default(),
            segments: Gauge::default(),
            seen_flushes: AtomicU64::new(0),
            seen_flush_nanos: AtomicU64::new(0),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "timer_lateness",
            "Delay between a delayed message's due time and its delivery",
            Unit::Seconds,
            self.timer_lateness_seconds.clone(),
        );
        r.register_with_unit(
            "raft_election",
            "Time without a known leader before a new one was elected, as this replica saw it",
            Unit::Seconds,
            self.election_seconds.clone(),
        );
        r.register(
            "filter_scanned_messages",
            "Queue entries filtered pulls looked at, by group and topic",
            self.filter_scanned.clone(),
        );
        r.register(
            "filter_matched_messages",
            "Queue entries filtered pulls delivered, by group and topic",
            self.filter_matched.clone(),
        );
        r.register(
            "grpc_connections",
            "gRPC connections open",
            self.grpc_connections.clone(),
        );
        r.register(
            "auth_refusals",
            "Requests refused by authentication or authorization, by kind and reason",
            self.auth_refusals.clone(),
        );
        r.register("flushes", "Fsyncs of the commit log", self.flushes.clone());
        r.register_with_unit(
            "flush",
            "Time spent in fsyncs of the commit log",
            Unit::Seconds,
            self.flush_seconds.clone(),
        );
        r.register_with_unit(
            "flush_max",
            "Longest fsync of the commit log since the previous scrape",
            Unit::Seconds,
            self.flush_max_seconds.clone(),
        );
        r.register(
            "commit_log_segments",
            "Commit-log segment files",
            self.segments.clone(),
        );
    }

    /// Counts a filtered pull that looked at `scanned` entries and delivered `matched`.
    pub fn filtered(&self, group: &str, topic: &str, scanned: u64, matched: u64) {
        let l = GroupTopicLabels {
            group: group.to_string(),
            topic: topic.to_string(),
        };
        self.filter_scanned.get_or_create(&l).inc_by(scanned);
        self.filter_matched.get_or_create(&l).inc_by(matched);
    }

    /// Sets the store's figures at a scrape: its fsync totals since start, the longest fsync
    /// since the previous scrape, its segment count.
    pub fn observe_store(&self, flushes: u64, total: Duration, max: Duration, segments: usize) {
        let nanos = u64::try_from(total.as_nanos()).unwrap_or(u64::MAX);
        let new_flushes =
            flushes.saturating_sub(self.seen_flushes.swap(flushes, Ordering::Relaxed));
        let new_nanos = nanos.saturating_sub(self.seen_flush_nanos.swap(nanos, Ordering::Relaxed));
        self.flushes.inc_by(new_flushes);
        self.flush_seconds.inc_by(new_nanos as f64 / 1e9);
        self.flush_max_seconds.set(max.as_secs_f64());
        self.segments
            .set(i64::try_from(segments).unwrap_or(i64::MAX));
    }
}

impl Default for OpsMetrics {
    fn default() -> Self {
        Self::new()
    }
}
