//! Who the chaos tool is on a secured cluster: a user for its clients and probes (a super
//! user: the final check reads every queue), and the cluster secret for fault injection
//! (replica traffic, which brokers take from the cluster only). Set once at start.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use sluice_client::Credentials;
use sluice_proto::auth::{read_secret_file, Signer, AUTH_HEADER};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct AuthArgs {
    /// Sign as this user (secret from SLUICE_SECRET_KEY or --secret-key-file).
    #[arg(long, global = true, env = "SLUICE_ACCESS_KEY")]
    pub access_key: Option<String>,
    /// File holding the secret of --access-key.
    #[arg(long, global = true, env = "SLUICE_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// File holding the cluster secret, for fault injection on a secured cluster.
    #[arg(long, global = true, env = "SLUICE_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Reach the servers over TLS, trusting this CA file (PEM).
    #[arg(long, global = true, env = "SLUICE_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
}

struct Identity {
    user: Option<(Credentials, Signer)>,
    cluster_secret: Option<Vec<u8>>,
    tls_ca_file: Option<PathBuf>,
    tls: Option<sluice_proto::tls::net::Connector>,
}

static IDENTITY: OnceLock<Identity> = OnceLock::new();

/// Reads the secrets; call once before anything talks to the cluster.
pub fn init(args: &AuthArgs) -> Result<()> {
    let user = match args.access_key.as_deref().filter(|k| !k.is_empty()) {
        None => None,
        Some(key) => {
            let secret = match (&args.secret_key_file, std::env::var("SLUICE_SECRET_KEY")) {
                (Some(f), _) => read_secret_file(f).map_err(|e| anyhow!(e))?,
                (None, Ok(s)) if !s.is_empty() => s.into_bytes(),
                _ => {
                    return Err(anyhow!(
                        "--access-key needs SLUICE_SECRET_KEY or --secret-key-file"
                    ))
                }
            };
            let creds = Credentials {
                access_key: key.to_string(),
                secret,
            };
            Some((creds.clone(), Signer::new(creds, rand::random())))
        }
    };
    let cluster_secret = match &args.cluster_secret_file {
        Some(f) => Some(read_secret_file(f).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let tls = match &args.tls_ca_file {
        Some(ca) => {
            let cfg = sluice_proto::tls::client_config(ca, None, &[sluice_proto::tls::ALPN_H2])
                .map_err(|e| anyhow!(e))?;
            Some(sluice_proto::tls::net::Connector::new(std::sync::Arc::new(
                cfg,
            )))
        }
        None => None,
    };
    let _ = IDENTITY.set(Identity {
        user,
        cluster_secret,
        tls_ca_file: args.tls_ca_file.clone(),
        tls,
    });
    Ok(())
}

/// `config` signing as the user and reaching the servers over TLS, as given.
pub fn configure(config: sluice_client::ClientConfig) -> Result<sluice_client::ClientConfig> {
    let config = match credentials() {
        Some(c) => config.credentials(c),
        None => config,
    };
    Ok(match tls_ca_file() {
        Some(ca) => config.tls(&ca, None)?,
        None => config,
    })
}

/// The TLS connector for the probes' own channels, when the cluster has TLS.
pub fn tls() -> Option<sluice_proto::tls::net::Connector> {
    IDENTITY.get()?.tls.clone()
}

/// The CA file, for the client library.
pub fn tls_ca_file() -> Option<PathBuf> {
    IDENTITY.get()?.tls_ca_file.clone()
}

/// The user's credentials, for the client library.
pub fn credentials() -> Option<Credentials> {
    IDENTITY.get()?.user.as_ref().map(|(c, _)| c.clone())
}

fn with_header<T>(mut req: tonic::Request<T>, header: Option<String>) -> tonic::Request<T> {
    if let Some(v) = header.and_then(|h| h.parse().ok()) {
        req.metadata_mut().insert(AUTH_HEADER, v);
    }
    req
}

/// `msg` as a request for `method` at `addr`, signed as the user when there is one.
pub fn signed<T>(msg: T, addr: &str, method: &str) -> tonic::Request<T> {
    let resource = sluice_proto::auth::resource(addr, method);
    let header = IDENTITY
        .get()
        .and_then(|i| i.user.as_ref())
        .map(|(_, s)| s.sign(&resource, sluice_client::time::now_ms()));
    with_header(tonic::Request::new(msg), header)
}

/// `msg` as a request for `method` at `addr`, signed with the cluster secret as `cluster`.
pub fn cluster_signed<T>(msg: T, addr: &str, method: &str, cluster: &str) -> tonic::Request<T> {
    let resource = sluice_proto::auth::resource(addr, method);
    let header = IDENTITY
        .get()
        .and_then(|i| i.cluster_secret.clone())
        .map(|secret| {
            let creds = Credentials {
                access_key: cluster.to_string(),
                secret,
            };
            Signer::new(creds, rand::random()).sign(&resource, sluice_client::time::now_ms())
        });
    with_header(tonic::Request::new(msg), header)
}

/// Whether fault injection needs the cluster's name (a cluster secret is set).
pub fn has_cluster_secret() -> bool {
    IDENTITY.get().is_some_and(|i| i.cluster_secret.is_some())
}
