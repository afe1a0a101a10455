//! Runs the service: binds, serves gRPC, sweeps expired brokers, shuts down cleanly.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use sluice_proto::v1::name_server_server::NameServerServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt as _;

use crate::config::{Config, Timing};
use crate::registry::{duration_ms, Registry};
use crate::service::{NameServerService, SharedRegistry};
use crate::store::{ConfigStore, SledConfigStore, StoreError};

/// How long a stopping server waits for in-flight calls before dropping the connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write ready file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Server(#[from] tonic::transport::Error),
    #[error("{0}")]
    Task(String),
}

/// A nameserver bound to its address but not yet serving.
pub struct Nameserver {
    listener: TcpListener,
    local_addr: SocketAddr,
    registry: SharedRegistry,
    store: Arc<dyn ConfigStore>,
    timing: Timing,
    metrics: Arc<crate::metrics::NsMetrics>,
    auth: Option<Arc<crate::auth::ClusterAuth>>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Nameserver {
    /// Accepts only broker registrations signed with `secret` (the cluster secret), and
    /// config-store writes signed with it or by `admin`.
    pub fn with_cluster_secret(self, secret: Vec<u8>) -> Self {
        self.with_auth(Some(secret), None)
    }

    /// Registrations need the cluster secret (when given); config-store writes need the
    /// admin's signature or the cluster secret.
    pub fn with_auth(
        mut self,
        secret: Option<Vec<u8>>,
        admin: Option<sluice_proto::auth::Credentials>,
    ) -> Self {
        self.auth = (secret.is_some() || admin.is_some())
            .then(|| Arc::new(crate::auth::ClusterAuth::new(secret, admin)));
        self
    }

    /// Binds `listen` (`HOST:PORT`, port 0 for any free port).
    pub async fn bind(
        listen: &str,
        timing: Timing,
        store: Arc<dyn ConfigStore>,
    ) -> Result<Self, Error> {
        let bind_err = |source| Error::Bind {
            addr: listen.to_string(),
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Nameserver {
            listener,
            local_addr,
            registry: Arc::new(RwLock::new(Registry::new(timing.broker_expiry))),
            store,
            timing,
            metrics: Arc::default(),
            auth: None,
            tls: None,
        })
    }

    /// Serves over TLS with this configuration.
    pub fn with_tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The metrics and the registry their gauges read (for a metrics listener).
    pub fn metrics(&self) -> (Arc<crate::metrics::NsMetrics>, SharedRegistry) {
        (Arc::clone(&self.metrics), Arc::clone(&self.registry))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts serving and sweeping on the current runtime.
    pub fn start(self) -> RunningNameserver {
        let service = NameServerService::new(Arc::clone(&self.registry), Arc::clone(&self.store))
            .with_metrics(Arc::clone(&self.metrics))
            .with_cluster_auth(self.auth.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        // Small RPCs: answer without Nagle delay.
        let incoming = TcpListenerStream::new(self.listener).map(|conn| {
            let conn = conn?;
            conn.set_nodelay(true)?;
            Ok::<_, std::io::Error>(conn)
        });
        let incoming = sluice_proto::tls::net::serve_incoming(incoming, self.tls.clone());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(NameServerServer::new(service))
                .serve_with_incoming_shutdown(incoming, async {
                    // A dropped sender also means stop.
                    let _ = stop_rx.await;
                }),
        );
        let scanner = tokio::spawn(scan_loop(
            Arc::clone(&self.registry),
            self.timing.scan_interval,
            Arc::clone(&self.metrics),
        ));
        tracing::info!(
            addr = %self.local_addr,
            broker_expiry_ms = duration_ms(self.timing.broker_expiry),
            scan_interval_ms = duration_ms(self.timing.scan_interval),
            "nameserver serving"
        );
        RunningNameserver {
            local_addr: self.local_addr,
            server: Some(server),
            scanner,
            stop_tx: Some(stop_tx),
            store: self.store,
        }
    }
}

/// A serving nameserver. Dropping it aborts its tasks; [`RunningNameserver::stop`] shuts down
/// gracefully.
pub struct RunningNameserver {
    local_addr: SocketAddr,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    scanner: JoinHandle<()>,
    stop_tx: Option<oneshot::Sender<()>>,
    store: Arc<dyn ConfigStore>,
}

fn joined(
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), Error> {
    match result {
        Ok(r) => r.map_err(Error::from),
        Err(e) => Err(Error::Task(format!("gRPC server task failed: {e}"))),
    }
}

impl RunningNameserver {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Resolves if the gRPC server ends on its own (it only does on a fatal error).
    async fn server_exited(&mut self) -> Result<(), Error> {
        match self.server.as_mut() {
            Some(handle) => {
                let result = handle.await;
                self.server = None;
                joined(result)
            }
            None => std::future::pending().await,
        }
    }

    /// Stops accepting, lets in-flight calls finish (bounded), stops the sweeper and flushes the
    /// config store.
    pub async fn stop(mut self) -> Result<(), Error> {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        let mut result = Ok(());
        if let Some(mut handle) = self.server.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut handle).await {
                Ok(r) => result = joined(r),
                Err(_) => {
                    tracing::warn!("connections still open after the shutdown grace; closing them");
                    handle.abort();
                }
            }
        }
        self.scanner.abort();
        let store = Arc::clone(&self.store);
        let flushed = tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| Error::Task(format!("config store flush task failed: {e}")))?;
        flushed?;
        result
    }
}

