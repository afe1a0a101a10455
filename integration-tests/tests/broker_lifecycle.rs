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
