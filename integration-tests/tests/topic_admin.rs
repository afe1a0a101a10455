//! `Admin::update_topic` / `delete_topic` on a replica group: the change goes through the
//! group's log, so every replica holds it (and the route shows it); a read-only topic refuses
//! sends; a deleted topic leaves every replica and the route.

use std::time::Duration;

use sluice_client::{Admin, ClientConfig, ErrorCode, Message, Producer, TopicUpdate};
use sluice_integration_tests::replica::{ReplicaCluster, ReplicaOptions};
use sluice_integration_tests::{connect_broker, wait_until};
use sluice_proto::perm;
use sluice_proto::v1::{BrokerListTopicsRequest, TopicConfig};

const TOPIC: &str = "orders";

/// The topic's config on replica `id` (None: not there).
async fn config_on(cluster: &ReplicaCluster, id: u64) -> Option<TopicConfig> {
    let mut c = connect_broker(cluster.address(id)).await.ok()?;
    let topics = c
        .list_topics(BrokerListTopicsRequest::default())
        .await
        .ok()?
        .into_inner()
        .topics;
    topics.into_iter().find(|t| t.name == TOPIC)
}

async fn on_every_replica(cluster: &ReplicaCluster, what: &str, want: Option<(u32, u32, u32)>) {
    let ids: Vec<u64> = cluster.peers.keys().copied().collect();
    wait_until(Duration::from_secs(10), what, || async {
        for &id in &ids {
            let got = config_on(cluster, id)
                .await
                .map(|c| (c.read_queues, c.write_queues, c.perm));
            if got != want {
                return false;
            }
        }
        true
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn updates_and_deletes_hold_on_every_replica_and_in_the_route() {
    let cluster = ReplicaCluster::start(ReplicaOptions::default()).unwrap();
    cluster
        .await_master(Duration::from_secs(10), None, None)
        .await
        .unwrap();
    let config = ClientConfig::new([cluster.nameserver.addr.clone()]);
    let admin = Admin::new(config.clone()).unwrap();
    admin.create_topic(TOPIC, 4, None).await.unwrap();
    on_every_replica(
        &cluster,
        "created everywhere",
        Some((4, 4, perm::READ_WRITE)),
    )
    .await;

    // Fewer write queues: the read queues stay until drained.
    let updated = admin
        .update_topic(
            TOPIC,
            TopicUpdate {
                write_queues: Some(2),
                ..TopicUpdate::default()
            },
        )
        .await
        .unwrap();
    assert!(
        updated.iter().all(|u| u.changed && u.read_queues == 4),
        "{updated:?}"
    );
    on_every_replica(
        &cluster,
        "2 write queues everywhere",
        Some((4, 2, perm::READ_WRITE)),
    )
    .await;
    wait_until(Duration::from_secs(10), "the route shows it", || async {
        admin.topic_route(TOPIC).await.is_ok_and(|r| {
            r.brokers
                .iter()
                .all(|b| b.write_queues == 2 && b.read_queues == 4)
        })
    })
    .await
    .unwrap();

    // Read only: a send is refused.
    admin
        .update_topic(
            TOPIC,
            TopicUpdate {
                perm: Some(perm::READ),
                ..TopicUpdate::default()
            },
        )
        .await
        .unwrap();
    on_every_replica(&cluster, "read only everywhere", Some((4, 2, perm::READ))).await;
    let producer = Producer::builder(config.clone())
        .retries(0)
        .build()
        .unwrap();
    let refused = producer
        .send(Message::new(TOPIC, "x"))
        .await
        .expect_err("a read-only topic takes no sends");
    let code = refused.code();
    assert!(
        matches!(code, Some(ErrorCode::NoPermission | ErrorCode::NoRoute)),
        "{refused}"
    );
    producer.shutdown().await;

    let deleted = admin.delete_topic(TOPIC).await.unwrap();
    assert_eq!(deleted.len(), 1);
    on_every_replica(&cluster, "deleted everywhere", None).await;
    wait_until(Duration::from_secs(10), "gone from the route", || async {
        !admin
            .list_topics()
            .await
            .unwrap_or_default()
            .iter()
            .any(|t| t == TOPIC)
    })
    .await
    .unwrap();
}
