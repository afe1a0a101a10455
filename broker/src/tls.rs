//! The broker's TLS: its certificate (reloaded when the files change) for the gRPC port, the
//! data port and the metrics endpoint, and the client side it uses towards its peers and the nameservers.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::tls::identity::PeerNames;
use sluice_proto::tls::{self, http::ALPN_HTTP1, net::Connector, Reloading, ALPN_DATA, ALPN_H2};

use crate::config::{BrokerConfig, ConfigError};

/// How often the certificate files are checked for a rotation.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

pub struct BrokerTls {
    pub server: Arc<rustls::ServerConfig>,
    /// The data port's: the same certificate and client checks, its own ALPN.
    pub data_server: Arc<rustls::ServerConfig>,
    /// The metrics endpoint's (HTTP/1.1).
    pub http_server: Arc<rustls::ServerConfig>,
    /// Towards peers and nameservers (presenting this broker's certificate with mutual TLS).
    pub connector: Connector,
    _watch: tokio::task::JoinHandle<()>,
}

impl Drop for BrokerTls {
    fn drop(&mut self) {
        self._watch.abort();
    }
}

/// TLS from the configuration: `None` when no certificate is configured.
pub fn from_config(c: &BrokerConfig) -> Result<Option<BrokerTls>, ConfigError> {
    let bad = |e: tls::TlsError| ConfigError::Invalid(e.to_string());
    let (cert, key) = match (&c.tls_cert_file, &c.tls_key_file) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) if c.tls_ca_file.is_none() => return Ok(None),
        _ => {
            return Err(ConfigError::Invalid(
                "TLS needs tls_cert_file, tls_key_file and tls_ca_file together".into(),
            ))
        }
    };
    let Some(ca) = &c.tls_ca_file else {
        return Err(ConfigError::Invalid(
            "TLS needs tls_ca_file (the CA of the other nodes' certificates)".into(),
        ));
    };
    let certs = Reloading::load(cert, key).map_err(bad)?;
    if c.tls_client_cert_required {
        own_host_covered(c, cert, &certs)?;
    }
    let server_for = |alpn: &[u8]| {
        tls::server_config(certs.clone(), Some(ca), c.tls_client_cert_required, &[alpn])
            .map(Arc::new)
            .map_err(bad)
    };
    // Shown to peers only where they ask for it: a certificate issued for servers alone
    // would fail their client check.
    let shown = c.tls_client_cert_required.then(|| certs.clone());
    let client = tls::client_config(ca, shown, &[ALPN_H2]).map_err(bad)?;
    let connector = Connector::new(Arc::new(client));
    Ok(Some(BrokerTls {
        server: server_for(ALPN_H2)?,
        data_server: server_for(ALPN_DATA)?,
        http_server: server_for(ALPN_HTTP1)?,
        connector,
        _watch: certs.watch(RELOAD_CHECK),
    }))
}

/// Under mutual TLS a replica's peers take its Raft traffic only over a certificate for its
/// host as `peers` names it: a certificate that does not name it is refused at start rather
/// than by every peer later.
fn own_host_covered(
    c: &BrokerConfig,
    file: &std::path::Path,
    certs: &Reloading,
) -> Result<(), ConfigError> {
    let Some(me) = c.peers.get(&c.replica_id) else {
        return Ok(());
    };
    let host = me.rsplit_once(':').map_or(me.as_str(), |(h, _)| h);
    let names = PeerNames::of_chain(Some(&certs.current().cert));
    if names.covers(host) {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "{}: issued for {:?}, not for this replica's host {host:?} (peers.{} = {me:?}); under \
         tls_client_cert_required the peers would refuse its Raft traffic (names match exactly: \
         no wildcards, a DNS name does not match an IP address)",
        file.display(),
        names.names(),
        c.replica_id
    )))
}
