//! Topic administration, broker status and message query.

use std::sync::atomic::Ordering;

use sluice_proto::names::validate_topic_name;
use sluice_proto::record::SYS_FLAGS_TIMER;
use sluice_proto::v1 as proto;
use sluice_proto::v1::*;
use sluice_proto::{perm, props, ApiError, ErrorCode};

use super::convert::{now_ms, to_wire};
use super::BrokerService;
use crate::replication::{PeerState, ReplicaGroup, Role as RaftRole};
use crate::state;
use crate::state::topics::require;
use crate::store::timer::TimerState;
use crate::store::StoredRecord;

const DEFAULT_QUERY_MAX: usize = 64;
const QUERY_MAX: usize = 1000;

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
            read_stats: Some(self.read_hints.stats()),
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
        if req.message_id.is_empty() {
            return Err(ApiError::invalid("message_id is required"));
        }
        match self.store.get_by_id(&req.message_id)? {
            Some(r) => Ok(GetMessageResponse {
                message: Some(self.with_timer(r)),
            }),
            None => Err(ApiError::new(
                ErrorCode::MessageNotFound,
                format!("no message with id {}", req.message_id),
            )),
        }
    }

    pub(super) fn do_query_messages(
        &self,
        req: QueryMessagesRequest,
    ) -> Result<QueryMessagesResponse, ApiError> {
        require(&self.topics, &req.topic)?;
        let max = match req.max_messages as usize {
            0 => DEFAULT_QUERY_MAX,
            n => n.min(QUERY_MAX),
        };
        let has_range = req.begin_timestamp_ms != 0 || req.end_timestamp_ms != 0;
        let records = if !req.key.is_empty() {
            let mut r = self.store.find_by_key(
                &req.topic,
                &req.key,
                if has_range { QUERY_MAX } else { max },
            )?;
            if has_range {
                r.retain(|m| in_range(m.store_timestamp_ms, &req));
                r.truncate(max);
            }
            r
        } else if has_range {
            if req.end_timestamp_ms != 0 && req.end_timestamp_ms < req.begin_timestamp_ms {
                return Err(ApiError::invalid(
                    "end_timestamp_ms is before begin_timestamp_ms",
                ));
            }
            let end = if req.end_timestamp_ms == 0 {
                i64::MAX
            } else {
                req.end_timestamp_ms
            };
            self.store
                .find_by_time(&req.topic, req.begin_timestamp_ms, end, max)?
        } else {
            return Err(ApiError::invalid("give a key, a time range, or both"));
        };
        Ok(QueryMessagesResponse {
            messages: records.into_iter().map(|r| self.with_timer(r)).collect(),
        })
    }
}

impl BrokerService {
    /// The wire form of a record, with where it stands as a delayed message if it is one.
    fn with_timer(&self, r: StoredRecord) -> StoredMessage {
        let info = self.timer_info(&r);
        let mut m = to_wire(r);
        m.timer = info;
        m
    }

    fn timer_info(&self, r: &StoredRecord) -> Option<TimerInfo> {
        use sluice_proto::record::{SYS_FLAG_SCHEDULED, SYS_FLAG_TIMER_FIRED};
        if r.sys_flag & SYS_FLAGS_TIMER == 0 {
            return None;
        }
        let num = |name: &str| props::get(&r.properties, name).and_then(|v| v.parse::<i64>().ok());
        let broker = &self.identity.broker_name;
        let real_topic = props::get(&r.properties, props::REAL_TOPIC).unwrap_or_default();
        let real_queue = num(props::REAL_QUEUE).unwrap_or_default() as u32;
        let timer_of = num(props::TIMER_OF).unwrap_or_default() as u64;
        let (state, handle, topic, queue_id) = if r.sys_flag & SYS_FLAG_SCHEDULED != 0 {
            let state = match self.store.timer_entry(r.commit_log_offset) {
                Ok(Some(e)) => match e.state {
                    TimerState::Pending => proto::TimerState::Scheduled,
                    TimerState::Fired => proto::TimerState::Delivered,
                    TimerState::Cancelled => proto::TimerState::Cancelled,
                },
                // Resolved long ago (the index let go of it), or unreadable.
                _ => proto::TimerState::Unspecified,
            };
            (
                state,
                r.commit_log_offset,
                real_topic.to_string(),
                real_queue,
            )
        } else if r.sys_flag & SYS_FLAG_TIMER_FIRED != 0 {
            (
                proto::TimerState::Delivered,
                timer_of,
                r.topic.clone(),
                r.queue_id,
            )
        } else {
            (
                proto::TimerState::Cancelled,
                timer_of,
                real_topic.to_string(),
                real_queue,
            )
        };
        Some(TimerInfo {
            state: state as i32,
            deliver_at_ms: num(props::DELIVER_AT).unwrap_or_default(),
            handle: crate::messaging::timer::handle(broker, handle),
            topic,
            queue_id,
        })
    }
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

fn in_range(ts: i64, req: &QueryMessagesRequest) -> bool {
    ts >= req.begin_timestamp_ms && (req.end_timestamp_ms == 0 || ts <= req.end_timestamp_ms)
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
