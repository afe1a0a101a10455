//! Delayed messages across a master failover, with real processes: 100,000 timers pending in
//! a 3-replica group, the master killed with SIGKILL while they fire. Every timer must be
//! delivered exactly once, never before it is due, and every replica must hold the same queues.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use sluice_client::{ClientConfig, Message, Producer};
use sluice_integration_tests::replica::{ReplicaCluster, ReplicaOptions};
use sluice_integration_tests::{connect_broker, wait_until};
use sluice_proto::v1::GetQueueOffsetsRequest;

const TOPIC: &str = "timers";
const QUEUES: u32 = 4;
const TIMERS: usize = 100_000;
const BATCH: usize = 500;

/// Messages delivered to the topic on replica `id` (sum of queue max offsets).
async fn delivered(cluster: &ReplicaCluster, id: u64) -> u64 {
    let Ok(mut c) = connect_broker(cluster.address(id)).await else {
        return 0;
    };
    match c
        .get_queue_offsets(GetQueueOffsetsRequest {
            topic: TOPIC.into(),
        })
        .await
    {
        Ok(r) => r.into_inner().queues.iter().map(|q| q.max_offset).sum(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_master_while_timers_fire_loses_duplicates_and_hurries_none() {
    let mut cluster = ReplicaCluster::start(ReplicaOptions::default()).unwrap();
    let bound = Duration::from_secs(20);
    let master = cluster
        .create_topic_on_master(TOPIC, QUEUES, bound)
        .await
        .unwrap();
    let config = ClientConfig::new([cluster.nameserver.addr.clone()])
        .request_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_millis(500));
    let producer = Producer::builder(config).retries(5).build().unwrap();

    // Due times spread over 3-13 s from now, in batches of one due time per queue key.
    let start = SystemTime::now();
    let mut due: HashMap<String, i64> = HashMap::new();
    let mut sends = Vec::new();
    for b in 0..TIMERS / BATCH {
        let at =
            start + Duration::from_millis(3_000 + (b as u64 * 10_000) / (TIMERS / BATCH) as u64);
        let batch: Vec<Message> = (0..BATCH)
            .map(|i| Message::new(TOPIC, format!("t-{}", b * BATCH + i)).deliver_at(at))
            .collect();
        let p = producer.clone();
        sends.push(tokio::spawn(async move {
            p.send_batch_with_key(batch, &format!("k{b}")).await
        }));
        if sends.len() >= 16 {
            for h in sends.drain(..) {
                for receipt in h.await.unwrap().unwrap() {
                    due.insert(receipt.message_id.clone(), receipt.deliver_at_ms.unwrap());
                }
            }
        }
    }
    for h in sends {
        for receipt in h.await.unwrap().unwrap() {
            due.insert(receipt.message_id.clone(), receipt.deliver_at_ms.unwrap());
        }
    }
    assert_eq!(due.len(), TIMERS);
    producer.shutdown().await;

    // Kill the master once a tenth has fired; restart it as a follower.
    wait_until(
        Duration::from_secs(60),
        "a tenth of the timers fired",
        || async { delivered(&cluster, master).await >= (TIMERS / 10) as u64 },
    )
    .await
    .unwrap();
    cluster.node(master).kill9();
    let new_master = cluster
        .await_master(bound, Some(master), None)
        .await
        .unwrap();
    cluster.node(master).restart().unwrap();
    wait_until(
        Duration::from_secs(120),
        "every timer delivered",
        || async { delivered(&cluster, new_master).await >= TIMERS as u64 },
    )
    .await
    .unwrap();
    let all: Vec<u64> = cluster.peers.keys().copied().collect();
    cluster
        .await_caught_up(new_master, &all, Duration::from_secs(60))
        .await
        .unwrap();

    let mut per_replica = Vec::new();
    for &id in &all {
        let mut seen: HashMap<String, u32> = HashMap::new();
        let mut queues = Vec::new();
        for q in 0..QUEUES {
            let msgs = cluster.read_queue(id, TOPIC, q).await.unwrap();
            for m in &msgs {
                *seen.entry(m.message_id.clone()).or_default() += 1;
                let due_ms = due
                    .get(&m.message_id)
                    .copied()
                    .expect("a message that was never sent");
                assert!(
                    m.store_timestamp_ms >= due_ms,
                    "{} delivered {} ms early on replica {id}",
                    m.message_id,
                    due_ms - m.store_timestamp_ms
                );
            }
            queues.push(
                msgs.iter()
                    .map(|m| m.message_id.clone())
                    .collect::<Vec<_>>(),
            );
        }
        let duplicated = seen.values().filter(|&&n| n > 1).count();
        let lost = due.keys().filter(|id| !seen.contains_key(*id)).count();
        assert_eq!((lost, duplicated), (0, 0), "replica {id}: lost, duplicated");
        per_replica.push(queues);
    }
    assert!(
        per_replica.windows(2).all(|w| w[0] == w[1]),
        "replicas hold different queues"
    );
}
