//! Real processes: a nameserver with a cluster secret (`--cluster-secret-file`) routes to the
//! broker that signs its registrations with the same secret, and refuses one that does not.

use std::time::Duration;

use sluice_client::{Admin, ClientConfig, ErrorCode};
use sluice_integration_tests::{
    bin, create_topic_request, wait_until, Cluster, ClusterOptions, Node,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_brokers_holding_the_cluster_secret_are_routed_to() {
    let dir = tempfile::Builder::new()
        .prefix("sluice-it-")
        .tempdir()
        .unwrap();
    let secret = dir.path().join("cluster.secret");
    std::fs::write(&secret, "correct horse battery staple\n").unwrap();
    let nameserver = Node::start(
        "nameserver",
        bin("sluice-nameserver"),
        &dir.path().join("ns"),
        vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.path().join("ns/data").display().to_string(),
            "--broker-expiry-ms".into(),
            "3000".into(),
            "--scan-interval-ms".into(),
            "200".into(),
            "--cluster-secret-file".into(),
            secret.display().to_string(),
        ],
    )
    .unwrap();
    let mut cluster = Cluster {
        dir,
        opts: ClusterOptions {
            extra_broker_toml: format!("cluster_secret_file = \"{}\"\n", secret.display()),
            ..ClusterOptions::default()
        },
        nameserver,
        brokers: Vec::new(),
    };
    cluster.add_broker("member").unwrap();
    cluster.opts.extra_broker_toml = String::new();
    cluster.add_broker("stranger").unwrap();
    for (i, topic) in ["member-topic", "stranger-topic"].into_iter().enumerate() {
        let mut b = cluster.broker_client(i).await.unwrap();
        b.create_topic(create_topic_request(topic, 2))
            .await
            .unwrap();
    }
    let admin = Admin::new(
        ClientConfig::new([cluster.nameservers()]).request_timeout(Duration::from_secs(5)),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the member's topic routed",
        || async { admin.topic_route("member-topic").await.is_ok() },
    )
    .await
    .unwrap();
    // The stranger was told why, and its topic has no route.
    wait_until(Duration::from_secs(20), "the stranger refused", || {
        let log = cluster.brokers[1].log_tail();
        async move { log.contains("no signature") }
    })
    .await
    .unwrap();
    let err = admin.topic_route("stranger-topic").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TopicNotFound), "{err}");
    let status = cluster.cli(&["cluster", "status", "--json"]).unwrap();
    assert!(status.contains("\"member\""), "{status}");
    assert!(!status.contains("\"stranger\""), "{status}");
}
