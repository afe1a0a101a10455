//! TLS material for every listener and client: certificates and keys from PEM files (checked
//! at load, each error naming its file), reloaded when the files change (no restart to rotate),
//! rustls configurations for servers (optionally verifying clients: mutual TLS between
//! replicas) and clients, and a throwaway CA for local clusters and tests (`gen`).
//!
//! rustls with the aws-lc-rs provider (its default, with post-quantum key exchange), chosen
//! explicitly rather than installed process-wide.

mod files;
pub mod gen;
pub mod http;
pub mod identity;
pub mod net;
pub mod records;
mod reload;
pub mod split;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use files::{certified_key, load_certs, load_key, TlsError};
pub use reload::Reloading;

/// ALPN of gRPC (HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of the data port's framing.
pub const ALPN_DATA: &[u8] = b"sluice-data/1";

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| TlsError::Parse {
            path: ca.to_path_buf(),
            why: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// A server presenting `certs` (reloaded as they change). With `client_ca`, clients may show
/// a certificate issued by it (verified when shown); `require_client_cert` refuses those that
/// do not (mutual TLS).
pub fn server_config(
    certs: Arc<Reloading>,
    client_ca: Option<&Path>,
    require_client_cert: bool,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
            let verifier = if require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(config_error)?)
        }
        None if require_client_cert => {
            return Err(TlsError::Config(
                "client certificates are required but no CA file verifies them".into(),
            ))
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(certs);
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// A client trusting the servers `ca` issued, presenting `client` when given (reloaded as it
/// changes while its `watch` runs).
pub fn client_config(
    ca: &Path,
    client: Option<Arc<Reloading>>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots(ca)?);
    let mut cfg = match client {
        Some(c) => builder.with_client_cert_resolver(c),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

#[cfg(test)]
mod tests;
