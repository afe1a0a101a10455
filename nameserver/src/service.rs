//! The `sluice.v1.NameServer` gRPC service: decodes and validates requests, then hands them to
//! the registry (under its lock) or to the config store (on the blocking pool).

use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use sluice_proto::v1::name_server_server::NameServer;
use sluice_proto::v1::{
    ClusterInfo, ConfigEntry, DeleteConfigRequest, DeleteConfigResponse, GetClusterInfoRequest,
    GetConfigRequest, GetConfigResponse, GetTopicRouteRequest, ListConfigRequest,
    ListConfigResponse, ListTopicsRequest, ListTopicsResponse, PutConfigRequest, PutConfigResponse,
    RegisterBrokerRequest, RegisterBrokerResponse, TopicRoute, UnregisterBrokerRequest,
    UnregisterBrokerResponse,
};
use sluice_proto::ApiError;
use tonic::{Request, Response, Status};

use crate::auth::ClusterAuth;
use crate::registry::{duration_ms, MasterChange, Registration, Registry, Unregistration};
use crate::store::{validate_key, validate_namespace, validate_value, ConfigStore, StoreError};

/// The route table has one lock: registrations write, lookups read, nothing awaits under it.
pub type SharedRegistry = Arc<RwLock<Registry>>;

#[derive(Clone)]
pub struct NameServerService {
    registry: SharedRegistry,
    store: Arc<dyn ConfigStore>,
    metrics: Arc<crate::metrics::NsMetrics>,
    /// With a cluster secret: registrations must be signed with it.
    auth: Option<Arc<ClusterAuth>>,
}

const REGISTER: &str = "/sluice.v1.NameServer/RegisterBroker";
const UNREGISTER: &str = "/sluice.v1.NameServer/UnregisterBroker";
const PUT_CONFIG: &str = "/sluice.v1.NameServer/PutConfig";
const DELETE_CONFIG: &str = "/sluice.v1.NameServer/DeleteConfig";

impl NameServerService {
    pub fn new(registry: SharedRegistry, store: Arc<dyn ConfigStore>) -> Self {
        NameServerService {
            registry,
            store,
            metrics: Arc::default(),
            auth: None,
        }
    }

    /// Requires broker registrations to be signed with the cluster secret.
    pub fn with_cluster_auth(mut self, auth: Option<Arc<ClusterAuth>>) -> Self {
        self.auth = auth;
        self
    }

    /// Counts into `metrics` (the nameserver's).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::NsMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs a blocking store call off the async workers.
    async fn with_store<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&dyn ConfigStore) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "config store failure");
                Err(ApiError::from(e).into())
            }
            Err(e) => Err(ApiError::internal(format!("config store task failed: {e}")).into()),
        }
    }
}

fn log_master_change(reg_broker: &str, replica_id: u64, change: &MasterChange) {
    match change {
        MasterChange::Unchanged => {}
        MasterChange::Elected { previous } => tracing::info!(
            broker = reg_broker,
            replica_id,
            previous_master = ?previous,
            "replica is now master of its group"
        ),
        MasterChange::StaleClaim {
            claimed_term,
            master_term,
        } => tracing::warn!(
            broker = reg_broker,
            replica_id,
            claimed_term,
            master_term,
            "master claim with a stale term recorded as slave"
        ),
        MasterChange::SteppedDown => tracing::info!(
            broker = reg_broker,
            replica_id,
            "master stepped down; group has no master"
        ),
    }
}

