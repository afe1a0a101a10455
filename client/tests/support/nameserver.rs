//! A fake nameserver: routes from what the fake brokers registered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sluice_proto::v1::name_server_server::{NameServer, NameServerServer};
use sluice_proto::v1::*;
use sluice_proto::{ApiError, ErrorCode};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use super::{bind, Res};

#[derive(Clone)]
pub(super) struct Registration {
    pub(super) cluster: String,
    pub(super) address: String,
    pub(super) role: Role,
    pub(super) topics: BTreeMap<String, TopicConfig>,
}

#[derive(Default)]
pub struct NsState {
    brokers: Mutex<BTreeMap<String, Registration>>,
    pub route_calls: AtomicU64,
}

impl NsState {
    pub(super) fn register(&self, name: &str, reg: Registration) {
        self.brokers.lock().unwrap().insert(name.to_string(), reg);
    }

    pub(super) fn add_topic(&self, broker: &str, config: TopicConfig) {
        if let Some(r) = self.brokers.lock().unwrap().get_mut(broker) {
            r.topics.insert(config.name.clone(), config);
        }
    }

    /// Marks a broker group as having no master (route keeps it, without a master id).
    pub fn set_masterless(&self, broker: &str) {
        if let Some(r) = self.brokers.lock().unwrap().get_mut(broker) {
            r.role = Role::Slave;
        }
    }

    pub fn set_address(&self, broker: &str, address: &str) {
        if let Some(r) = self.brokers.lock().unwrap().get_mut(broker) {
            r.address = address.to_string();
        }
    }

    pub fn remove_broker(&self, broker: &str) {
        self.brokers.lock().unwrap().remove(broker);
    }
}

struct FakeNs(Arc<NsState>);

#[tonic::async_trait]
impl NameServer for FakeNs {
    async fn register_broker(
        &self,
        _: Request<RegisterBrokerRequest>,
    ) -> Res<RegisterBrokerResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn unregister_broker(
        &self,
        _: Request<UnregisterBrokerRequest>,
    ) -> Res<UnregisterBrokerResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_topic_route(&self, req: Request<GetTopicRouteRequest>) -> Res<TopicRoute> {
        self.0.route_calls.fetch_add(1, Ordering::SeqCst);
        let topic = req.into_inner().topic;
        let brokers: Vec<BrokerRoute> = self
            .0
            .brokers
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(name, r)| {
                r.topics.get(&topic).map(|t| BrokerRoute {
                    cluster_name: r.cluster.clone(),
                    broker_name: name.clone(),
                    read_queues: t.read_queues,
                    write_queues: t.write_queues,
                    perm: t.perm,
                    replicas: vec![ReplicaRoute {
                        replica_id: 1,
                        address: r.address.clone(),
                        role: r.role as i32,
                        // The fake brokers speak gRPC only.
                        data_address: String::new(),
                    }],
                    master_replica_id: u64::from(r.role == Role::Master),
                })
            })
            .collect();
        if brokers.is_empty() {
            return Err(ApiError::new(
                ErrorCode::TopicNotFound,
                format!("no route for topic {topic}"),
            )
            .into());
        }
        Ok(Response::new(TopicRoute { topic, brokers }))
    }
    async fn list_topics(&self, _: Request<ListTopicsRequest>) -> Res<ListTopicsResponse> {
        let mut topics: Vec<String> = self
            .0
            .brokers
            .lock()
            .unwrap()
            .values()
            .flat_map(|r| r.topics.keys().cloned())
            .collect();
        topics.sort();
        topics.dedup();
        Ok(Response::new(ListTopicsResponse { topics }))
    }
    async fn get_cluster_info(&self, _: Request<GetClusterInfoRequest>) -> Res<ClusterInfo> {
        let brokers = self
            .0
            .brokers
            .lock()
            .unwrap()
            .iter()
            .map(|(name, r)| BrokerInfo {
                cluster_name: r.cluster.clone(),
                broker_name: name.clone(),
                replica_id: 1,
                role: r.role as i32,
                address: r.address.clone(),
                term: 0,
                max_offset: 0,
                last_heartbeat_ago_ms: 5,
                topic_count: r.topics.len() as u32,
                data_address: String::new(),
            })
            .collect();
        Ok(Response::new(ClusterInfo { brokers }))
    }
    async fn put_config(&self, _: Request<PutConfigRequest>) -> Res<PutConfigResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_config(&self, _: Request<GetConfigRequest>) -> Res<GetConfigResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete_config(&self, _: Request<DeleteConfigRequest>) -> Res<DeleteConfigResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_config(&self, _: Request<ListConfigRequest>) -> Res<ListConfigResponse> {
        Err(Status::unimplemented("fake"))
    }
}

pub struct FakeNameServer {
    pub addr: String,
    pub state: Arc<NsState>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeNameServer {
    pub async fn start() -> Self {
        let state = Arc::new(NsState::default());
        let (listener, addr) = bind().await;
        let svc = NameServerServer::new(FakeNs(state.clone()));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        FakeNameServer {
            addr: addr.to_string(),
            state,
            task,
        }
    }
}

impl Drop for FakeNameServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
