//! Prometheus metrics of a broker (`metrics_listen`): counters and histograms the messaging
//! layer updates as it works, and gauges read from the broker's status when scraped. Names
//! follow Prometheus conventions (`sluice_` prefix, `_total`, `_seconds`, `_bytes`); labels are
//! bounded sets (topics, groups, queues, replicas), never message or client ids.

pub mod conn;
pub mod http;
pub mod ops;

pub use ops::OpsMetrics;

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use sluice_proto::v1::{BrokerStatus, Role};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupTopicLabels {
    pub group: String,
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub group: String,
    pub topic: String,
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SentBackLabels {
    pub group: String,
    /// retry or dead_letter.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric of one broker.
pub struct Metrics {
    registry: Registry,
    pub messages_in: Family<TopicLabels, Counter>,
    pub bytes_in: Family<TopicLabels, Counter>,
    pub send_errors: Family<CodeLabels, Counter>,
    pub messages_out: Family<GroupTopicLabels, Counter>,
    pub bytes_out: Family<GroupTopicLabels, Counter>,
    pub send_seconds: Histogram,
    pub pull_seconds: Histogram,
    pub long_polls_held: Gauge,
    pub sent_back: Family<SentBackLabels, Counter>,
    pub leader_changes: Counter,
    // Read from the status at each scrape.
    commit_log_min: Gauge,
    commit_log_max: Gauge,
    confirmed_offset: Gauge,
    dispatch_lag: Gauge,
    disk_ratio: FloatGauge,
    is_master: Gauge,
    raft_term: Gauge,
    raft_last_index: Gauge,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
    replica_match_lag: Family<ReplicaLabels, Gauge>,
    data_port_connections: Gauge,
    timers_pending: Gauge,
    rss: Gauge,
    topics: Gauge,
    consumer_lag: Family<QueueLabels, Gauge>,
    transactions_open: Gauge,
    transactions_parked: Gauge,
    pub ops: OpsMetrics,
}

/// Counts each leader this replica learns of (a term with a known leader), and times the
/// stretches without one that end in an election, until the replica stops.
pub async fn count_leader_changes(
    mut master: tokio::sync::watch::Receiver<crate::replication::MasterState>,
    metrics: std::sync::Arc<Metrics>,
) {
    let leader = |m: &crate::replication::MasterState| m.leader_id.map(|l| (m.term, l));
    let first = *master.borrow_and_update();
    let mut last = leader(&first);
    // Since when this replica has known no leader (from its start, or since it lost one),
    // and the term of the last leader it knew (at start: the term it restarted with). Only a
    // leader of a later term ends the stretch with an election: hearing the same leader again
    // after a restart is not one.
    let mut leaderless = last.is_none().then(std::time::Instant::now);
    let mut leader_term = first.term;
    while master.changed().await.is_ok() {
        let m = *master.borrow_and_update();
        let now = leader(&m);
        match now {
            None => {
                leaderless.get_or_insert_with(std::time::Instant::now);
            }
            Some(_) if now != last => {
                last = now;
                metrics.leader_changes.inc();
                if let Some(since) = leaderless.take().filter(|_| m.term > leader_term) {
                    metrics
                        .ops
                        .election_seconds
                        .observe(since.elapsed().as_secs_f64());
                }
                leader_term = m.term;
            }
            Some(_) => leaderless = None,
        }
    }
}

/// Holds a gauge one higher while it lives.
pub struct Held<'a>(&'a Gauge);

impl<'a> Held<'a> {
    pub fn new(g: &'a Gauge) -> Self {
        g.inc();
        Held(g)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Latency buckets from 50 us to about 1.6 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("sluice");
        let m = Metrics {
            messages_in: Family::default(),
            bytes_in: Family::default(),
            send_errors: Family::default(),
            messages_out: Family::default(),
            bytes_out: Family::default(),
            send_seconds: latency(),
            pull_seconds: latency(),
            long_polls_held: Gauge::default(),
            sent_back: Family::default(),
            leader_changes: Counter::default(),
            commit_log_min: Gauge::default(),
            commit_log_max: Gauge::default(),
            confirmed_offset: Gauge::default(),
            dispatch_lag: Gauge::default(),
            disk_ratio: FloatGauge::default(),
            is_master: Gauge::default(),
            raft_term: Gauge::default(),
            raft_last_index: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            replica_match_lag: Family::default(),
            data_port_connections: Gauge::default(),
            timers_pending: Gauge::default(),
            rss: Gauge::default(),
            topics: Gauge::default(),
            consumer_lag: Family::default(),
            transactions_open: Gauge::default(),
            transactions_parked: Gauge::default(),
            ops: OpsMetrics::new(),
            registry: Registry::default(),
        };
        m.ops.register(&mut r);
        r.register(
            "stored_messages",
            "Messages stored by sends, by topic",
            m.messages_in.clone(),
        );
        r.register_with_unit(
            "stored",
            "Message bytes stored by sends, by topic",
            Unit::Bytes,
            m.bytes_in.clone(),
        );
        r.register(
            "send_errors",
            "Sends refused, by error code",
            m.send_errors.clone(),
        );
        r.register(
            "delivered_messages",
            "Messages served to pulls, by group and topic",
            m.messages_out.clone(),
        );
        r.register_with_unit(
            "delivered",
            "Message bytes served to pulls, by group and topic",
            Unit::Bytes,
            m.bytes_out.clone(),
        );
        r.register_with_unit(
            "send",
            "Time to store a send (to its ack)",
            Unit::Seconds,
            m.send_seconds.clone(),
        );
        r.register_with_unit(
            "pull",
            "Time to answer a pull (long polls included)",
            Unit::Seconds,
            m.pull_seconds.clone(),
        );
        r.register(
            "long_polls_held",
            "Pulls waiting for messages now",
            m.long_polls_held.clone(),
        );
        r.register_with_unit(
            "commit_log_min_offset",
            "Oldest commit-log byte held",
            Unit::Bytes,
            m.commit_log_min.clone(),
        );
        r.register_with_unit(
            "commit_log_max_offset",
            "Commit-log end",
            Unit::Bytes,
            m.commit_log_max.clone(),
        );
        r.register_with_unit(
            "commit_log_confirmed_offset",
            "Commit-log end visible to consumers",
            Unit::Bytes,
            m.confirmed_offset.clone(),
        );
        r.register_with_unit(
            "dispatch_lag",
            "Commit-log bytes not yet in consume queues",
            Unit::Bytes,
            m.dispatch_lag.clone(),
        );
        r.register_with_unit(
            "disk_used",
            "Use of the data directory's file system",
            Unit::Other("ratio".into()),
            m.disk_ratio.clone(),
        );
        r.register(
            "master",
            "1 when this replica is its group's master (or standalone)",
            m.is_master.clone(),
        );
        r.register("raft_term", "Raft term", m.raft_term.clone());
        r.register(
            "raft_last_index",
            "Last Raft log index held",
            m.raft_last_index.clone(),
        );
        r.register(
            "raft_commit_index",
            "Raft commit index",
            m.raft_commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Raft index applied to the state",
            m.raft_applied_index.clone(),
        );
        r.register(
            "raft_replica_lag_entries",
            "On the master: entries each replica is behind",
            m.replica_match_lag.clone(),
        );
        r.register(
            "data_port_connections",
            "Data-port connections open",
            m.data_port_connections.clone(),
        );
        r.register(
            "timers_pending",
            "Delayed messages waiting",
            m.timers_pending.clone(),
        );
        r.register_with_unit(
            "resident_memory",
            "Resident memory of the broker process",
            Unit::Bytes,
            m.rss.clone(),
        );
        r.register("topics", "Topics on this broker", m.topics.clone());
        r.register(
            "consumer_lag_messages",
            "Messages a group has not committed past, by queue",
            m.consumer_lag.clone(),
        );
        r.register(
            "sent_back",
            "Messages consumers failed, by group and where they went (retry, dead_letter)",
            m.sent_back.clone(),
        );
        r.register(
            "raft_leader_changes",
            "New masters this replica has seen elected",
            m.leader_changes.clone(),
        );
        r.register(
            "transactions_open",
            "Transactions neither committed nor rolled back, not parked",
            m.transactions_open.clone(),
        );
        r.register(
            "transactions_parked",
            "Transactions parked after their last check, waiting for an operator",
            m.transactions_parked.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Counts a stored send.
    pub fn sent(&self, topic: &str, messages: u64, bytes: u64) {
        let l = TopicLabels {
            topic: topic.to_string(),
        };
        self.messages_in.get_or_create(&l).inc_by(messages);
        self.bytes_in.get_or_create(&l).inc_by(bytes);
    }

    /// Counts messages served to a pull.
    pub fn served(&self, group: &str, topic: &str, messages: u64, bytes: u64) {
        if messages == 0 {
            return;
        }
        let l = GroupTopicLabels {
            group: group.to_string(),
            topic: topic.to_string(),
        };
        self.messages_out.get_or_create(&l).inc_by(messages);
        self.bytes_out.get_or_create(&l).inc_by(bytes);
    }

    /// Sets the scrape-time gauges from the broker's status and the groups' lag
    /// ((group, topic, queue, lag) rows; groups gone since the last scrape disappear).
    pub fn observe(&self, s: &BrokerStatus, lag: &[(String, String, u32, u64)]) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.commit_log_min.set(g(s.min_offset));
        self.commit_log_max.set(g(s.max_offset));
        self.confirmed_offset.set(g(s.confirmed_offset));
        self.dispatch_lag
            .set(g(s.confirmed_offset.saturating_sub(s.dispatched_offset)));
        self.disk_ratio.set(s.disk_usage_ratio);
        self.is_master.set(i64::from(s.role == Role::Master as i32));
        self.raft_term.set(g(s.term));
        self.raft_last_index.set(g(s.last_index));
        self.raft_commit_index.set(g(s.commit_index));
        self.raft_applied_index.set(g(s.applied_index));
        self.replica_match_lag.clear();
        for r in &s.replicas {
            let l = ReplicaLabels {
                replica: r.replica_id.to_string(),
            };
            self.replica_match_lag.get_or_create(&l).set(g(r.lag));
        }
        self.data_port_connections.set(g(s.data_port_connections));
        self.timers_pending.set(g(s.timers_pending));
        self.rss.set(g(s.rss_bytes));
        self.topics.set(i64::from(s.topic_count));
        self.consumer_lag.clear();
        for (group, topic, queue, n) in lag {
            let l = QueueLabels {
                group: group.clone(),
                topic: topic.clone(),
                queue: queue.to_string(),
            };
            self.consumer_lag.get_or_create(&l).set(g(*n));
        }
    }

    /// Sets the transaction gauges (read at scrape).
    pub fn observe_transactions(&self, open: u64, parked: u64) {
        self.transactions_open
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        self.transactions_parked
            .set(i64::try_from(parked).unwrap_or(i64::MAX));
    }

    /// Counts a message sent back by a consumer.
    pub fn count_sent_back(&self, group: &str, dead_letter: bool) {
        let l = SentBackLabels {
            group: group.to_string(),
            outcome: if dead_letter { "dead_letter" } else { "retry" }.to_string(),
        };
        self.sent_back.get_or_create(&l).inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests;
