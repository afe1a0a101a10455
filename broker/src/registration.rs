//! Keeps this broker registered with every nameserver: at start, every heartbeat interval,
//! at once when topics change, and unregistered on clean shutdown.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{RegisterBrokerRequest, Role, UnregisterBrokerRequest};
use tokio::sync::{watch, Notify};
use tonic::transport::{Channel, Endpoint};

use crate::replication::MasterState;
use crate::service::Identity;
use crate::state::TopicTable;
use crate::store::MessageStore;

const RPC_TIMEOUT: Duration = Duration::from_secs(3);
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// A nameserver that came back (restart) is found again within this, whatever the heartbeat.
const MAX_RETRY: Duration = Duration::from_secs(5);

pub struct Registrar {
    pub identity: Identity,
    pub nameservers: Vec<String>,
    pub interval: Duration,
    pub topics: Arc<TopicTable>,
    pub store: MessageStore,
    pub trigger: Arc<Notify>,
    /// A replicated broker's role: registered as MASTER only while it is the group's master,
    /// and re-registered at once when that changes. `None`: standalone, always MASTER.
    pub role: Option<watch::Receiver<MasterState>>,
    /// Told once the first registration round is over (whatever its outcome), so the broker
    /// reports itself ready only once the nameservers that answer know it.
    pub first_round: Option<tokio::sync::oneshot::Sender<bool>>,
    /// Signs each registration with the cluster secret (access key: the cluster), if set.
    pub signer: Option<std::sync::Arc<sluice_proto::auth::Signer>>,
    /// Reaches the nameservers over TLS, when set.
    pub tls: Option<sluice_proto::tls::net::Connector>,
}

impl Registrar {
    /// `req` as a request, signed for `method` when there is a cluster secret.
    fn signed<T>(&self, req: T, method: &str) -> tonic::Request<T> {
        let mut r = tonic::Request::new(req);
        if let Some(signer) = &self.signer {
            // Nameserver signatures name no server (empty target).
            let header = signer.sign(method, crate::store::now_ms());
            match header.parse() {
                Ok(v) => {
                    r.metadata_mut().insert(sluice_proto::auth::AUTH_HEADER, v);
                }
                Err(e) => {
                    tracing::error!(error = %e, "registration signature is not valid metadata")
                }
            }
        }
        r
    }
}

struct Target {
    addr: String,
    client: NameServerClient<Channel>,
    /// Whether the last attempt failed, so only changes of state are logged loudly.
    failing: bool,
}

impl Registrar {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut targets = Vec::new();
        for addr in &self.nameservers {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            match Endpoint::from_shared(format!("{scheme}://{addr}")) {
                Ok(e) => {
                    let e = e.connect_timeout(RPC_TIMEOUT).timeout(RPC_TIMEOUT);
                    let channel = match &self.tls {
                        Some(c) => e.connect_with_connector_lazy(c.clone()),
                        None => e.connect_lazy(),
                    };
                    targets.push(Target {
                        addr: addr.clone(),
                        client: NameServerClient::new(channel),
                        failing: false,
                    })
                }
                Err(e) => tracing::error!(nameserver = %addr, "invalid nameserver address: {e}"),
            }
        }
        let mut retry = FIRST_RETRY;
        let mut role = self.role.clone();
        loop {
            let req = self.request();
            let registered_master = req.role == Role::Master as i32;
            let all_ok = self.register_all(&mut targets, req).await;
            if let Some(tx) = self.first_round.take() {
                let _ = tx.send(all_ok);
            }
            let wait = if all_ok {
                retry = FIRST_RETRY;
                self.interval
            } else {
                // Retry a missing nameserver sooner than the heartbeat, backing off up to it.
                let w = retry.min(self.interval);
                retry = (retry * 2).min(self.interval).min(MAX_RETRY);
                w
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.trigger.notified() => {}
                r = role_changed(&mut role, registered_master) => {
                    if !r {
                        // The replica stopped; keep announcing the last role until shutdown.
                        role = None;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        self.unregister_all(&mut targets).await;
    }

    fn request(&self) -> RegisterBrokerRequest {
        let (role, term) = match &self.role {
            None => (Role::Master, 0),
            Some(r) => {
                let m = *r.borrow();
                (
                    if m.is_master {
                        Role::Master
                    } else {
                        Role::Slave
                    },
                    m.term,
                )
            }
        };
        RegisterBrokerRequest {
            cluster_name: self.identity.cluster_name.clone(),
            broker_name: self.identity.broker_name.clone(),
            replica_id: self.identity.replica_id,
            role: role as i32,
            address: self.identity.address.clone(),
            topics: self.topics.list(),
            term,
            max_offset: self.store.commit_log_range().1,
            data_address: self.identity.data_address.clone(),
        }
    }

    /// Registers with every nameserver at once: calls run concurrently, so one slow or dead
    /// nameserver does not delay the others.
    async fn register_all(&self, targets: &mut [Target], req: RegisterBrokerRequest) -> bool {
        let calls = targets.iter_mut().map(|t| {
            let req = self.signed(req.clone(), "/sluice.v1.NameServer/RegisterBroker");
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
            let req = self.signed(req.clone(), "/sluice.v1.NameServer/UnregisterBroker");
            async move {
                if let Err(e) = t.client.unregister_broker(req).await {
                    tracing::warn!(nameserver = %t.addr, "unregister failed: {}", e.message());
                }
            }
        });
        futures::future::join_all(calls).await;
    }
}

/// Resolves when MASTER/SLAVE differs from what was last registered (false when the replica
/// is gone); never without a replica.
async fn role_changed(role: &mut Option<watch::Receiver<MasterState>>, registered: bool) -> bool {
    let Some(rx) = role else {
        return std::future::pending().await;
    };
    loop {
        if rx.borrow_and_update().is_master != registered {
            return true;
        }
        if rx.changed().await.is_err() {
            return false;
        }
    }
}
