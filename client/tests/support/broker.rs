//! A fake broker: in-memory queues, long-poll pulls, offsets, group membership, failure
//! injection.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_proto::v1::broker_server::{Broker, BrokerServer};
use sluice_proto::v1::*;
use sluice_proto::{ApiError, ErrorCode};
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use super::nameserver::{FakeNameServer, NsState, Registration};
use super::{bind, now_ms, Res};

mod state;

#[derive(Default)]
struct Queue {
    min: u64,
    messages: Vec<StoredMessage>,
}

impl Queue {
    fn max(&self) -> u64 {
        self.min + self.messages.len() as u64
    }
}

pub struct BrokerState {
    pub name: String,
    pub addr: Mutex<String>,
    ns: Vec<Arc<NsState>>,
    topics: Mutex<BTreeMap<String, TopicConfig>>,
    queues: Mutex<HashMap<(String, u32), Queue>>,
    offsets: Mutex<BTreeMap<(String, String, u32), u64>>,
    members: Mutex<HashMap<String, BTreeMap<String, Instant>>>,
    pub member_expiry: Duration,
    appended: Notify,
    commit_log: AtomicU64,
    /// Statuses returned by the next sends, in order.
    send_failures: Mutex<VecDeque<Status>>,
    /// Every send attempt: the message ids it carried.
    pub send_attempts: Mutex<Vec<Vec<String>>>,
    /// Every send attempt's producer id, epoch and base sequence.
    pub send_sequences: Mutex<Vec<(u64, u32, u64)>>,
    /// When true every call fails like an unreachable server.
    pub down: AtomicBool,
    /// How long after CreateTopic the nameservers see the topic.
    pub register_delay: Mutex<Duration>,
    pub pulls: AtomicU64,
    pub commits: AtomicU64,
    /// Largest body accepted (0: no limit); a send with a larger one is refused whole with
    /// MESSAGE_TOO_LARGE, as the real broker does.
    pub max_body: AtomicU64,
}

struct FakeBroker(Arc<BrokerState>);

#[tonic::async_trait]
impl Broker for FakeBroker {
    async fn send(&self, req: Request<SendRequest>) -> Res<SendResponse> {
        self.0.check_up()?;
        let req = req.into_inner();
        self.0
            .send_attempts
            .lock()
            .unwrap()
            .push(req.messages.iter().map(|m| m.message_id.clone()).collect());
        let seq = (req.producer_id, req.producer_epoch, req.base_sequence);
        self.0.send_sequences.lock().unwrap().push(seq);
        if let Some(status) = self.0.send_failures.lock().unwrap().pop_front() {
            return Err(status);
        }
        let t = self.0.topic(&req.topic)?;
        if req.queue_id >= t.write_queues {
            return Err(ApiError::new(ErrorCode::QueueNotFound, "no such queue").into());
        }
        if req.messages.is_empty() {
            return Err(ApiError::invalid("empty batch").into());
        }
        let max_body = self.0.max_body.load(Ordering::SeqCst);
        if max_body > 0 && req.messages.iter().any(|m| m.body.len() as u64 > max_body) {
            return Err(ApiError::new(ErrorCode::MessageTooLarge, "body too large").into());
        }
        let results = self.0.append(&req.topic, req.queue_id, req.messages);
        Ok(Response::new(SendResponse {
            broker_name: self.0.name.clone(),
            queue_id: req.queue_id,
            results,
            store_timestamp_ms: 0,
        }))
    }

    // Transactions are tested against real brokers (integration-tests/tests/transactions.rs).
    async fn end_transaction(
        &self,
        _: Request<EndTransactionRequest>,
    ) -> Res<EndTransactionResponse> {
        Err(Status::unimplemented("the fake broker has no transactions"))
    }

    type WatchTransactionChecksStream =
        tokio_stream::wrappers::ReceiverStream<Result<TransactionCheck, Status>>;

    async fn watch_transaction_checks(
        &self,
        _: Request<WatchTransactionChecksRequest>,
    ) -> Res<Self::WatchTransactionChecksStream> {
        Err(Status::unimplemented("the fake broker has no transactions"))
    }

    async fn list_transactions(
        &self,
        _: Request<ListTransactionsRequest>,
    ) -> Res<ListTransactionsResponse> {
        Ok(Response::new(ListTransactionsResponse::default()))
    }

    async fn init_producer(&self, _: Request<InitProducerRequest>) -> Res<InitProducerResponse> {
        self.0.check_up()?;
        Ok(Response::new(InitProducerResponse {
            producer_id: 7,
            producer_epoch: 0,
            broker_name: self.0.name.clone(),
        }))
    }

