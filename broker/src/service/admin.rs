//! Topic administration, broker status and message query.

use sluice_proto::names::validate_topic_name;
use sluice_proto::v1::*;
use sluice_proto::{perm, ApiError, ErrorCode};

use super::convert::to_wire;
use super::BrokerService;
use crate::topics::require;

const DEFAULT_QUERY_MAX: usize = 64;
const QUERY_MAX: usize = 1000;

impl BrokerService {
    pub(super) fn do_create_topic(
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
        let created = self.topics.upsert(cfg.clone())?;
        if created {
            tracing::info!(topic = %cfg.name, queues = cfg.write_queues, perm = cfg.perm, "topic created or updated");
            self.reregister.notify_one();
        }
        Ok(CreateTopicResponse { created })
    }

    pub(super) fn do_delete_topic(
        &self,
        req: DeleteTopicRequest,
    ) -> Result<DeleteTopicResponse, ApiError> {
        validate_topic_name(&req.topic)?;
        if !self.topics.delete(&req.topic)? {
            return Err(ApiError::new(
                ErrorCode::TopicNotFound,
                format!("topic {} does not exist", req.topic),
            ));
        }
        tracing::info!(topic = %req.topic, "topic deleted");
        self.reregister.notify_one();
        Ok(DeleteTopicResponse {})
    }

    pub(crate) fn status(&self) -> BrokerStatus {
        let (min_offset, max_offset) = self.store.commit_log_range();
        BrokerStatus {
            cluster_name: self.identity.cluster_name.clone(),
            broker_name: self.identity.broker_name.clone(),
            replica_id: self.identity.replica_id,
            role: Role::Master as i32,
            address: self.identity.address.clone(),
            min_offset,
            max_offset,
            confirmed_offset: self.store.confirmed_offset(),
            term: 0,
            topic_count: self.topics.len() as u32,
            disk_usage_ratio: self.store.disk_usage_ratio(),
            flush_mode: self.limits.flush_mode.clone(),
        }
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
                message: Some(to_wire(r)),
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
            messages: records.into_iter().map(to_wire).collect(),
        })
    }
}

fn in_range(ts: i64, req: &QueryMessagesRequest) -> bool {
    ts >= req.begin_timestamp_ms && (req.end_timestamp_ms == 0 || ts <= req.end_timestamp_ms)
}
