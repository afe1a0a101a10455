//! Idempotent producers with real processes: a retried batch is answered with its first
//! receipts and stored once, on a standalone broker across a kill -9 and in a replica group
//! across a failover; sequence gaps, stale epochs and unknown producer ids are refused with
//! their own codes; the Rust producer (idempotent by default) stores no duplicates while the
//! master is killed under load.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_client::{ClientConfig, Message, Producer};
use sluice_integration_tests::replica::{read_all, ReplicaCluster, ReplicaOptions};
use sluice_integration_tests::{
    connect_broker, create_topic_request, wait_until, Cluster, ClusterOptions,
};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::{GetQueueOffsetsRequest, InitProducerRequest, SendRequest, SendResponse};
use sluice_proto::{ApiError, ErrorCode};
use tonic::transport::Channel;

const TOPIC: &str = "idem";

/// A batch of `n` messages with ids fixed by `tag`, under the given sequence.
fn batch(tag: &str, n: usize, pid: u64, epoch: u32, base: u64) -> SendRequest {
    SendRequest {
        topic: TOPIC.into(),
        queue_id: 0,
        messages: (0..n)
            .map(|i| sluice_proto::v1::Message {
                body: format!("{tag}-{i}").into_bytes().into(),
                message_id: format!("{tag}-{i}"),
                ..Default::default()
            })
            .collect(),
        producer_id: pid,
        producer_epoch: epoch,
        base_sequence: base,
        ..Default::default()
    }
}

async fn send(c: &mut BrokerClient<Channel>, req: SendRequest) -> Result<SendResponse, ApiError> {
    c.send(req)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| ApiError::from_status(&s))
}

/// Waits until queue 0 holds `want` messages (a send is acknowledged before it is visible to
/// readers), then checks it holds no more.
async fn await_max(c: &BrokerClient<Channel>, want: u64) {
    let held = wait_until(
        Duration::from_secs(10),
        "the queue's messages visible",
        || {
            let mut c = c.clone();
            async move { queue_max(&mut c).await >= want }
        },
    )
    .await;
    held.unwrap();
    assert_eq!(queue_max(&mut c.clone()).await, want);
}