impl Drop for RunningNameserver {
    fn drop(&mut self) {
        if let Some(handle) = &self.server {
            handle.abort();
        }
        self.scanner.abort();
    }
}

async fn scan_loop(
    registry: SharedRegistry,
    interval: Duration,
    metrics: Arc<crate::metrics::NsMetrics>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let expired = registry.write().expire(Instant::now());
        metrics.expiries.inc_by(expired.len() as u64);
        for e in expired {
            tracing::warn!(
                cluster = e.cluster_name,
                broker = e.broker_name,
                replica_id = e.replica_id,
                address = e.address,
                was_master = e.was_master,
                silent_ms = duration_ms(e.silent_for),
                "broker expired"
            );
        }
    }
}

/// Writes `addr` to `path` through a temporary file and a rename, so a reader never sees a
/// partial address.
pub fn write_ready_file(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "ready file has no file name",
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(addr.to_string().as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Prints the one startup line scripts wait for. Kept out of `run` so its future stays `Send`
/// (a stdout lock must not live across an await).
fn announce(addr: SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) =
        writeln!(stdout, "sluice-nameserver listening on {addr}").and_then(|()| stdout.flush())
    {
        // Nobody reading stdout is not a reason to stop serving.
        tracing::warn!(error = %e, "cannot write the listening line to stdout");
    }
}

/// The whole nameserver process: opens the config store under `data_dir`, binds, announces the
/// address (stdout line and ready file), serves until `shutdown` resolves, then stops cleanly.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let kv_dir = config.data_dir.join("kv");
    let store = tokio::task::spawn_blocking(move || SledConfigStore::open(&kv_dir))
        .await
        .map_err(|e| Error::Task(format!("config store open task failed: {e}")))??;
    let mut nameserver = Nameserver::bind(&config.listen, config.timing, Arc::new(store)).await?;
    let read = |p: &std::path::Path| sluice_proto::auth::read_secret_file(p).map_err(Error::Task);
    let secret = config
        .cluster_secret_file
        .as_deref()
        .map(read)
        .transpose()?;
    let admin = match &config.admin {
        Some((key, file)) => Some(sluice_proto::auth::Credentials {
            access_key: key.clone(),
            secret: read(file)?,
        }),
        None => None,
    };
    match &secret {
        Some(_) => tracing::info!("broker registrations must be signed with the cluster secret"),
        None if !nameserver.local_addr().ip().is_loopback() => tracing::warn!(
            "no cluster secret on a non-loopback address: anyone who reaches this nameserver can register brokers"
        ),
        None => {}
    }
    nameserver = nameserver.with_auth(secret, admin);
    // The metrics endpoint's TLS, when the gRPC port has it.
    let mut http_tls = None;
    match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => {
            let bad = |e: sluice_proto::tls::TlsError| Error::Task(e.to_string());
            let certs = sluice_proto::tls::Reloading::load(cert, key).map_err(bad)?;
            // Reloaded as the files change, for as long as the process runs.
            let _watch = certs.watch(std::time::Duration::from_secs(1));
            let server_for = |alpn: &[u8]| {
                sluice_proto::tls::server_config(
                    certs.clone(),
                    config.tls_ca_file.as_deref(),
                    false,
                    &[alpn],
                )
                .map(Arc::new)
                .map_err(bad)
            };
            nameserver = nameserver.with_tls(server_for(sluice_proto::tls::ALPN_H2)?);
            http_tls = Some(server_for(sluice_proto::tls::http::ALPN_HTTP1)?);
            tracing::info!("serving over TLS");
        }
        (None, None) if config.tls_ca_file.is_some() => {
            return Err(Error::Task(
                "tls_ca_file without tls_cert_file and tls_key_file: TLS needs all three".into(),
            ))
        }
        (None, None) if !nameserver.local_addr().ip().is_loopback() => tracing::warn!(
            "no TLS on a non-loopback address: registrations and routes travel in clear"
        ),
        (None, None) => {}
        _ => {
            return Err(Error::Task(
                "tls_cert_file and tls_key_file go together".into(),
            ))
        }
    }
    let metrics_task = match &config.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    addr: addr.clone(),
                    source,
                })?;
            let (metrics, registry) = nameserver.metrics();
            tracing::info!(addr, "metrics at /metrics");
            Some(tokio::spawn(crate::metrics::serve(
                listener, http_tls, metrics, registry,
            )))
        }
    };
    let mut running = nameserver.start();
    let addr = running.local_addr();

    announce(addr);
    if let Some(path) = &config.ready_file {
        if let Err(source) = write_ready_file(path, addr) {
            let _ = running.stop().await;
            return Err(Error::ReadyFile {
                path: path.clone(),
                source,
            });
        }
    }

    let result = tokio::select! {
        () = shutdown => {
            tracing::info!("shutdown requested");
            Ok(())
        }
        r = running.server_exited() => r,
    };
    let stopped = running.stop().await;
    if let Some(m) = metrics_task {
        m.abort();
    }
    tracing::info!("nameserver stopped");
    result.and(stopped)
}