    async fn pull(&self, req: Request<PullRequest>) -> Res<PullResponse> {
        self.0.check_up()?;
        self.0.pulls.fetch_add(1, Ordering::SeqCst);
        let req = req.into_inner();
        self.0.topic(&req.topic)?;
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(u64::from(req.poll_timeout_ms).min(15_000));
        let max = if req.max_messages == 0 {
            32
        } else {
            req.max_messages
        } as usize;
        loop {
            let notified = self.0.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let queues = self.0.queues.lock().unwrap();
                let (min, maxo, msgs) = match queues.get(&(req.topic.clone(), req.queue_id)) {
                    Some(q) => (q.min, q.max(), &q.messages[..]),
                    None => (0, 0, &[][..]),
                };
                if req.offset < min || req.offset > maxo {
                    return Err(ApiError::offset_out_of_range(req.offset, min, maxo).into());
                }
                if req.offset < maxo {
                    let start = (req.offset - min) as usize;
                    let batch: Vec<StoredMessage> =
                        msgs[start..].iter().take(max).cloned().collect();
                    let next = req.offset + batch.len() as u64;
                    // Decoded messages whatever the request asked for: the client reads both.
                    return Ok(Response::new(PullResponse {
                        messages: batch,
                        records: vec![],
                        next_offset: next,
                        min_offset: min,
                        max_offset: maxo,
                        hint: None,
                    }));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Ok(Response::new(PullResponse {
                        messages: vec![],
                        records: vec![],
                        next_offset: req.offset,
                        min_offset: min,
                        max_offset: maxo,
                        hint: None,
                    }));
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    async fn commit_offsets(
        &self,
        req: Request<CommitOffsetsRequest>,
    ) -> Res<CommitOffsetsResponse> {
        self.0.check_up()?;
        self.0.commits.fetch_add(1, Ordering::SeqCst);
        let req = req.into_inner();
        for o in req.offsets {
            self.0
                .set_committed(&req.group, &o.topic, o.queue_id, o.offset);
        }
        Ok(Response::new(CommitOffsetsResponse {}))
    }

    async fn query_offset(&self, req: Request<QueryOffsetRequest>) -> Res<QueryOffsetResponse> {
        self.0.check_up()?;
        let r = req.into_inner();
        Ok(Response::new(
            match self.0.committed(&r.group, &r.topic, r.queue_id) {
                Some(offset) => QueryOffsetResponse {
                    found: true,
                    offset,
                },
                None => QueryOffsetResponse {
                    found: false,
                    offset: 0,
                },
            },
        ))
    }

    async fn get_queue_offsets(
        &self,
        req: Request<GetQueueOffsetsRequest>,
    ) -> Res<GetQueueOffsetsResponse> {
        self.0.check_up()?;
        let topic = req.into_inner().topic;
        let t = self.0.topic(&topic)?;
        let queues = self.0.queues.lock().unwrap();
        let list = (0..t.read_queues)
            .map(|q| {
                let (min, max, last) = queues
                    .get(&(topic.clone(), q))
                    .map(|x| {
                        (
                            x.min,
                            x.max(),
                            x.messages.last().map_or(0, |m| m.store_timestamp_ms),
                        )
                    })
                    .unwrap_or((0, 0, 0));
                QueueOffsets {
                    queue_id: q,
                    min_offset: min,
                    max_offset: max,
                    last_store_timestamp_ms: last,
                }
            })
            .collect();
        Ok(Response::new(GetQueueOffsetsResponse {
            broker_name: self.0.name.clone(),
            queues: list,
        }))
    }

    async fn search_offset(&self, req: Request<SearchOffsetRequest>) -> Res<SearchOffsetResponse> {
        self.0.check_up()?;
        let r = req.into_inner();
        let queues = self.0.queues.lock().unwrap();
        let offset = match queues.get(&(r.topic.clone(), r.queue_id)) {
            Some(q) => q
                .messages
                .iter()
                .find(|m| m.store_timestamp_ms >= r.timestamp_ms)
                .map_or(q.max(), |m| m.queue_offset),
            None => 0,
        };
        Ok(Response::new(SearchOffsetResponse { offset }))
    }

    async fn consumer_heartbeat(
        &self,
        req: Request<ConsumerHeartbeatRequest>,
    ) -> Res<ConsumerHeartbeatResponse> {
        self.0.check_up()?;
        let r = req.into_inner();
        let mut members = self.0.members.lock().unwrap();
        for s in r.subscriptions {
            members
                .entry(s.group)
                .or_default()
                .insert(r.client_id.clone(), Instant::now());
        }
        Ok(Response::new(ConsumerHeartbeatResponse {
            expiry_ms: self.0.member_expiry.as_millis() as u64,
            reset_epochs: Default::default(),
        }))
    }

    async fn unregister_consumer(
        &self,
        req: Request<UnregisterConsumerRequest>,
    ) -> Res<UnregisterConsumerResponse> {
        self.0.check_up()?;
        let r = req.into_inner();
        if let Some(g) = self.0.members.lock().unwrap().get_mut(&r.group) {
            g.remove(&r.client_id);
        }
        Ok(Response::new(UnregisterConsumerResponse {}))
    }

    async fn get_consumer_list(
        &self,
        req: Request<GetConsumerListRequest>,
    ) -> Res<GetConsumerListResponse> {
        self.0.check_up()?;
        Ok(Response::new(GetConsumerListResponse {
            client_ids: self.0.members(&req.into_inner().group),
        }))
    }

    async fn reset_offsets(&self, _req: Request<ResetOffsetsRequest>) -> Res<ResetOffsetsResponse> {
        // Resets are tested against real brokers (integration-tests/tests/group_admin.rs).
        Err(Status::unimplemented(
            "the fake broker does not reset offsets",
        ))
    }

    async fn list_groups(&self, _req: Request<ListGroupsRequest>) -> Res<ListGroupsResponse> {
        Err(Status::unimplemented(
            "the fake broker does not list groups",
        ))
    }

    async fn delete_group(&self, _req: Request<DeleteGroupRequest>) -> Res<DeleteGroupResponse> {
        Err(Status::unimplemented(
            "the fake broker does not delete groups",
        ))
    }

    async fn lock_queues(&self, _req: Request<LockQueuesRequest>) -> Res<LockQueuesResponse> {
        Err(Status::unimplemented("the fake broker has no queue locks"))
    }

    async fn unlock_queues(&self, _req: Request<UnlockQueuesRequest>) -> Res<UnlockQueuesResponse> {
        Err(Status::unimplemented("the fake broker has no queue locks"))
    }

    async fn get_group_offsets(
        &self,
        req: Request<GetGroupOffsetsRequest>,
    ) -> Res<GetGroupOffsetsResponse> {
        self.0.check_up()?;
        let r = req.into_inner();
        let offsets: Vec<OffsetEntry> = self
            .0
            .offsets
            .lock()
            .unwrap()
            .iter()
            .filter(|((g, t, _), _)| *g == r.group && (r.topic.is_empty() || *t == r.topic))
            .map(|((_, t, q), o)| OffsetEntry {
                topic: t.clone(),
                queue_id: *q,
                offset: *o,
            })
            .collect();
        if offsets.is_empty() {
            return Err(ApiError::new(ErrorCode::GroupNotFound, "no offsets").into());
        }
        Ok(Response::new(GetGroupOffsetsResponse { offsets }))
    }

    async fn create_topic(&self, req: Request<CreateTopicRequest>) -> Res<CreateTopicResponse> {
        self.0.check_up()?;
        let config = req
            .into_inner()
            .config
            .ok_or_else(|| Status::from(ApiError::invalid("no config")))?;
        {
            let mut topics = self.0.topics.lock().unwrap();
            match topics.get(&config.name) {
                Some(existing) if *existing == config => {
                    return Ok(Response::new(CreateTopicResponse { created: false }))
                }
                Some(_) => {
                    return Err(
                        ApiError::new(ErrorCode::TopicAlreadyExists, "different config").into(),
                    )
                }
                None => {
                    topics.insert(config.name.clone(), config.clone());
                }
            }
        }
        // Registration reaches the nameservers a little later, like a real re-registration.
        let delay = *self.0.register_delay.lock().unwrap();
        let state = self.0.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            for ns in &state.ns {
                ns.add_topic(&state.name, config.clone());
            }
        });
        Ok(Response::new(CreateTopicResponse { created: true }))
    }

    async fn delete_topic(&self, _: Request<DeleteTopicRequest>) -> Res<DeleteTopicResponse> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_topics(
        &self,
        _: Request<BrokerListTopicsRequest>,
    ) -> Res<BrokerListTopicsResponse> {
        self.0.check_up()?;
        Ok(Response::new(BrokerListTopicsResponse {
            topics: self.0.topics.lock().unwrap().values().cloned().collect(),
        }))
    }

    async fn get_broker_status(&self, _: Request<GetBrokerStatusRequest>) -> Res<BrokerStatus> {
        self.0.check_up()?;
        Ok(Response::new(BrokerStatus {
            cluster_name: "c1".into(),
            broker_name: self.0.name.clone(),
            replica_id: 1,
            role: Role::Master as i32,
            address: self.0.addr(),
            min_offset: 0,
            max_offset: self.0.commit_log.load(Ordering::SeqCst),
            confirmed_offset: self.0.commit_log.load(Ordering::SeqCst),
            term: 0,
            topic_count: self.0.topics.lock().unwrap().len() as u32,
            disk_usage_ratio: 0.25,
            flush_mode: "async".into(),
            ..Default::default()
        }))
    }

    async fn get_message(&self, req: Request<GetMessageRequest>) -> Res<GetMessageResponse> {
        self.0.check_up()?;
        let id = req.into_inner().message_id;
        match self
            .0
            .all_messages()
            .into_iter()
            .find(|m| m.message_id == id)
        {
            Some(m) => Ok(Response::new(GetMessageResponse { message: Some(m) })),
            None => {
                Err(ApiError::new(ErrorCode::MessageNotFound, format!("no message {id}")).into())
            }
        }
    }

    async fn send_back(&self, _req: Request<SendBackRequest>) -> Res<SendBackResponse> {
        self.0.check_up()?;
        // No retry topics here: consumers fall back to retrying locally.
        Err(ApiError::new(ErrorCode::Internal, "the fake broker keeps no retry topics").into())
    }

    async fn get_group_config(&self, _req: Request<GetGroupConfigRequest>) -> Res<GroupConfig> {
        Err(ApiError::new(ErrorCode::Internal, "not in the fake broker").into())
    }

    async fn update_group_config(
        &self,
        _req: Request<UpdateGroupConfigRequest>,
    ) -> Res<GroupConfig> {
        Err(ApiError::new(ErrorCode::Internal, "not in the fake broker").into())
    }

    async fn redrive_dead_letters(&self, _req: Request<RedriveRequest>) -> Res<RedriveResponse> {
        Err(ApiError::new(ErrorCode::Internal, "not in the fake broker").into())
    }

    async fn cancel_delayed(
        &self,
        _req: Request<CancelDelayedRequest>,
    ) -> Res<CancelDelayedResponse> {
        self.0.check_up()?;
        Err(ApiError::new(
            ErrorCode::MessageNotFound,
            "the fake broker keeps no timers",
        )
        .into())
    }

    async fn query_messages(
        &self,
        req: Request<QueryMessagesRequest>,
    ) -> Res<QueryMessagesResponse> {
        self.0.check_up()?;
        let r = req.into_inner();
        let max = if r.max_messages == 0 {
            64
        } else {
            r.max_messages
        } as usize;
        let mut messages: Vec<StoredMessage> = self
            .0
            .all_messages()
            .into_iter()
            .filter(|m| m.topic == r.topic)
            .filter(|m| r.key.is_empty() || m.keys.contains(&r.key))
            .filter(|m| {
                !r.key.is_empty()
                    || (m.store_timestamp_ms >= r.begin_timestamp_ms
                        && m.store_timestamp_ms <= r.end_timestamp_ms)
            })
            .collect();
        messages.sort_by_key(|m| (m.store_timestamp_ms, m.queue_id, m.queue_offset));
        messages.truncate(max);
        Ok(Response::new(QueryMessagesResponse { messages }))
    }
}

pub struct FakeBrokerHandle {
    pub state: Arc<BrokerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBrokerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::ops::Deref for FakeBrokerHandle {
    type Target = BrokerState;
    fn deref(&self) -> &BrokerState {
        &self.state
    }
}

/// Starts a fake master broker registered (without topics) with the given nameservers.
pub async fn start_broker(name: &str, nameservers: &[&FakeNameServer]) -> FakeBrokerHandle {
    let (listener, addr) = bind().await;
    let state = Arc::new(BrokerState {
        name: name.into(),
        addr: Mutex::new(addr.to_string()),
        ns: nameservers.iter().map(|n| n.state.clone()).collect(),
        topics: Mutex::default(),
        queues: Mutex::default(),
        offsets: Mutex::default(),
        members: Mutex::default(),
        member_expiry: Duration::from_millis(1500),
        appended: Notify::new(),
        commit_log: AtomicU64::new(0),
        send_failures: Mutex::default(),
        send_attempts: Mutex::default(),
        send_sequences: Mutex::default(),
        down: AtomicBool::new(false),
        register_delay: Mutex::new(Duration::from_millis(50)),
        pulls: AtomicU64::new(0),
        commits: AtomicU64::new(0),
        max_body: AtomicU64::new(0),
    });
    for ns in nameservers {
        ns.state.register(
            name,
            Registration {
                cluster: "c1".into(),
                address: addr.to_string(),
                role: Role::Master,
                topics: BTreeMap::new(),
            },
        );
    }
    let svc = BrokerServer::new(FakeBroker(state.clone()))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    FakeBrokerHandle { state, task }
}

/// An address on which nothing listens (bound, then released).
pub async fn dead_address() -> String {
    let (l, a) = bind().await;
    drop(l);
    a.to_string()
}
