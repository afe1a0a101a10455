//! Wires the broker together: store, metadata, gRPC service, nameserver registration, and an
//! orderly shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::v1::access_server::AccessServer;
use sluice_proto::v1::broker_server::BrokerServer;
use sluice_proto::v1::replication_server::ReplicationServer;
use tokio::sync::{watch, Notify};

use crate::config::BrokerConfig;
use crate::groups::ConsumerGroups;
use crate::messaging::read_hint::{ReadHintSettings, ReadHints};
use crate::messaging::timer::Timers;
use crate::messaging::WritePath;
use crate::meta::{MetaStore, SledMeta, WriteBehind};
use crate::registration::Registrar;
use crate::replication::{GroupSettings, ReplicaGroup, StoreBackend};
use crate::service::convert::IdGenerator;
use crate::service::{BrokerService, Identity, ServiceLimits};
use crate::state::StateMachine;
use crate::store::MessageStore;

/// How long state writes may stay in memory before they go to sled as one batch, and how many
/// keys they may reach meanwhile (see `meta::WriteBehind`).
const META_WRITE_BEHIND: Duration = Duration::from_millis(100);
const META_WRITE_BEHIND_KEYS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("metadata: {0}")]
    Meta(#[from] crate::meta::MetaError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Replica(#[from] crate::replication::GroupError),
    #[error("{0}")]
    Api(#[from] sluice_proto::ApiError),
}

/// HTTP/2 flow-control windows of every connection the broker accepts.
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// Largest HTTP/2 frame this broker accepts (the default is 16 KiB): a batch of sends or a
/// replication append arrives in a few large DATA frames instead of one per 16 KiB, each a
/// separate read, parse and copy.
pub const MAX_FRAME: u32 = 1 << 20;
/// Longest the broker waits for its first nameserver registration before it reports ready.
const FIRST_REGISTRATION_WAIT: Duration = Duration::from_secs(5);

/// Runs a broker until `shutdown` resolves. `on_ready` gets the bound address once the broker
/// serves requests.
pub async fn run(
    config: BrokerConfig,
    on_ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen.clone(),
        source,
    })?;
    let replica_config = config.replica_config()?;
    let address = match &config.advertise {
        Some(a) => a.clone(),
        // Peers and clients reach a replica at its address in the peers table.
        None if replica_config.is_some() => config
            .peers
            .get(&config.replica_id)
            .cloned()
            .unwrap_or_else(|| local.to_string()),
        None if local.ip().is_unspecified() => {
            tracing::warn!(
                "listening on {local}; announcing 127.0.0.1 (set `advertise` for other hosts)"
            );
            format!("127.0.0.1:{}", local.port())
        }
        None => local.to_string(),
    };
    let tls = crate::tls::from_config(&config)?;
    if tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!("listening on {local} without TLS: traffic can be read and altered on the way (set tls_cert_file, see docs/security.md)");
    }
    let data_listener = if config.data_port_enable {
        let addr = SocketAddr::new(local.ip(), config.data_port);
        let bind_err = |source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        };
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(bind_err)?;
        let bound = l.local_addr().map_err(bind_err)?;
        Some((l, crate::data_port::advertised(&address, bound)))
    } else {
        None
    };
    std::fs::create_dir_all(&config.data_dir).map_err(crate::store::StoreError::Io)?;
    let store = MessageStore::open(config.store_config(&address)).await?;
    let sled: Arc<dyn MetaStore> = Arc::new(SledMeta::open(&config.data_dir.join("meta"))?);
    let meta: Arc<dyn MetaStore> =
        WriteBehind::new(sled, META_WRITE_BEHIND, META_WRITE_BEHIND_KEYS);
    let reregister = Arc::new(Notify::new());
    let state = Arc::new(StateMachine::open(meta.clone(), reregister.clone())?);
    let topics = state.topics.clone();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let targets = vec![address.clone(), local.to_string()];
    let data_targets = data_listener
        .as_ref()
        .map(|(l, advertised)| {
            let mut t = vec![advertised.clone()];
            t.extend(l.local_addr().ok().map(|a| a.to_string()));
            t
        })
        .unwrap_or_default();
    let access = open_access(&config, &state, &metrics, local, (targets, data_targets)).await?;
    let cluster_signer = access
        .cluster_credentials()
        .map(|c| Arc::new(sluice_proto::auth::Signer::new(c, rand::random())));
    let identity = Identity {
        cluster_name: config.cluster_name.clone(),
        broker_name: config.broker_name.clone(),
        replica_id: config.replica_id,
        address: address.clone(),
        data_address: data_listener
            .as_ref()
            .map(|(_, a)| a.clone())
            .unwrap_or_default(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (replica, replication) = match replica_config {
        None => (None, None),
        Some(rc) => {
            let settings = GroupSettings {
                replica: rc,
                broker_name: config.broker_name.clone(),
                peers: config.peers.clone(),
                fault_injection: config.enable_fault_injection,
                propose_timeout: Duration::from_millis(config.sync_flush_timeout_ms.max(1_000)),
                data_address: identity.data_address.clone(),
                signer: cluster_signer.clone(),
                access: Some(access.clone()),
                tls: tls.as_ref().map(|t| t.connector.clone()),
                peer_certificates: tls.is_some() && config.tls_client_cert_required,
            };
            let backend = StoreBackend::new(store.clone(), &address);
            let (group, service) =
                ReplicaGroup::start(settings, backend, state.clone(), store.clone())?;
            (Some(group), Some(Arc::new(service)))
        }
    };
    let read_hints = ReadHints::start(
        ReadHintSettings::from_config(&config),
        store.clone(),
        replica.clone(),
        stop_rx.clone(),
    );
    let data_port_stats = Arc::new(crate::data_port::DataPortStats::default());
    let write = match &replica {
        Some(group) => WritePath::Replicated {
            group: group.clone(),
            state: state.clone(),
        },
        None => WritePath::standalone(store.clone(), state.clone()),
    };
    // Counted only when served.
    let metered = config.metrics_listen.as_ref().map(|_| metrics.clone());
    let timers = Timers::new(
        config.timer_settings()?,
        store.clone(),
        write.clone(),
        metered.clone(),
    );
    // Standalone, this broker is always its own master; the sender lives as long as the task.
    let standalone_master = crate::messaging::leader::always_master();
    let timer_task = crate::messaging::leader::spawn(
        "timers",
        match &replica {
            Some(group) => group.subscribe_master(),
            None => standalone_master.subscribe(),
        },
        stop_rx.clone(),
        {
            let timers = timers.clone();
            move |stop| timers.clone().run(stop)
        },
    );
    let retries =
        crate::messaging::retry::Retries::new(store.clone(), write.clone(), timers.clone());
    let idempotence = crate::messaging::idempotence::Idempotence::new(
        write.clone(),
        store.clone(),
        Duration::from_millis(config.sync_flush_timeout_ms.max(1_000)),
    );
    let expiry_task = crate::messaging::leader::spawn(
        "producer-expiry",
        match &replica {
            Some(group) => group.subscribe_master(),
            None => standalone_master.subscribe(),
        },
        stop_rx.clone(),
        {
            let idempotence = idempotence.clone();
            let expiry = config.producer_expiry()?;
            move |stop| idempotence.clone().run_expiry(expiry, stop)
        },
    );
    if replica.is_none() {
        let n = crate::messaging::standalone::recover(&store, &state)?;
        if n > 0 {
            tracing::info!(
                batches = n,
                "applied the state of writes made before the restart"
            );
        }
    }
    let transactions = crate::messaging::txn::Transactions::new(
        write.clone(),
        store.clone(),
        config.transaction_settings()?,
    );
    let check_task = crate::messaging::leader::spawn(
        "transaction-checks",
        match &replica {
            Some(group) => group.subscribe_master(),
            None => standalone_master.subscribe(),
        },
        stop_rx.clone(),
        {
            let transactions = transactions.clone();
            move |stop| transactions.clone().run_checks(stop)
        },
    );
    let floor_task = tokio::spawn(transactions.clone().run_floor(stop_rx.clone()));
    let producing = crate::messaging::produce::Producing::new(
        write.clone(),
        timers.clone(),
        idempotence,
        transactions,
        crate::messaging::produce::SendSettings {
            auto_create_topics: config.auto_create_topics,
            default_queues: config.default_queues,
            broker_name: config.broker_name.clone(),
            accept_traces: config.trace_enabled,
        },
    );
    let trace_task = config.trace_enabled.then(|| {
        crate::messaging::leader::spawn(
            "trace-topic",
            match &replica {
                Some(group) => group.subscribe_master(),
                None => standalone_master.subscribe(),
            },
            stop_rx.clone(),
            {
                let write = write.clone();
                let queues = config.trace_queues;
                move |stop| crate::messaging::trace::ensure_topic(write.clone(), queues, stop)
            },
        )
    });
    let consuming = crate::messaging::consume::Consuming::new(
        store.clone(),
        write.clone(),
        read_hints,
        config.replica_id,
        stop_rx.clone(),
    );
    let (producing, consuming, retries) = match config.metrics_listen {
        Some(_) => (
            producing.with_metrics(metrics.clone()),
            consuming.with_metrics(metrics.clone()),
            retries.with_metrics(metrics.clone()),
        ),
        None => (producing, consuming, retries),
    };
    if let (Some(_), Some(group)) = (&config.metrics_listen, &replica) {
        tokio::spawn(crate::metrics::count_leader_changes(
            group.subscribe_master(),
            metrics.clone(),
        ));
    }
    let locks = crate::messaging::locks::QueueLocks::new(
        write.clone(),
        Duration::from_millis(config.orderly_lock_lease_ms),
    );
    let querying = crate::messaging::query::Querying {
        store: store.clone(),
        broker_name: config.broker_name.clone(),
    };
    let service = Arc::new(BrokerService {
        querying,
        consuming,
        locks,
        producing,
        retries,
        timers,
        data_port: data_port_stats.clone(),
        metrics,
        store: store.clone(),
        topics: topics.clone(),
        write,
        groups: Arc::new(ConsumerGroups::new(Duration::from_millis(
            config.consumer_expiry_ms,
        ))),
        identity: identity.clone(),
        limits: ServiceLimits {
            auto_create_topics: config.auto_create_topics,
            default_queues: config.default_queues,
            max_poll: Duration::from_millis(config.max_poll_ms),
            max_message_size: config.max_message_size,
            flush_mode: format!("{:?}", config.flush).to_lowercase(),
        },
        reregister: reregister.clone(),
        ids: IdGenerator::new(&address),
        access: access.clone(),
    });
    let metrics_task = match &config.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: addr.clone(),
                    source,
                })?;
            tracing::info!(addr = %listener.local_addr().map_or_else(|_| addr.clone(), |a| a.to_string()), "metrics at /metrics");
            let svc = service.clone();
            let render: crate::metrics::http::Render = Arc::new(move || {
                let svc = svc.clone();
                Box::pin(async move { svc.render_metrics().await })
            });
            Some(tokio::spawn(crate::metrics::http::serve(
                listener,
                tls.as_ref().map(|t| t.http_server.clone()),
                render,
                stop_rx.clone(),
            )))
        }
    };
    let (first_round_tx, first_round) = tokio::sync::oneshot::channel();
    let registrar = Registrar {
        identity,
        nameservers: config.nameservers.clone(),
        interval: Duration::from_millis(config.heartbeat_interval_ms),
        topics,
        store: store.clone(),
        trigger: reregister,
        role: replica.as_ref().map(|g| g.subscribe_master()),
        first_round: Some(first_round_tx),
        signer: cluster_signer.clone(),
        tls: tls.as_ref().map(|t| t.connector.clone()),
    };
    let registration = tokio::spawn(registrar.run(stop_rx.clone()));

    let data_port = data_listener.map(|(listener, _)| {
        tokio::spawn(crate::data_port::serve(
            listener,
            tls.as_ref().map(|t| t.data_server.clone()),
            service.clone(),
            replication.clone(),
            store
                .writer_runtime()
                .map(|rt| crate::data_port::WriterThread {
                    runtime: rt.clone(),
                    busy_poll: Duration::from_micros(config.data_port_busy_poll_us),
                }),
            config.max_request_size + (64 << 10),
            data_port_stats,
            stop_rx.clone(),
        ))
    });
    let access_grpc = AccessServer::from_arc(service.clone());
    let grpc = BrokerServer::from_arc(service)
        // Above the message limit, so an oversized message gets MESSAGE_TOO_LARGE from us
        // rather than a transport error.
        .max_decoding_message_size(config.max_request_size + (64 << 10))
        .max_encoding_message_size(usize::MAX);
    let mut stop_serving = stop_rx.clone();
    let replication = replication.map(|r| {
        ReplicationServer::from_arc(r)
            .max_decoding_message_size(crate::replication::transport::MAX_RPC_BYTES)
            .max_encoding_message_size(crate::replication::transport::MAX_RPC_BYTES)
    });
    let server = tonic::transport::Server::builder()
        // HTTP/2's default 64 KiB windows stall a connection carrying several batched sends
        // (or replication appends) at once: each waits a round trip for a window update.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_FRAME))
        // Every request is authenticated before any service sees it.
        .layer(crate::access::layer::AuthLayer::new(access))
        .add_service(grpc)
        .add_service(access_grpc)
        .add_optional_service(replication)
        .serve_with_incoming_shutdown(
            // `Server::tcp_nodelay` only applies to listeners tonic binds itself: without
            // this, Nagle holds small answers back until the peer's delayed ACK (40 ms).
            crate::metrics::conn::counted(
                sluice_proto::tls::net::serve_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    tls.as_ref().map(|t| t.server.clone()),
                ),
                metered.as_ref().map(|m| m.ops.grpc_connections.clone()),
            ),
            async move {
                let _ = stop_serving.wait_for(|s| *s).await;
            },
        );
    let mut server = tokio::spawn(server);
    // Ready once serving and announced: clients that look the broker up right after find it.
    // A nameserver that does not answer is retried in the background.
    if !matches!(
        tokio::time::timeout(FIRST_REGISTRATION_WAIT, first_round).await,
        Ok(Ok(true))
    ) {
        tracing::warn!("not registered with every nameserver yet; serving anyway");
    }
    tracing::info!(%address, broker = %config.broker_name, cluster = %config.cluster_name, "broker serving");
    on_ready(local);

    let ended_early = tokio::select! {
        _ = shutdown => None,
        r = &mut server => Some(r),
    };
    tracing::info!("shutting down");
    // Order: stop taking requests and end held pulls, leave the nameservers, then make the
    // store and the metadata durable.
    let _ = stop_tx.send(true);
    let served = match ended_early {
        Some(r) => r,
        None => tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap_or(Ok(Ok(()))),
    };
    let served = match served {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("gRPC server task failed: {e}");
            Ok(())
        }
    };
    if let Some(d) = data_port {
        // The accept loop ends with the stop signal; open connections finish their sends.
        let _ = d.await;
    }
    if tokio::time::timeout(Duration::from_secs(5), registration)
        .await
        .is_err()
    {
        tracing::warn!("nameserver unregistration timed out");
    }
    // The timer task stops with the stop signal (after its write in flight, if any).
    if tokio::time::timeout(Duration::from_secs(5), timer_task)
        .await
        .is_err()
    {
        tracing::warn!("the timer task did not stop in time");
    }
    if let Some(m) = metrics_task {
        if tokio::time::timeout(Duration::from_secs(5), m)
            .await
            .is_err()
        {
            tracing::warn!("the metrics listener did not stop in time");
        }
    }
    for (name, task) in [
        ("producer expiry", expiry_task),
        ("transaction check", check_task),
        ("transaction floor", floor_task),
    ]
    .into_iter()
    .chain(trace_task.map(|t| ("trace topic", t)))
    {
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!(task = name, "a task did not stop in time");
        }
    }
    drop(standalone_master);
    if let Some(group) = &replica {
        group.shutdown().await;
    }
    store.shutdown().await?;
    meta.flush()?;
    tracing::info!("broker stopped");
    served.map_err(ServerError::from)
}

/// The request checks (and their audit log) from the configuration.
async fn open_access(
    config: &BrokerConfig,
    state: &StateMachine,
    metrics: &crate::metrics::Metrics,
    local: SocketAddr,
    (targets, data_targets): (Vec<String>, Vec<String>),
) -> Result<Arc<crate::access::Access>, ServerError> {
    use crate::access::{audit::Audit, settings};
    let mut cfg = settings::from_config(config).map_err(crate::config::ConfigError::Invalid)?;
    cfg.targets = targets;
    cfg.data_targets = data_targets;
    if !local.ip().is_loopback() && !cfg.enabled {
        tracing::warn!(
            "listening on {local} without authentication: anyone who can reach this port can \
             read, write and delete (set auth_enabled, see docs/security.md)"
        );
    }
    let audit = match settings::audit_path(config) {
        Some(path) => {
            let (audit, _task) = Audit::open(&path)
                .await
                .map_err(crate::store::StoreError::Io)?;
            audit
        }
        None => Audit::off(),
    };
    Ok(Arc::new(crate::access::Access::new(
        cfg,
        state.acl.clone(),
        audit,
        Some(metrics.ops.auth_refusals.clone()),
    )))
}