async fn queue_max(c: &mut BrokerClient<Channel>) -> u64 {
    c.get_queue_offsets(GetQueueOffsetsRequest {
        topic: TOPIC.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .queues
    .iter()
    .find(|q| q.queue_id == 0)
    .map_or(0, |q| q.max_offset)
}

async fn init(c: &mut BrokerClient<Channel>) -> u64 {
    let r = c
        .init_producer(InitProducerRequest {
            producer_group: "orders-service".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(r.producer_id, 0);
    r.producer_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_broker_answers_retries_with_their_first_receipts_across_kill_9() {
    let mut cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let mut c = cluster.broker_client(0).await.unwrap();
    c.create_topic(create_topic_request(TOPIC, 2))
        .await
        .unwrap();
    let pid = init(&mut c).await;

    let first = send(&mut c, batch("a", 3, pid, 0, 0)).await.unwrap();
    assert_eq!(send(&mut c, batch("a", 3, pid, 0, 0)).await.unwrap(), first);
    await_max(&c, 3).await;

    let code = |r: Result<SendResponse, ApiError>| r.unwrap_err().code;
    assert_eq!(
        code(send(&mut c, batch("gap", 1, pid, 0, 5)).await),
        ErrorCode::OutOfOrderSequence
    );
    // The same sequence for other messages is not a retry.
    assert_eq!(
        code(send(&mut c, batch("other", 3, pid, 0, 0)).await),
        ErrorCode::OutOfOrderSequence
    );
    let next = send(&mut c, batch("b", 2, pid, 0, 3)).await.unwrap();
    assert_eq!(next.results[0].queue_offset, 3);
    assert_eq!(
        code(send(&mut c, batch("x", 1, pid.wrapping_add(1), 0, 0)).await),
        ErrorCode::UnknownProducer
    );
    // A new epoch starts at 0 and fences the old one.
    send(&mut c, batch("c", 1, pid, 1, 0)).await.unwrap();
    assert_eq!(
        code(send(&mut c, batch("d", 1, pid, 0, 5)).await),
        ErrorCode::ProducerFenced
    );
    // Sends without a producer id keep the plain behaviour: a resend is stored again.
    send(&mut c, batch("plain", 1, 0, 0, 0)).await.unwrap();
    send(&mut c, batch("plain", 1, 0, 0, 0)).await.unwrap();
    await_max(&c, 8).await;

    // kill -9 right after an acknowledged batch, then retry it on the restarted broker.
    let acked = send(&mut c, batch("e", 4, pid, 1, 1)).await.unwrap();
    let due = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 600_000;
    let mut delayed = batch("f", 1, pid, 1, 5);
    delayed.messages[0].deliver_at_ms = due;
    let scheduled = send(&mut c, delayed.clone()).await.unwrap();
    cluster.brokers[0].kill9();
    cluster.brokers[0].restart().unwrap();
    let mut c = connect_broker(&cluster.brokers[0].addr).await.unwrap();
    assert_eq!(send(&mut c, batch("e", 4, pid, 1, 1)).await.unwrap(), acked);
    assert_eq!(send(&mut c, delayed).await.unwrap(), scheduled);
    assert_eq!(scheduled.results[0].deliver_at_ms, due);
    await_max(&c, 12).await;
    send(&mut c, batch("g", 1, pid, 1, 6)).await.unwrap();
    await_max(&c, 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_retried_on_the_new_master_after_kill_9_is_stored_once() {
    let mut cluster = ReplicaCluster::start(ReplicaOptions::default()).unwrap();
    let bound = Duration::from_secs(20);
    let master = cluster
        .create_topic_on_master(TOPIC, 2, bound)
        .await
        .unwrap();
    let mut c = connect_broker(cluster.address(master)).await.unwrap();
    let pid = init(&mut c).await;
    let first = send(&mut c, batch("a", 5, pid, 0, 0)).await.unwrap();
    let others: Vec<u64> = cluster
        .peers
        .keys()
        .copied()
        .filter(|&i| i != master)
        .collect();
    cluster
        .await_caught_up(master, &others, bound)
        .await
        .unwrap();
    cluster.node(master).kill9();
    let new_master = cluster
        .await_master(bound, Some(master), None)
        .await
        .unwrap();
    let mut c = connect_broker(cluster.address(new_master)).await.unwrap();
    // The retry the producer would send after losing the ack: its first receipts, once.
    let retried = loop {
        match send(&mut c, batch("a", 5, pid, 0, 0)).await {
            Err(e) if e.code == ErrorCode::NotMaster => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            r => break r.unwrap(),
        }
    };
    assert_eq!(retried.results, first.results);
    assert_eq!(
        send(&mut c, batch("b", 1, pid, 0, 5))
            .await
            .unwrap()
            .results[0]
            .queue_offset,
        5
    );
    await_max(&c, 6).await;
    // The old master comes back as a follower with the same queue.
    cluster.node(master).restart().unwrap();
    cluster
        .await_caught_up(new_master, &[master], bound)
        .await
        .unwrap();
    let ids = |v: Vec<sluice_proto::v1::StoredMessage>| -> Vec<String> {
        v.into_iter().map(|m| m.message_id).collect()
    };
    assert_eq!(
        ids(read_all(cluster.address(master), TOPIC, 0).await.unwrap()),
        ids(read_all(cluster.address(new_master), TOPIC, 0)
            .await
            .unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_producer_stores_no_duplicates_while_the_master_is_killed() {
    let mut cluster = ReplicaCluster::start(ReplicaOptions::default()).unwrap();
    let bound = Duration::from_secs(20);
    let master = cluster
        .create_topic_on_master(TOPIC, 4, bound)
        .await
        .unwrap();
    let config = ClientConfig::new([cluster.nameserver.addr.clone()])
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(300));
    let producer = Producer::builder(config).retries(30).build().unwrap();
    let sender = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut handles = Vec::new();
            for i in 0..6_000 {
                let h = producer
                    .send_async(Message::new(TOPIC, format!("m-{i}")))
                    .await
                    .unwrap();
                handles.push(h);
                if handles.len() == 200 {
                    for h in handles.drain(..) {
                        if let Ok(r) = h.await {
                            acked.push(r.message_id);
                        }
                    }
                }
            }
            for h in handles {
                if let Ok(r) = h.await {
                    acked.push(r.message_id);
                }
            }
            acked
        })
    };
    // Kill the master while the sends are under way; it comes back as a follower.
    let c = connect_broker(cluster.address(master)).await.unwrap();
    wait_until(bound, "a fifth of the messages stored", || {
        let mut c = c.clone();
        async move {
            let offsets = c
                .get_queue_offsets(GetQueueOffsetsRequest {
                    topic: TOPIC.into(),
                })
                .await;
            offsets.is_ok_and(|o| {
                o.into_inner()
                    .queues
                    .iter()
                    .map(|q| q.max_offset)
                    .sum::<u64>()
                    > 1_200
            })
        }
    })
    .await
    .unwrap();
    cluster.node(master).kill9();
    let new_master = cluster
        .await_master(bound, Some(master), None)
        .await
        .unwrap();
    cluster.node(master).restart().unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .unwrap()
        .unwrap();
    producer.shutdown().await;
    assert!(
        acked.len() > 5_000,
        "only {} of 6000 acknowledged",
        acked.len()
    );
    let mut stored = Vec::new();
    for q in 0..4 {
        stored.extend(
            read_all(cluster.address(new_master), TOPIC, q)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.message_id),
        );
    }
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "duplicates stored");
    let missing = acked.iter().filter(|id| !unique.contains(id)).count();
    assert_eq!(missing, 0, "acknowledged messages missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_producers_expire_and_the_rust_producer_takes_a_new_id() {
    let cluster = Cluster::start(
        1,
        ClusterOptions {
            extra_broker_toml: "producer_expiry = \"2s\"\n".into(),
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let mut c = cluster.broker_client(0).await.unwrap();
    c.create_topic(create_topic_request(TOPIC, 1))
        .await
        .unwrap();
    let config = ClientConfig::new([cluster.nameserver.addr.clone()]);
    let producer = Producer::builder(config).build().unwrap();
    producer.send(Message::new(TOPIC, "before")).await.unwrap();
    let pid = init(&mut c).await;
    send(&mut c, batch("a", 1, pid, 0, 0)).await.unwrap();
    // Idle past the expiry: the broker forgets the id (checked every quarter of it). The
    // probe leaves a gap, so it is refused (and stores nothing) before the id expires too.
    wait_until(Duration::from_secs(20), "the producer id expired", || {
        let mut c = c.clone();
        async move {
            match send(&mut c, batch("b", 1, pid, 0, 5)).await {
                Err(e) if e.code == ErrorCode::UnknownProducer => true,
                Err(e) if e.code == ErrorCode::OutOfOrderSequence => false,
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .unwrap();
    // The Rust producer's id expired too: it asks for a new one and sends once.
    producer.send(Message::new(TOPIC, "after")).await.unwrap();
    producer.shutdown().await;
    await_max(&c, 3).await;
}
