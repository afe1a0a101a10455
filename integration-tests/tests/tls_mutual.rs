//! Mutual TLS on real processes: every client shows a certificate; replicas take Raft traffic
//! only over a certificate issued for the sending peer's host (a stranger holding the cluster
//! secret and a certificate of the same CA for another host is refused, on gRPC and on the
//! data port); the metrics endpoint and the dashboard speak HTTPS.

use std::time::Duration;

use prost::Message as _;
use sluice_client::{Message, Producer};
use sluice_integration_tests::cli_child::CliChild;
use sluice_integration_tests::raw::try_exchange;
use sluice_integration_tests::replica::{reserve_ports, ReplicaCluster, GROUP};
use sluice_integration_tests::secure::{self, Secrets, TlsFiles};
use sluice_integration_tests::{channel_to, signed};
use sluice_proto::auth::{resource, Signer, DATA_PORT_RESOURCE};
use sluice_proto::frame::Kind;
use sluice_proto::tls::gen::{write_pem, Ca};
use sluice_proto::tls::http::ALPN_HTTP1;
use sluice_proto::tls::net::{connect_split, Connector};
use sluice_proto::tls::{self, Reloading};
use sluice_proto::v1::replication_client::ReplicationClient;
use sluice_proto::v1::{DataPortAuthRequest, RaftBatch};
use sluice_proto::{ApiError, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client of the CA showing `cert`.
fn showing(ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> Connector {
    let shown = Reloading::load(cert, key).unwrap();
    let cfg = tls::client_config(ca, Some(shown), &[tls::ALPN_H2]).unwrap();
    Connector::new(std::sync::Arc::new(cfg))
}

/// An empty Raft batch from replica 2 to replica 1, over gRPC, signed with the cluster secret.
async fn raft_over_grpc(addr: &str, tls: &Connector) -> Result<(), ApiError> {
    let mut c = ReplicationClient::new(channel_to(addr, Some(tls)).await.unwrap());
    let batch = RaftBatch {
        broker_name: GROUP.into(),
        from: 2,
        to: 1,
        messages: vec![],
    };
    let req = signed(
        batch,
        addr,
        "/sluice.v1.Replication/Raft",
        Some(&secure::cluster()),
    );
    c.raft(req)
        .await
        .map(|_| ())
        .map_err(|s| ApiError::from_status(&s))
}

/// The same over the data port: the cluster's Auth frame, then the batch.
async fn raft_over_data_port(addr: &str, tls: &Connector) -> Vec<Option<ErrorCode>> {
    let signer = Signer::new(secure::cluster(), rand::random());
    let auth = DataPortAuthRequest {
        authorization: signer.sign(
            &resource(addr, DATA_PORT_RESOURCE),
            sluice_client::time::now_ms(),
        ),
    };
    let batch = RaftBatch {
        broker_name: GROUP.into(),
        from: 2,
        to: 1,
        messages: vec![],
    };
    let frames = [
        (Kind::Auth, 1, auth.encode_to_vec()),
        (Kind::Raft, 2, batch.encode_to_vec()),
    ];
    let answers = try_exchange(addr, Some(tls), &frames).await.unwrap();
    answers.into_values().collect()
}

/// GET `path` over HTTPS (HTTP/1.1, trusting `tls`): the status line and the body.
async fn https_get(addr: &str, path: &str, tls: &Connector) -> std::io::Result<(String, String)> {
    let (mut rd, mut wr) = connect_split(addr, Some(&tls.with_alpn(ALPN_HTTP1))).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    wr.write_all(req.as_bytes()).await?;
    wr.flush().await?;
    let mut raw = Vec::new();
    let read = rd.read_to_end(&mut raw);
    // A server that closes without close_notify still sent the whole answer.
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_speak_only_over_their_own_certificates_and_http_is_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("sluice test CA").unwrap();
    let mut secrets = Secrets::write(dir.path()).unwrap();
    let mut files = TlsFiles::write_for(dir.path(), &ca).unwrap();
    files.mutual = true;
    secrets.tls = Some(files);
    let files = secrets.tls.as_ref().unwrap();
    let metrics = format!("127.0.0.1:{}", reserve_ports(1).unwrap()[0]);
    let ns_metrics = format!("127.0.0.1:{}", reserve_ports(1).unwrap()[0]);
    let mut opts = secrets.replica_options(3);
    opts.replica_toml = vec![format!("metrics_listen = \"{metrics}\"\n")];
    opts.nameserver_args
        .extend(["--metrics-listen".to_string(), ns_metrics.clone()]);
    let cluster = ReplicaCluster::start(opts).unwrap();
    let t = Duration::from_secs(30);
    cluster
        .create_topic_on_master("orders", 2, t)
        .await
        .unwrap();

    // The real client shows its certificate and sends through the TLS data port; the
    // replicas' Raft links (gRPC first, then data ports) pass each other's certificate check.
    let config = secrets
        .client(&cluster.nameserver.addr, secure::admin())
        .unwrap();
    let producer = Producer::builder(config.clone()).build().unwrap();
    producer
        .send_batch(
            (0..20)
                .map(|i| Message::new("orders", format!("m{i}")))
                .collect(),
        )
        .await
        .unwrap();
    let master = cluster.find_master().await.unwrap();
    cluster
        .await_data_port_links(master, Duration::from_secs(15))
        .await
        .unwrap();

    // A stranger with the cluster secret and a certificate of the same CA, but for another
    // host, posing as replica 2: refused on both paths. The node's own certificate passes.
    let stranger = ca.issue(&["stranger.example".into()], None).unwrap();
    let (s_cert, s_key) = (
        dir.path().join("stranger.crt"),
        dir.path().join("stranger.key"),
    );
    write_pem(&s_cert, &stranger.cert_pem, false).unwrap();
    write_pem(&s_key, &stranger.key_pem, true).unwrap();
    let stranger = showing(&files.ca, &s_cert, &s_key);
    let node = showing(&files.ca, &files.cert, &files.key);
    let addr = cluster.address(1).to_string();
    let e = raft_over_grpc(&addr, &stranger).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied, "{e:?}");
    assert!(e.message.contains("stranger.example"), "{e:?}");
    raft_over_grpc(&addr, &node).await.unwrap();
    let data = cluster.status(1).await.unwrap().data_address;
    assert_eq!(
        raft_over_data_port(&data, &stranger).await,
        [None, Some(ErrorCode::PermissionDenied)]
    );
    assert_eq!(raft_over_data_port(&data, &node).await, [None, None]);
    // No certificate at all: the handshake itself fails.
    let bare = tls::client_config(&files.ca, None, &[tls::ALPN_H2]).unwrap();
    let bare = Connector::new(std::sync::Arc::new(bare));
    assert!(try_exchange(&data, Some(&bare), &[(Kind::Send, 1, vec![])])
        .await
        .is_err());

    // Metrics over HTTPS (with a client certificate, as the broker requires), not over HTTP.
    let (status, body) = https_get(&metrics, "/metrics", &node).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.contains("sluice_"), "{body}");
    assert!(https_get(&metrics, "/metrics", &bare)
        .await
        .map_or(true, |(s, _)| s.is_empty()));
    let mut plain = tokio::net::TcpStream::connect(&metrics).await.unwrap();
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    // The nameserver's too (it asks for no client certificate).
    let (status, body) = https_get(&ns_metrics, "/metrics", &bare).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.contains("sluice_nameserver_brokers"), "{body}");

    // The dashboard over HTTPS with its own certificate (any client may connect).
    let mut dash = CliChild::spawn_with_env(
        &cluster.nameserver.addr,
        &[
            "--tls-ca-file",
            &files.ca.display().to_string(),
            "--tls-cert-file",
            &files.cert.display().to_string(),
            "--tls-key-file",
            &files.key.display().to_string(),
            "--access-key",
            secure::ADMIN,
            "dashboard",
            "--listen",
            "127.0.0.1:0",
            "--https-cert-file",
            &files.cert.display().to_string(),
            "--https-key-file",
            &files.key.display().to_string(),
        ],
        &[("SLUICE_SECRET_KEY", secure::ADMIN_SECRET)],
    )
    .unwrap();
    let line = dash.read_until("dashboard at ", t).unwrap();
    let url = line.trim_start_matches("dashboard at ").trim();
    let host = url.strip_prefix("https://").unwrap().trim_end_matches('/');
    let (status, body) = https_get(host, "/", &bare).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        body.contains(GROUP),
        "the cluster page lists the group: {body}"
    );
}
