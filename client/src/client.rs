//! The parts every producer, consumer and admin client shares: channels, nameservers, routes.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::v1::broker_client::BrokerClient;

use crate::config::ClientConfig;
use crate::data_port::DataPorts;
use crate::error::{Error, Result};
use crate::nameserver::NameServers;
use crate::pool::{ChannelPool, Transport};
use crate::route::{refresh_loop, RouteCache};

/// Aborts a background task when its owner goes away.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) struct ClientCore {
    pub(crate) config: ClientConfig,
    pub(crate) pool: Arc<ChannelPool>,
    pub(crate) data_ports: DataPorts,
    pub(crate) nameservers: Arc<NameServers>,
    pub(crate) routes: Arc<RouteCache>,
    _refresher: AbortOnDrop,
}

impl ClientCore {
    /// Must run inside a tokio runtime: channels and the route refresher are tasks on it.
    pub(crate) fn new(config: ClientConfig) -> Result<Arc<Self>> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config(
                "Sluice clients must be created inside a tokio runtime".into(),
            ));
        }
        let pool = Arc::new(ChannelPool::new(
            config.connect_timeout,
            config.signer.clone(),
            config.tls.clone(),
        ));
        let nameservers = Arc::new(NameServers::new(
            config.nameservers.clone(),
            pool.clone(),
            config.request_timeout,
        ));
        let routes = Arc::new(RouteCache::new(nameservers.clone()));
        let refresher = tokio::spawn(refresh_loop(
            Arc::downgrade(&routes),
            config.route_refresh_interval,
        ));
        Ok(Arc::new(ClientCore {
            data_ports: DataPorts::new(config.connect_timeout)
                .signed(config.signer.clone())
                .tls(config.tls.as_ref()),
            config,
            pool,
            nameservers,
            routes,
            _refresher: AbortOnDrop(refresher),
        }))
    }

    pub(crate) fn broker(&self, addr: &str) -> Result<BrokerClient<Transport>> {
        self.pool.broker(addr)
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.config.request_timeout
    }
}
