//! TLS on real processes: a replica group and its nameserver speak only TLS (gRPC, the data
//! port and the Raft links on it); clients without the CA, or trusting another one, are
//! refused; a rotated certificate is served to new connections without a restart; a broker
//! given an expired certificate, a key of another certificate, or (under mutual TLS) a
//! certificate not for its own host refuses to start and names the file.

use std::time::{Duration, SystemTime};

use sluice_client::{Admin, Message, Producer};
use sluice_integration_tests::raw::try_exchange;
use sluice_integration_tests::replica::ReplicaCluster;
use sluice_integration_tests::secure::{self, Secrets, TlsFiles};
use sluice_integration_tests::{bin, channel_to, wait_until, Node};
use sluice_proto::frame::Kind;
use sluice_proto::tls::gen::{write_pem, Ca};
use sluice_proto::tls::net::Connector;
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::GetBrokerStatusRequest;
use sluice_proto::ErrorCode;

fn connector_for(ca_pem_path: &std::path::Path) -> Connector {
    let cfg =
        sluice_proto::tls::client_config(ca_pem_path, None, &[sluice_proto::tls::ALPN_H2]).unwrap();
    Connector::new(std::sync::Arc::new(cfg))
}

/// The certificate a fresh TLS connection to `addr` is shown.
async fn served_cert(addr: &str, tls: &Connector) -> Vec<u8> {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let s = tls.connect(host, port.parse().unwrap()).await.unwrap();
    let certs = s.get_ref().1.peer_certificates().unwrap();
    certs[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_clients_of_the_ca_get_in_and_certificates_rotate_live() {
    let dir = tempfile::tempdir().unwrap();
    // The CA is kept, to issue the rotated certificate.
    let ca = Ca::new("sluice test CA").unwrap();
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    let node = ca.issue(&hosts, None).unwrap();
    let files = TlsFiles {
        ca: dir.path().join("ca.crt"),
        cert: dir.path().join("node.crt"),
        key: dir.path().join("node.key"),
        mutual: false,
    };
    write_pem(&files.ca, &ca.cert_pem(), false).unwrap();
    write_pem(&files.cert, &node.cert_pem, false).unwrap();
    write_pem(&files.key, &node.key_pem, true).unwrap();
    let secrets = Secrets {
        tls: Some(files),
        ..Secrets::write(dir.path()).unwrap()
    };
    let files = secrets.tls.as_ref().unwrap();
    let cluster = ReplicaCluster::start(secrets.replica_options(3)).unwrap();
    let t = Duration::from_secs(30);
    cluster
        .create_topic_on_master("orders", 2, t)
        .await
        .unwrap();
    // The real client, over TLS (and signed): sends are replicated and routed.
    let config = secrets
        .client(&cluster.nameserver.addr, secure::admin())
        .unwrap();
    let producer = Producer::builder(config.clone()).build().unwrap();
    for i in 0..50 {
        producer
            .send(Message::new("orders", format!("m{i}")))
            .await
            .unwrap();
    }
    let other = Ca::new("another CA").unwrap();
    write_pem(&dir.path().join("other-ca.crt"), &other.cert_pem(), false).unwrap();
    let status = Admin::new(config).unwrap().cluster_status().await.unwrap();
    assert_eq!(status.len(), 3, "{status:?}");

    // The data port speaks TLS too: the producer's sends went through it, and the replicas'
    // Raft links moved onto it (the master links to both slaves, each slave to the master).
    let master = cluster.find_master().await.unwrap();
    let m = cluster.status(master).await.unwrap();
    assert!(m.data_port_sends >= 50, "{m:?}");
    cluster
        .await_data_port_links(master, Duration::from_secs(15))
        .await
        .unwrap();
    // Its frames need the handshake first: plaintext and another CA's clients get no answer;
    // a client of the CA does (an anonymous send, refused by the ACL).
    let send = [(Kind::Send, 1, Vec::new())];
    assert!(try_exchange(&m.data_address, None, &send).await.is_err());
    let stranger = connector_for(&dir.path().join("other-ca.crt"));
    assert!(try_exchange(&m.data_address, Some(&stranger), &send)
        .await
        .is_err());
    let answers = try_exchange(&m.data_address, Some(&connector_for(&files.ca)), &send)
        .await
        .unwrap();
    assert_eq!(answers[&1], Some(ErrorCode::Unauthenticated), "{answers:?}");

    // No TLS, or another CA: refused at the door.
    let addr = cluster.address(1).to_string();
    let mut plain = sluice_integration_tests::connect_broker_with(&addr, None)
        .await
        .unwrap();
    assert!(plain
        .get_broker_status(GetBrokerStatusRequest {})
        .await
        .is_err());
    assert!(channel_to(&addr, Some(&stranger)).await.is_err());
    let ns = cluster.nameserver.addr.clone();
    assert!(channel_to(&ns, Some(&stranger)).await.is_err());
    let ok = connector_for(&files.ca);
    BrokerClient::new(channel_to(&addr, Some(&ok)).await.unwrap());

    // Rotation: a new certificate (same CA) written over the files is served to new
    // connections within the reload check, with no restart.
    let before = served_cert(&addr, &ok).await;
    let next = ca.issue(&hosts, None).unwrap();
    write_pem(&files.key, &next.key_pem, true).unwrap();
    write_pem(&files.cert, &next.cert_pem, false).unwrap();
    let later = SystemTime::now() + Duration::from_secs(1);
    for f in [&files.cert, &files.key] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    wait_until(
        Duration::from_secs(15),
        "the rotated certificate served",
        || {
            let (addr, c, before) = (addr.clone(), ok.clone(), before.clone());
            async move { served_cert(&addr, &c).await != before }
        },
    )
    .await
    .unwrap();
    let log = cluster.replicas[0].log_tail();
    assert!(log.contains("TLS certificate reloaded"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_a_bad_certificate_refuses_to_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("sluice test CA").unwrap();
    write_pem(&dir.path().join("ca.crt"), &ca.cert_pem(), false).unwrap();
    let expired = ca.issue(&["127.0.0.1".into()], Some((2021, 1, 1))).unwrap();
    write_pem(&dir.path().join("expired.crt"), &expired.cert_pem, false).unwrap();
    write_pem(&dir.path().join("expired.key"), &expired.key_pem, true).unwrap();
    let good = ca.issue(&["127.0.0.1".into()], None).unwrap();
    write_pem(&dir.path().join("good.crt"), &good.cert_pem, false).unwrap();
    write_pem(&dir.path().join("good.key"), &good.key_pem, true).unwrap();
    // Under mutual TLS, a replica's certificate must name its own host in `peers`.
    let mutual = "tls_client_cert_required = true\nreplica_id = 1\n\
                  peers = { 1 = \"localhost:1\", 2 = \"127.0.0.1:2\" }\n";
    for (cert, key, extra, expect) in [
        ("expired.crt", "expired.key", "", "expired.crt"),
        ("good.crt", "expired.key", "", "expired.key"),
        ("missing.crt", "expired.key", "", "missing.crt"),
        (
            "good.crt",
            "good.key",
            mutual,
            "not for this replica's host \"localhost\"",
        ),
    ] {
        let node_dir = dir.path().join(format!("b-{cert}-{key}"));
        std::fs::create_dir_all(&node_dir).unwrap();
        let config = node_dir.join("broker.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ncluster_name = \"it\"\n\
                 broker_name = \"b\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\
                 tls_ca_file = \"{}\"\n{extra}",
                node_dir.join("data").display(),
                dir.path().join(cert).display(),
                dir.path().join(key).display(),
                dir.path().join("ca.crt").display(),
            ),
        )
        .unwrap();
        let err = Node::start(
            "broker",
            bin("sluice-broker"),
            &node_dir,
            vec!["--config".into(), config.display().to_string()],
        )
        .err()
        .unwrap_or_else(|| panic!("{cert} with {key} started"));
        let text = format!("{err:#}");
        assert!(text.contains(expect), "{cert}/{key}: {text}");
    }
}
