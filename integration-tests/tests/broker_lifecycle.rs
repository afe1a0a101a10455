//! Restarts and registration: data and offsets survive kill -9; brokers leave routes on
//! expiry or at once on a clean stop.

use std::time::Duration;

use sluice_integration_tests::{create_topic_request, wait_until, Cluster, ClusterOptions};
use sluice_proto::v1::*;

async fn broker_count(cluster: &Cluster) -> usize {
    match cluster.nameserver_client().await {
        Ok(mut ns) => ns
            .get_cluster_info(GetClusterInfoRequest {})
            .await
            .map(|r| r.into_inner().brokers.len())
            .unwrap_or(usize::MAX),
        Err(_) => usize::MAX,
    }
}

#[tokio::test]
async fn acked_messages_and_offsets_survive_kill_9() {
    for flush in ["sync", "async"] {
        let opts = ClusterOptions {
            flush,
            ..Default::default()
        };
        let mut cluster = Cluster::start(1, opts).unwrap();
        let mut b = cluster.broker_client(0).await.unwrap();
        b.create_topic(create_topic_request("durable", 4))
            .await
            .unwrap();
        let mut acked = Vec::new();
        for i in 0..400u32 {
            let q = i % 4;
            let r = b
                .send(SendRequest {
                    topic: "durable".into(),
                    queue_id: q,
                    messages: vec![Message {
                        body: format!("m{i}").into_bytes().into(),
                        keys: vec![format!("k{i}")],
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            acked.push((q, r.results[0].queue_offset, format!("m{i}")));
        }
        b.commit_offsets(CommitOffsetsRequest {
            group: "g1".into(),
            offsets: vec![OffsetEntry {
                topic: "durable".into(),
                queue_id: 2,
                offset: 37,
            }],
            reset_epoch: None,
            lock_owner: String::new(),
        })
        .await
        .unwrap();

        // In async mode an acked write is in the page cache, which survives a process kill.
        cluster.brokers[0].kill9();
        cluster.brokers[0].restart().unwrap();
        let mut b = cluster.broker_client(0).await.unwrap();

        for (q, off, body) in &acked {
            let r = b
                .pull(PullRequest {
                    group: "check".into(),
                    topic: "durable".into(),
                    queue_id: *q,
                    offset: *off,
                    max_messages: 1,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                r.messages.len(),
                1,
                "{flush}: q{q}@{off} missing after restart"
            );
            assert_eq!(&r.messages[0].body[..], body.as_bytes());
        }
        let o = b
            .query_offset(QueryOffsetRequest {
                group: "g1".into(),
                topic: "durable".into(),
                queue_id: 2,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            o.found && o.offset == 37,
            "{flush}: committed offset lost: {o:?}"
        );
        // New sends continue after the recovered offsets.
        let r = b
            .send(SendRequest {
                topic: "durable".into(),
                queue_id: 0,
                messages: vec![Message {
                    body: b"after".to_vec().into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.results[0].queue_offset, 100);
    }
}

#[tokio::test]
async fn brokers_leave_the_nameserver_on_expiry_or_at_once_on_clean_stop() {
    let opts = ClusterOptions {
        broker_expiry_ms: 2_000,
        ..Default::default()
    };
    let mut cluster = Cluster::start(2, opts).unwrap();
    wait_until(
        Duration::from_secs(10),
        "both brokers registered",
        || async { broker_count(&cluster).await == 2 },
    )
    .await
    .unwrap();

    // Clean stop: unregistered before the process exits, so gone at once.
    cluster.brokers[1].stop().unwrap();
    assert_eq!(broker_count(&cluster).await, 1);

    // kill -9: still listed until the expiry passes, then dropped.
    let killed_at = std::time::Instant::now();
    cluster.brokers[0].kill9();
    assert_eq!(broker_count(&cluster).await, 1);
    wait_until(Duration::from_secs(15), "killed broker expired", || async {
        broker_count(&cluster).await == 0
    })
    .await
    .unwrap();
    assert!(
        killed_at.elapsed() >= Duration::from_millis(1_500),
        "dropped before the expiry"
    );
}

#[tokio::test]
async fn broker_without_a_nameserver_keeps_retrying_and_registers_once_one_is_up() {
    use sluice_integration_tests::{bin, Node};
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on yet: bind, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ns_addr = format!("127.0.0.1:{port}");
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let _broker = Node::start(
        "broker",
        bin("sluice-broker"),
        &broker_dir,
        vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            broker_dir.join("data").display().to_string(),
            "--nameservers".into(),
            ns_addr.clone(),
            "--broker-name".into(),
            "lonely".into(),
        ],
    )
    .unwrap();
    // It serves clients and says why it is not registered.
    let log = || std::fs::read_to_string(broker_dir.join("node.log")).unwrap_or_default();
    wait_until(
        Duration::from_secs(10),
        "a log line about the unreachable nameserver",
        || async {
            let l = log();
            l.contains("cannot register") && l.contains(&ns_addr)
        },
    )
    .await
    .unwrap();

    // The nameserver comes up on that port later; the broker finds it without a restart.
    let ns = Node::start(
        "nameserver",
        bin("sluice-nameserver"),
        &dir.path().join("ns"),
        vec![
            "--listen".into(),
            ns_addr.clone(),
            "--data-dir".into(),
            dir.path().join("ns/data").display().to_string(),
        ],
    );
    let Ok(_ns) = ns else {
        // Another process took the released port in between: nothing to test against.
        eprintln!("port {port} was taken before the nameserver could bind it; skipping");
        return;
    };
    let registered = wait_until(Duration::from_secs(15), "the broker registered", || async {
        let Ok(ch) = tonic::transport::Channel::from_shared(format!("http://{ns_addr}"))
            .unwrap()
            .connect()
            .await
        else {
            return false;
        };
        let mut ns = sluice_proto::v1::name_server_client::NameServerClient::new(ch);
        ns.get_cluster_info(GetClusterInfoRequest {})
            .await
            .map(|r| {
                r.into_inner()
                    .brokers
                    .iter()
                    .any(|b| b.broker_name == "lonely")
            })
            .unwrap_or(false)
    })
    .await;
    registered.unwrap();
}
