//! The `sluice.v1.Broker` gRPC service. Handlers validate, translate and call the store and
//! the metadata tables; each area lives in its own module.

mod access;
mod admin;
mod consume;
pub mod convert;
mod produce;
mod retry;
mod txn;

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::v1::broker_server::Broker;
use sluice_proto::v1::*;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::access::principal;
use crate::groups::ConsumerGroups;
use crate::messaging::WritePath;
use crate::state::TopicTable;
use crate::store::MessageStore;
use convert::IdGenerator;
use sluice_proto::acl::{Action, Resource};

/// Who this broker is, as announced to nameservers and clients.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cluster_name: String,
    pub broker_name: String,
    pub replica_id: u64,
    pub address: String,
    /// The data port's advertised address; empty when it is off.
    pub data_address: String,
}

/// Limits and switches the handlers apply.
#[derive(Debug, Clone)]
pub struct ServiceLimits {
    pub auto_create_topics: bool,
    pub default_queues: u32,
    pub max_poll: Duration,
    pub max_message_size: usize,
    pub flush_mode: String,
}

pub struct BrokerService {
    pub(crate) store: MessageStore,
    pub(crate) topics: Arc<TopicTable>,
    /// Where every write of messages and state goes (standalone or through the group's log).
    pub(crate) write: WritePath,
    /// Delayed messages: settings and the way to the master's timer task.
    pub(crate) timers: Arc<crate::messaging::timer::Timers>,
    /// Sends, immediate and delayed.
    pub(crate) producing: crate::messaging::produce::Producing,
    /// Consumer send-back, retry policies, dead letters.
    pub(crate) retries: crate::messaging::retry::Retries,
    pub(crate) groups: Arc<ConsumerGroups>,
    pub(crate) identity: Identity,
    pub(crate) limits: ServiceLimits,
    /// Wakes the nameserver registration loop after a topic change.
    pub(crate) reregister: Arc<Notify>,
    pub(crate) ids: IdGenerator,
    /// Message lookups.
    pub(crate) querying: crate::messaging::query::Querying,
    /// Pulls, offsets, queue positions (and the read hints of replica groups).
    pub(crate) consuming: crate::messaging::consume::Consuming,
    /// Queue locks of ordered consumption.
    pub(crate) locks: crate::messaging::locks::QueueLocks,
    /// Prometheus metrics (rendered by `metrics_listen`).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Counters of the data port, shown in the status.
    pub(crate) data_port: Arc<crate::data_port::DataPortStats>,
    /// Who may do what (every handler checks its call here).
    pub(crate) access: Arc<crate::access::Access>,
}

type Reply<T> = Result<Response<T>, Status>;

impl BrokerService {
    fn check_group<T>(&self, req: &Request<T>, action: Action, group: &str) -> Result<(), Status> {
        Ok(self
            .access
            .check(&principal(req), action, Resource::Group(group))?)
    }

    fn check_topic<T>(&self, req: &Request<T>, action: Action, topic: &str) -> Result<(), Status> {
        Ok(self
            .access
            .check(&principal(req), action, Resource::Topic(topic))?)
    }
}

