//! Keeps this broker registered with every nameserver: at start, every heartbeat interval,
//! at once when topics change, and unregistered on clean shutdown.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{RegisterBrokerRequest, Role, UnregisterBrokerRequest};
use tokio::sync::{watch, Notify};
use tonic::transport::{Channel, Endpoint};

use crate::service::Identity;
use crate::store::MessageStore;
use crate::topics::TopicTable;

const RPC_TIMEOUT: Duration = Duration::from_secs(3);
const FIRST_RETRY: Duration = Duration::from_millis(500);

pub struct Registrar {
    pub identity: Identity,
    pub nameservers: Vec<String>,
    pub interval: Duration,
    pub topics: Arc<TopicTable>,
    pub store: MessageStore,
    pub trigger: Arc<Notify>,
}

struct Target {
    addr: String,
    client: NameServerClient<Channel>,
    /// Whether the last attempt failed, so only changes of state are logged loudly.
    failing: bool,
}

impl Registrar {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut targets = Vec::new();
        for addr in &self.nameservers {
            match Endpoint::from_shared(format!("http://{addr}")) {
                Ok(e) => targets.push(Target {
                    addr: addr.clone(),
                    client: NameServerClient::new(
                        e.connect_timeout(RPC_TIMEOUT)
                            .timeout(RPC_TIMEOUT)
                            .connect_lazy(),
                    ),
                    failing: false,
                }),
                Err(e) => tracing::error!(nameserver = %addr, "invalid nameserver address: {e}"),
            }
        }
        let mut retry = FIRST_RETRY;
        loop {
            let all_ok = self.register_all(&mut targets).await;
            let wait = if all_ok {
                retry = FIRST_RETRY;
                self.interval
            } else {
                // Retry a missing nameserver sooner than the heartbeat, backing off up to it.
                let w = retry.min(self.interval);
                retry = (retry * 2).min(self.interval);
                w
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.trigger.notified() => {}
                _ = shutdown.changed() => break,
            }
        }
        self.unregister_all(&mut targets).await;
    }

    fn request(&self) -> RegisterBrokerRequest {
        RegisterBrokerRequest {
            cluster_name: self.identity.cluster_name.clone(),
            broker_name: self.identity.broker_name.clone(),
            replica_id: self.identity.replica_id,
            role: Role::Master as i32,
            address: self.identity.address.clone(),
            topics: self.topics.list(),
            term: 0,
            max_offset: self.store.commit_log_range().1,
        }
    }

    async fn register_all(&self, targets: &mut [Target]) -> bool {
        let req = self.request();
        let calls = targets.iter_mut().map(|t| {
            let req = req.clone();
            async move {
                let r = t.client.register_broker(req).await;
                match r {
                    Ok(_) => {
                        if t.failing {
                            tracing::info!(nameserver = %t.addr, "registered with nameserver again");
                        }
                        t.failing = false;
                        true
                    }
                    Err(e) => {
                        if !t.failing {
                            tracing::warn!(nameserver = %t.addr, "cannot register with nameserver: {}; retrying", e.message());
                        } else {
                            tracing::debug!(nameserver = %t.addr, "still cannot register: {}", e.message());
                        }
                        t.failing = true;
                        false
                    }
                }
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .all(|ok| ok)
    }

    async fn unregister_all(&self, targets: &mut [Target]) {
        let req = UnregisterBrokerRequest {
            cluster_name: self.identity.cluster_name.clone(),
            broker_name: self.identity.broker_name.clone(),
            replica_id: self.identity.replica_id,
            address: self.identity.address.clone(),
        };
        let calls = targets.iter_mut().map(|t| {
            let req = req.clone();
            async move {
                if let Err(e) = t.client.unregister_broker(req).await {
                    tracing::warn!(nameserver = %t.addr, "unregister failed: {}", e.message());
                }
            }
        });
        futures::future::join_all(calls).await;
    }
}