#[tonic::async_trait]
impl NameServer for NameServerService {
    async fn register_broker(
        &self,
        request: Request<RegisterBrokerRequest>,
    ) -> Result<Response<RegisterBrokerResponse>, Status> {
        if let Some(auth) = &self.auth {
            auth.check(
                request.metadata(),
                REGISTER,
                &request.get_ref().cluster_name,
            )?;
        }
        let reg = Registration::from_request(request.into_inner()).inspect_err(|e| {
            tracing::warn!(error = %e, "rejected broker registration");
        })?;
        let (broker, replica_id, address) =
            (reg.broker_name.clone(), reg.replica_id, reg.address.clone());
        let (outcome, expiry) = {
            let mut registry = self.registry.write();
            (registry.register(reg, Instant::now()), registry.expiry())
        };
        let outcome = outcome.inspect_err(|e| {
            tracing::warn!(error = %e, "rejected broker registration");
        })?;
        self.metrics.registrations.inc();
        if outcome.new_replica {
            tracing::info!(broker, replica_id, address, "broker registered");
        }
        log_master_change(&broker, replica_id, &outcome.master_change);
        Ok(Response::new(RegisterBrokerResponse {
            expiry_ms: duration_ms(expiry),
        }))
    }

    async fn unregister_broker(
        &self,
        request: Request<UnregisterBrokerRequest>,
    ) -> Result<Response<UnregisterBrokerResponse>, Status> {
        if let Some(auth) = &self.auth {
            auth.check(
                request.metadata(),
                UNREGISTER,
                &request.get_ref().cluster_name,
            )?;
        }
        let unreg = Unregistration::from_request(request.into_inner())?;
        let removed = self.registry.write().unregister(&unreg);
        if removed {
            tracing::info!(
                broker = unreg.broker_name,
                replica_id = unreg.replica_id,
                "broker unregistered"
            );
        } else {
            tracing::debug!(
                broker = unreg.broker_name,
                replica_id = unreg.replica_id,
                "unregister of an unknown broker ignored"
            );
        }
        Ok(Response::new(UnregisterBrokerResponse {}))
    }

    async fn get_topic_route(
        &self,
        request: Request<GetTopicRouteRequest>,
    ) -> Result<Response<TopicRoute>, Status> {
        let topic = request.into_inner().topic;
        let route = self.registry.read().topic_route(&topic);
        match &route {
            Ok(_) => self.metrics.routes_served.inc(),
            Err(_) => self.metrics.routes_refused.inc(),
        };
        let route = route?;
        Ok(Response::new(route))
    }

    async fn list_topics(
        &self,
        _request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let topics = self.registry.read().list_topics();
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn get_cluster_info(
        &self,
        _request: Request<GetClusterInfoRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        let info = self.registry.read().cluster_info(Instant::now());
        Ok(Response::new(info))
    }

    async fn put_config(
        &self,
        request: Request<PutConfigRequest>,
    ) -> Result<Response<PutConfigResponse>, Status> {
        if let Some(auth) = &self.auth {
            auth.check_admin(request.metadata(), PUT_CONFIG)?;
        }
        let req = request.into_inner();
        validate_key(&req.namespace, &req.key)?;
        validate_value(&req.value)?;
        self.with_store(move |s| s.put(&req.namespace, &req.key, &req.value))
            .await?;
        Ok(Response::new(PutConfigResponse {}))
    }

    async fn get_config(
        &self,
        request: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        let req = request.into_inner();
        validate_key(&req.namespace, &req.key)?;
        let value = self
            .with_store(move |s| s.get(&req.namespace, &req.key))
            .await?;
        Ok(Response::new(GetConfigResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn delete_config(
        &self,
        request: Request<DeleteConfigRequest>,
    ) -> Result<Response<DeleteConfigResponse>, Status> {
        if let Some(auth) = &self.auth {
            auth.check_admin(request.metadata(), DELETE_CONFIG)?;
        }
        let req = request.into_inner();
        validate_key(&req.namespace, &req.key)?;
        let existed = self
            .with_store(move |s| s.delete(&req.namespace, &req.key))
            .await?;
        Ok(Response::new(DeleteConfigResponse { existed }))
    }

    async fn list_config(
        &self,
        request: Request<ListConfigRequest>,
    ) -> Result<Response<ListConfigResponse>, Status> {
        let req = request.into_inner();
        validate_namespace(&req.namespace)?;
        let entries = self.with_store(move |s| s.list(&req.namespace)).await?;
        Ok(Response::new(ListConfigResponse {
            entries: entries
                .into_iter()
                .map(|(key, value)| ConfigEntry { key, value })
                .collect(),
        }))
    }
}