fn reply<T>(r: Result<T, sluice_proto::ApiError>) -> Reply<T> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn send(&self, req: Request<SendRequest>) -> Reply<SendResponse> {
        let who = principal(&req);
        reply(self.do_send(req.into_inner(), &who).await)
    }

    async fn end_transaction(
        &self,
        req: Request<EndTransactionRequest>,
    ) -> Reply<EndTransactionResponse> {
        let who = principal(&req);
        reply(self.do_end_transaction(req.into_inner(), &who).await)
    }

    type WatchTransactionChecksStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<TransactionCheck, Status>> + Send + 'static>,
    >;

    async fn watch_transaction_checks(
        &self,
        req: Request<WatchTransactionChecksRequest>,
    ) -> Reply<Self::WatchTransactionChecksStream> {
        let who = principal(&req);
        let req = req.into_inner();
        self.access
            .check(&who, Action::Pub, Resource::Group(&req.producer_group))?;
        let rx = self
            .producing
            .transactions()
            .watch(&req.producer_group, &req.client_id)
            .map_err(Status::from)?;
        let data_address = self.identity.data_address.clone();
        let stream = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            move |mut check| {
                check.data_address.clone_from(&data_address);
                Ok(check)
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_transactions(
        &self,
        req: Request<ListTransactionsRequest>,
    ) -> Reply<ListTransactionsResponse> {
        self.access
            .check(&principal(&req), Action::Get, Resource::Cluster)?;
        reply(self.do_list_transactions(req.get_ref()))
    }

    async fn init_producer(
        &self,
        req: Request<InitProducerRequest>,
    ) -> Reply<InitProducerResponse> {
        // Any user may: an id and epoch only; what it sends is checked per topic.
        self.access.check_signed_in(&principal(&req))?;
        reply(self.do_init_producer(req.into_inner()).await)
    }

    async fn pull(&self, req: Request<PullRequest>) -> Reply<PullResponse> {
        let who = principal(&req);
        let r = req.get_ref();
        self.access.check_all(
            &who,
            Action::Sub,
            [Resource::Topic(&r.topic), Resource::Group(&r.group)],
        )?;
        let deadline = convert::grpc_timeout(req.metadata());
        reply(self.do_pull(req.into_inner(), deadline).await)
    }

    async fn commit_offsets(
        &self,
        req: Request<CommitOffsetsRequest>,
    ) -> Reply<CommitOffsetsResponse> {
        self.check_group(&req, Action::Sub, &req.get_ref().group)?;
        reply(self.do_commit_offsets(req.into_inner()).await)
    }

    async fn query_offset(&self, req: Request<QueryOffsetRequest>) -> Reply<QueryOffsetResponse> {
        self.check_group(&req, Action::Sub, &req.get_ref().group)?;
        reply(self.do_query_offset(req.into_inner()))
    }

    async fn get_queue_offsets(
        &self,
        req: Request<GetQueueOffsetsRequest>,
    ) -> Reply<GetQueueOffsetsResponse> {
        self.check_topic(&req, Action::Sub, &req.get_ref().topic)?;
        reply(self.do_get_queue_offsets(req.into_inner()))
    }

    async fn search_offset(
        &self,
        req: Request<SearchOffsetRequest>,
    ) -> Reply<SearchOffsetResponse> {
        self.check_topic(&req, Action::Sub, &req.get_ref().topic)?;
        reply(self.do_search_offset(req.into_inner()))
    }

    async fn consumer_heartbeat(
        &self,
        req: Request<ConsumerHeartbeatRequest>,
    ) -> Reply<ConsumerHeartbeatResponse> {
        let subs = &req.get_ref().subscriptions;
        self.access.check_all(
            &principal(&req),
            Action::Sub,
            subs.iter().flat_map(|s| {
                std::iter::once(Resource::Group(&s.group))
                    .chain(s.topics.iter().map(|t| Resource::Topic(t)))
            }),
        )?;
        reply(self.do_consumer_heartbeat(req.into_inner()))
    }

    async fn unregister_consumer(
        &self,
        req: Request<UnregisterConsumerRequest>,
    ) -> Reply<UnregisterConsumerResponse> {
        self.check_group(&req, Action::Sub, &req.get_ref().group)?;
        let r = req.into_inner();
        self.groups.unregister(&r.group, &r.client_id);
        Ok(Response::new(UnregisterConsumerResponse {}))
    }

    async fn get_consumer_list(
        &self,
        req: Request<GetConsumerListRequest>,
    ) -> Reply<GetConsumerListResponse> {
        self.check_group(&req, Action::Sub, &req.get_ref().group)?;
        reply(self.do_get_consumer_list(req.into_inner()))
    }

    async fn get_group_offsets(
        &self,
        req: Request<GetGroupOffsetsRequest>,
    ) -> Reply<GetGroupOffsetsResponse> {
        self.check_group(&req, Action::Get, &req.get_ref().group)?;
        reply(self.do_get_group_offsets(req.into_inner()))
    }

    async fn list_groups(&self, req: Request<ListGroupsRequest>) -> Reply<ListGroupsResponse> {
        self.access
            .check(&principal(&req), Action::List, Resource::Cluster)?;
        reply(self.do_list_groups())
    }

    async fn delete_group(&self, req: Request<DeleteGroupRequest>) -> Reply<DeleteGroupResponse> {
        self.check_group(&req, Action::Delete, &req.get_ref().group)?;
        reply(self.do_delete_group(req.into_inner()).await)
    }

    async fn lock_queues(&self, req: Request<LockQueuesRequest>) -> Reply<LockQueuesResponse> {
        self.check_group(&req, Action::Sub, &req.get_ref().group)?;
        let req = req.into_inner();
        let r = self
            .locks
            .lock(
                &req.group,
                &req.client_id,
                req.queues,
                self.locks.clock_ms(),
            )
            .await;
        reply(r.map(|l| {
            LockQueuesResponse {
                locked: l.queues,
                lease_ms: u64::try_from(l.lease.as_millis()).unwrap_or(u64::MAX),
                committed: l
                    .committed
                    .into_iter()
                    .map(|(q, offset)| OffsetEntry {
                        topic: q.topic,
                        queue_id: q.queue_id,
                        offset,
                    })
                    .collect(),
            }
        }))
    }

    async fn unlock_queues(
        &self,
        req: Request<UnlockQueuesRequest>,
    ) -> Reply<UnlockQueuesResponse> {
        self.check_group(&req, Action::Sub, &req.get_ref().group)?;
        let req = req.into_inner();
        let r = self
            .locks
            .unlock(
                &req.group,
                &req.client_id,
                req.queues,
                self.locks.clock_ms(),
            )
            .await;
        reply(r.map(|()| UnlockQueuesResponse {}))
    }

    async fn reset_offsets(
        &self,
        req: Request<ResetOffsetsRequest>,
    ) -> Reply<ResetOffsetsResponse> {
        self.check_group(&req, Action::Update, &req.get_ref().group)?;
        reply(self.do_reset_offsets(req.into_inner()).await)
    }

    async fn create_topic(&self, req: Request<CreateTopicRequest>) -> Reply<CreateTopicResponse> {
        let name = req
            .get_ref()
            .config
            .as_ref()
            .map_or("", |c| c.name.as_str());
        self.check_topic(&req, Action::Create, name)?;
        reply(self.do_create_topic(req.into_inner()).await)
    }

    async fn delete_topic(&self, req: Request<DeleteTopicRequest>) -> Reply<DeleteTopicResponse> {
        self.check_topic(&req, Action::Delete, &req.get_ref().topic)?;
        reply(self.do_delete_topic(req.into_inner()).await)
    }

    async fn list_topics(
        &self,
        req: Request<BrokerListTopicsRequest>,
    ) -> Reply<BrokerListTopicsResponse> {
        self.access
            .check(&principal(&req), Action::List, Resource::Cluster)?;
        Ok(Response::new(BrokerListTopicsResponse {
            topics: self.topics.list(),
        }))
    }

    async fn get_broker_status(&self, req: Request<GetBrokerStatusRequest>) -> Reply<BrokerStatus> {
        // Producers read it to pick their data path: any user may.
        self.access.check_signed_in(&principal(&req))?;
        Ok(Response::new(self.status().await))
    }

    async fn get_message(&self, req: Request<GetMessageRequest>) -> Reply<GetMessageResponse> {
        let who = principal(&req);
        let found = self.do_get_message(req.into_inner())?;
        // Its topic is known once it is found (a delayed one's: the topic it waits for). A
        // half message's is its internal topic: its real topic's readers may not see a
        // transaction's messages before the commit (or after a rollback).
        let topic = found.message.as_ref().map_or("", |m| {
            let scheduled = m.sys_flag & sluice_proto::record::SYS_FLAGS_TIMER != 0;
            m.properties
                .get(sluice_proto::props::REAL_TOPIC)
                .filter(|_| scheduled)
                .unwrap_or(&m.topic)
                .as_str()
        });
        self.access
            .check(&who, Action::Get, Resource::Topic(topic))?;
        Ok(Response::new(found))
    }

    async fn query_messages(
        &self,
        req: Request<QueryMessagesRequest>,
    ) -> Reply<QueryMessagesResponse> {
        self.check_topic(&req, Action::Get, &req.get_ref().topic)?;
        reply(self.do_query_messages(req.into_inner()))
    }

    async fn cancel_delayed(
        &self,
        req: Request<CancelDelayedRequest>,
    ) -> Reply<CancelDelayedResponse> {
        let who = principal(&req);
        reply(self.do_cancel_delayed(req.into_inner(), &who).await)
    }

    async fn send_back(&self, req: Request<SendBackRequest>) -> Reply<SendBackResponse> {
        let who = principal(&req);
        self.check_group(&req, Action::Sub, &req.get_ref().group)?;
        reply(self.do_send_back(req.into_inner(), &who).await)
    }

    async fn get_group_config(&self, req: Request<GetGroupConfigRequest>) -> Reply<GroupConfig> {
        // Consumers of the group read their retry policy: sub or get.
        let group = Resource::Group(&req.get_ref().group);
        let who = principal(&req);
        if self
            .access
            .check_quietly(&who, Action::Sub, group.clone())
            .is_err()
        {
            self.check_group(&req, Action::Get, &req.get_ref().group)?;
        }
        reply(self.do_get_group_config(req.into_inner()))
    }

    async fn update_group_config(
        &self,
        req: Request<UpdateGroupConfigRequest>,
    ) -> Reply<GroupConfig> {
        let group = req
            .get_ref()
            .config
            .as_ref()
            .map_or("", |c| c.group.as_str());
        self.check_group(&req, Action::Update, group)?;
        reply(self.do_update_group_config(req.into_inner()).await)
    }

    async fn redrive_dead_letters(&self, req: Request<RedriveRequest>) -> Reply<RedriveResponse> {
        self.check_group(&req, Action::Update, &req.get_ref().group)?;
        reply(self.do_redrive(req.into_inner()).await)
    }
}
