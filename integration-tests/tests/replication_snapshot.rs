//! A replica that was down longer than the retention window: the entries it missed are gone
//! from the others' logs, so it catches up from a snapshot (where the commit log restarts,
//! the next queue offsets, and the metadata) and then follows the log again.

use std::time::Duration;

use sluice_integration_tests::replica::{ReplicaCluster, ReplicaOptions};
use sluice_integration_tests::{connect_broker, create_topic_request, wait_until};
use sluice_proto::v1::{
    CommitOffsetsRequest, GetQueueOffsetsRequest, OffsetEntry, QueryOffsetRequest, Role,
    SendRequest,
};

const TOPIC: &str = "metrics";

fn batch(queue_id: u32, start: usize, n: usize) -> SendRequest {
    SendRequest {
        topic: TOPIC.into(),
        queue_id,
        messages: (start..start + n)
            .map(|i| sluice_proto::v1::Message {
                body: vec![b'x'; 1024].into(),
                message_id: format!("s-{i}"),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_down_past_retention_catches_up_from_a_snapshot() {
    let cluster = ReplicaCluster::start(ReplicaOptions {
        segment_size: 256 << 10,
        // Segments older than ~2 s go (the active one never does).
        extra_broker_toml: "retention_hours = 0.0005\nretention_check_interval_ms = 200\n".into(),
        ..ReplicaOptions::default()
    })
    .unwrap();
    let master = cluster
        .await_master(Duration::from_secs(10), None, None)
        .await
        .unwrap();
    let mut m = connect_broker(cluster.address(master)).await.unwrap();
    m.create_topic(create_topic_request(TOPIC, 2))
        .await
        .unwrap();
    let lagging = cluster
        .peers
        .keys()
        .copied()
        .find(|&id| id != master)
        .unwrap();
    cluster
        .await_caught_up(master, &[lagging], Duration::from_secs(10))
        .await
        .unwrap();
    let mut cluster = cluster;
    let left_at = cluster.status(lagging).await.unwrap().last_index;
    cluster.node(lagging).kill9();

    // While it is away: metadata changes and enough messages to fill many segments.
    m.create_topic(create_topic_request("created-while-away", 3))
        .await
        .unwrap();
    m.commit_offsets(CommitOffsetsRequest {
        group: "readers".into(),
        offsets: vec![OffsetEntry {
            topic: TOPIC.into(),
            queue_id: 1,
            offset: 42,
        }],
        reset_epoch: None,
        lock_owner: String::new(),
    })
    .await
    .unwrap();
    let mut sent = 0;
    for round in 0..20 {
        m.send(batch(round % 2, sent, 100)).await.unwrap();
        sent += 100;
    }
    // Retention removes the old segments, and with them the entries the replica missed.
    wait_until(
        Duration::from_secs(30),
        "retention past the missing entries",
        || async {
            cluster
                .status(master)
                .await
                .is_ok_and(|s| s.first_index > left_at + 1)
        },
    )
    .await
    .unwrap();
    // Something after the compaction too.
    m.send(batch(0, sent, 10)).await.unwrap();

    cluster.node(lagging).restart().unwrap();
    let commit = cluster.status(master).await.unwrap().commit_index;
    cluster
        .await_applied(&[lagging], commit, Duration::from_secs(20))
        .await
        .unwrap();
    let st = cluster.status(lagging).await.unwrap();
    assert_eq!(st.role, Role::Slave as i32);
    assert!(
        st.first_index > left_at + 1,
        "no snapshot was installed: {st:?}"
    );

    // The snapshot carried the metadata of the entries it replaced.
    let mut l = connect_broker(cluster.address(lagging)).await.unwrap();
    let q = l
        .query_offset(QueryOffsetRequest {
            group: "readers".into(),
            topic: TOPIC.into(),
            queue_id: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((q.found, q.offset), (true, 42));
    let topics = l
        .list_topics(sluice_proto::v1::BrokerListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics;
    assert!(topics.iter().any(|t| t.name == "created-while-away"));

    // Queue offsets continue where the group is, and new messages reach the replica.
    let offsets = |r: u64| {
        let addr = cluster.address(r).to_string();
        async move {
            connect_broker(&addr)
                .await
                .unwrap()
                .get_queue_offsets(GetQueueOffsetsRequest {
                    topic: TOPIC.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .queues
                .iter()
                .map(|q| q.max_offset)
                .collect::<Vec<_>>()
        }
    };
    // Applied is not yet dispatched: the consume queues catch up right after.
    let want = offsets(master).await;
    wait_until(
        Duration::from_secs(10),
        "the lagging replica's queue offsets to match the master's",
        || {
            let got = offsets(lagging);
            let want = want.clone();
            async move { got.await == want }
        },
    )
    .await
    .unwrap();
    let r = m.send(batch(1, sent + 10, 5)).await.unwrap().into_inner();
    let last = r.results.last().unwrap().clone();
    let commit = cluster.status(master).await.unwrap().commit_index;
    cluster
        .await_applied(&[lagging], commit, Duration::from_secs(10))
        .await
        .unwrap();
    let cluster = &cluster;
    wait_until(
        Duration::from_secs(10),
        "the new messages in the lagging replica's queue",
        || {
            let last = last.clone();
            async move {
                let on_lagging = cluster.read_queue(lagging, TOPIC, 1).await.unwrap();
                on_lagging.last().is_some_and(|tail| {
                    (tail.queue_offset, tail.message_id.as_str())
                        == (last.queue_offset, last.message_id.as_str())
                })
            }
        },
    )
    .await
    .unwrap();
}
