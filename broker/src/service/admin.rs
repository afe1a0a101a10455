//! Topic administration, broker status and message query.

use std::sync::atomic::Ordering;

use sluice_proto::names::validate_topic_name;
use sluice_proto::v1 as proto;
use sluice_proto::v1::*;
use sluice_proto::{perm, props, ApiError, ErrorCode};

use super::convert::{now_ms, to_wire};
use super::BrokerService;
use crate::messaging::query::{Found, Lookup};
use crate::replication::{PeerState, ReplicaGroup, Role as RaftRole};
use crate::state;
use crate::store::timer::TimerState;

impl BrokerService {
    pub(super) async fn do_create_topic(
        &self,
        req: CreateTopicRequest,
    ) -> Result<CreateTopicResponse, ApiError> {
        let mut cfg = req
            .config
            .ok_or_else(|| ApiError::invalid("config is required"))?;
        // proto3 zero values mean "not given": read/write on, read queues = write queues.
        if cfg.perm == 0 {
            cfg.perm = perm::READ_WRITE;
        }
        if cfg.read_queues == 0 {
            cfg.read_queues = cfg.write_queues;
        }
        if cfg.write_queues == 0 {
            cfg.write_queues = cfg.read_queues;
        }
        if props::is_internal_topic(&cfg.name) {
            return Err(ApiError::new(
                ErrorCode::NoPermission,
                format!("topic {} is the broker's own", cfg.name),
            ));
        }
        let created = self.upsert_topic(cfg.clone()).await?;
        if created {
            tracing::info!(topic = %cfg.name, queues = cfg.write_queues, perm = cfg.perm, "topic created or updated");
            self.reregister.notify_one();
        }
        Ok(CreateTopicResponse { created })
    }

    pub(super) async fn do_delete_topic(
        &self,
        req: DeleteTopicRequest,
    ) -> Result<DeleteTopicResponse, ApiError> {
        validate_topic_name(&req.topic)?;
        self.write.require_writer()?;
        let deleted = self.topics.get(&req.topic).is_some()
            && self
                .write
                .apply(state::delete_topic_op(&req.topic), now_ms())
                .await?
                == state::Applied::Changed;
        if !deleted {
            return Err(ApiError::new(
                ErrorCode::TopicNotFound,
                format!("topic {} does not exist", req.topic),
            ));
        }
        tracing::info!(topic = %req.topic, "topic deleted");
        self.reregister.notify_one();
        Ok(DeleteTopicResponse {})
    }

    /// Creates or updates a topic (through the log on a replica group); true when it changed.
    pub(super) async fn upsert_topic(&self, cfg: TopicConfig) -> Result<bool, ApiError> {
        crate::messaging::produce::upsert_topic(&self.write, cfg, now_ms()).await
    }

    pub(crate) async fn status(&self) -> BrokerStatus {
        let (min_offset, max_offset) = self.store.commit_log_range();
        let mut s = BrokerStatus {
            cluster_name: self.identity.cluster_name.clone(),
            broker_name: self.identity.broker_name.clone(),
            replica_id: self.identity.replica_id,
            role: Role::Master as i32,
            address: self.identity.address.clone(),
            min_offset,
            max_offset,
            confirmed_offset: self.store.confirmed_offset(),
            dispatched_offset: self.store.dispatched_offset(),
            data_address: self.identity.data_address.clone(),
            data_port_connections: self.data_port.connections.load(Ordering::Relaxed),
            data_port_sends: self.data_port.sends.load(Ordering::Relaxed),
            data_port_moved: self.data_port.moved.load(Ordering::Relaxed),
            term: 0,
            topic_count: self.topics.len() as u32,
            disk_usage_ratio: self.store.disk_usage_ratio(),
            flush_mode: self.limits.flush_mode.clone(),
            read_stats: Some(self.consuming.read_hints().stats()),
            timers_pending: self.store.timers_pending(),
            timer_floor: match self.store.timer_floor() {
                u64::MAX => 0,
                f => f,
            },
            rss_bytes: rss_bytes(),
            ..Default::default()
        };
        if let Some(group) = self.write.group() {
            replica_status(group, &mut s).await;
        }
        s
    }

    pub(super) fn do_get_message(
        &self,
        req: GetMessageRequest,
    ) -> Result<GetMessageResponse, ApiError> {
        Ok(GetMessageResponse {
            message: Some(with_timer(self.querying.by_id(&req.message_id)?)),
        })
    }

    pub(super) fn do_query_messages(
        &self,
        req: QueryMessagesRequest,
    ) -> Result<QueryMessagesResponse, ApiError> {
        let has_range = req.begin_timestamp_ms != 0 || req.end_timestamp_ms != 0;
        let lookup = Lookup {
            topic: &req.topic,
            key: (!req.key.is_empty()).then_some(req.key.as_str()),
            range: has_range.then_some((
                req.begin_timestamp_ms,
                (req.end_timestamp_ms != 0).then_some(req.end_timestamp_ms),
            )),
            max: req.max_messages as usize,
        };
        Ok(QueryMessagesResponse {
            messages: self
                .querying
                .find(&self.topics, &lookup)?
                .into_iter()
                .map(with_timer)
                .collect(),
        })
    }
}

