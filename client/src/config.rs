//! Settings shared by producers, consumers and the admin client.

use std::sync::Arc;
use std::time::Duration;

pub use sluice_proto::auth::Credentials;
use sluice_proto::auth::Signer;

use crate::error::{Error, Result};

/// Where the nameservers are and how patient to be with servers.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) nameservers: Vec<String>,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) route_refresh_interval: Duration,
    pub(crate) use_data_port: bool,
    /// Signs every request (gRPC and data port) when set.
    pub(crate) signer: Option<Arc<Signer>>,
    /// Reaches servers over TLS when set.
    pub(crate) tls: Option<sluice_proto::tls::net::Connector>,
}

impl ClientConfig {
    /// A config with the given nameserver addresses (`host:port`) and default timeouts:
    /// requests 5 s, connects 3 s, route refresh every 30 s.
    pub fn new<I, S>(nameservers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            nameservers: nameservers.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            route_refresh_interval: Duration::from_secs(30),
            use_data_port: true,
            signer: None,
            tls: None,
        }
    }

    /// Parses a comma-separated nameserver list such as `"10.0.0.1:9876,10.0.0.2:9876"`.
    pub fn from_list(list: &str) -> Result<Self> {
        let config = Self::new(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
        config.validate()?;
        Ok(config)
    }

    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn route_refresh_interval(mut self, interval: Duration) -> Self {
        self.route_refresh_interval = interval;
        self
    }

    /// Send through a broker's data port (framed TCP) when the route names one; on by default.
    /// Off, every call uses gRPC.
    pub fn use_data_port(mut self, on: bool) -> Self {
        self.use_data_port = on;
        self
    }

    /// Sign every request as this user (brokers with authentication on refuse unsigned ones).
    /// The secret never leaves the process: requests carry an HMAC signature.
    pub fn credentials(mut self, creds: Credentials) -> Self {
        self.signer = Some(Arc::new(Signer::new(creds, rand::random())));
        self
    }

    /// Reach every server over TLS, trusting the certificates `ca_file` (PEM) issued, and
    /// presenting `client` (certificate and key files) when the servers ask for one. The
    /// data port is reached over TLS too.
    pub fn tls(
        mut self,
        ca_file: &std::path::Path,
        client: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self> {
        use sluice_proto::tls;
        let bad = |e: tls::TlsError| Error::Config(e.to_string());
        let client = match client {
            Some((cert, key)) => Some(tls::Reloading::load(cert, key).map_err(bad)?),
            None => None,
        };
        let cfg = tls::client_config(ca_file, client, &[tls::ALPN_H2]).map_err(bad)?;
        self.tls = Some(tls::net::Connector::new(Arc::new(cfg)));
        Ok(self)
    }

    /// The access key requests are signed as, if any.
    pub fn access_key(&self) -> Option<&str> {
        self.signer.as_deref().map(Signer::access_key)
    }

    pub fn nameservers(&self) -> &[String] {
        &self.nameservers
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.nameservers.is_empty() {
            return Err(Error::Config("no nameserver address given".into()));
        }
        for addr in &self.nameservers {
            validate_addr(addr)?;
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::Config("timeouts must be above zero".into()));
        }
        if self.route_refresh_interval.is_zero() {
            return Err(Error::Config(
                "route refresh interval must be above zero".into(),
            ));
        }
        Ok(())
    }
}

/// Checks that an address looks like `host:port` with a numeric port.
pub(crate) fn validate_addr(addr: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidAddress {
            addr: addr.to_string(),
            reason: reason.to_string(),
        })
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad("expected host:port");
    };
    if host.is_empty() {
        return bad("empty host");
    }
    if host.contains('/') || host.contains(char::is_whitespace) {
        return bad("host contains '/' or spaces");
    }
    if port.parse::<u16>().is_err() {
        return bad("port is not a number in 0..=65535");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameserver_lists() {
        let c = ClientConfig::from_list(" 127.0.0.1:9876, ns2:1 ,").unwrap();
        assert_eq!(c.nameservers(), ["127.0.0.1:9876", "ns2:1"]);
        assert!(ClientConfig::from_list("").is_err());
        assert!(ClientConfig::from_list("nohost").is_err());
        assert!(ClientConfig::from_list("h:99999").is_err());
        assert!(ClientConfig::from_list("http://h:1").is_err());
        assert!(ClientConfig::from_list("[::1]:9876").is_ok());
    }
}