/// The wire form of a record found, with its timer.
fn with_timer(f: Found) -> StoredMessage {
    let timer = f.timer.map(|t| TimerInfo {
        state: match t.state {
            Some(TimerState::Pending) => proto::TimerState::Scheduled,
            Some(TimerState::Fired) => proto::TimerState::Delivered,
            Some(TimerState::Cancelled) => proto::TimerState::Cancelled,
            None => proto::TimerState::Unspecified,
        } as i32,
        deliver_at_ms: t.deliver_at_ms,
        handle: t.handle,
        topic: t.topic,
        queue_id: t.queue_id,
    });
    let mut m = to_wire(f.record);
    m.timer = timer;
    m
}

/// Resident set size of this process (Linux `/proc/self/statm`), 0 elsewhere.
fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

/// Fills the replication fields of a status from the replica.
async fn replica_status(group: &ReplicaGroup, s: &mut BrokerStatus) {
    s.replicated = true;
    s.ack_policy = group.ack_policy().as_str().to_string();
    let master = group.master_state();
    s.role = if master.is_master {
        Role::Master
    } else {
        Role::Slave
    } as i32;
    s.term = master.term;
    let st = match group.status().await {
        Ok(st) => st,
        Err(e) => {
            s.raft_role = "FAILED".into();
            tracing::warn!(error = %e, "replica status unavailable");
            return;
        }
    };
    s.raft_role = match st.role.role {
        RaftRole::Follower => "FOLLOWER",
        RaftRole::PreCandidate => "PRE_CANDIDATE",
        RaftRole::Candidate => "CANDIDATE",
        RaftRole::Leader => "LEADER",
        RaftRole::Failed => "FAILED",
    }
    .into();
    s.term = st.role.term;
    s.leader_id = st.role.leader_id.unwrap_or(0);
    s.first_index = st.first_index;
    s.last_index = st.last_index;
    s.commit_index = st.commit_index;
    s.applied_index = st.applied_index;
    s.replicas = st
        .peers
        .iter()
        .map(|p| ReplicaProgress {
            replica_id: p.id,
            address: group.address_of(p.id).unwrap_or_default().to_string(),
            match_index: p.matched,
            lag: st.last_index.saturating_sub(p.matched),
            learner: p.is_learner,
            active: p.recent_active || p.id == group.id(),
            state: match p.state {
                PeerState::Probe => "PROBE",
                PeerState::Replicate => "REPLICATE",
                PeerState::Snapshot => "SNAPSHOT",
            }
            .into(),
        })
        .collect();
}

impl BrokerService {
    /// The metrics exposition: the counters as they stand, the gauges read now.
    pub async fn render_metrics(&self) -> String {
        let status = self.status().await;
        let lag = self.consumer_lag().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "consumer lag left out of the metrics");
            Vec::new()
        });
        self.metrics.observe(&status, &lag);
        let (flushes, flush_time, flush_max) = self.store.flush_stats();
        self.metrics
            .ops
            .observe_store(flushes, flush_time, flush_max, self.store.segment_count());
        // From the open index: listing would decode every resolved transaction kept (up to
        // `transaction_max_resolved`) at every scrape.
        let (open, parked) = self.write.state().tx_open.counts();
        self.metrics
            .observe_transactions(open.saturating_sub(parked), parked);
        self.metrics.render()
    }

    /// (group, topic, queue, messages behind) for every committed offset held here.
    fn consumer_lag(&self) -> Result<Vec<(String, String, u32, u64)>, sluice_proto::ApiError> {
        let offsets = &self.write.state().offsets;
        let mut ends: std::collections::HashMap<String, Vec<(u32, u64)>> = Default::default();
        let mut out = Vec::new();
        for group in offsets.groups()? {
            for o in offsets.list(&group, None)? {
                if !ends.contains_key(&o.topic) {
                    let positions = self
                        .consuming
                        .queue_positions(&o.topic)
                        .map(|qs| qs.iter().map(|q| (q.queue_id, q.max_offset)).collect())
                        .unwrap_or_default();
                    ends.insert(o.topic.clone(), positions);
                }
                let end = ends
                    .get(&o.topic)
                    .and_then(|qs| qs.iter().find(|(q, _)| *q == o.queue_id))
                    .map_or(o.offset, |(_, max)| *max);
                out.push((
                    group.clone(),
                    o.topic,
                    o.queue_id,
                    end.saturating_sub(o.offset),
                ));
            }
        }
        Ok(out)
    }
}
