//! Ordered consumption with real brokers (a 3-replica group) and in-process consumers that
//! record when each message's processing started and ended: under load, through rebalances and
//! a kill -9 of the master, a queue is never processed by two consumers at once, and no key's
//! message is processed before the one sent before it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_client::{
    Admin, ClientConfig, ConsumerBuilder, Message, OrderlyFailure, Producer, PushConsumer,
    ReceivedMessage, StartPosition,
};
use sluice_integration_tests::replica::{ReplicaCluster, ReplicaOptions};
use sluice_integration_tests::wait_until;

const TOPIC: &str = "orders";
const GROUP: &str = "order-status";
const QUEUES: u32 = 6;
const KEYS: usize = 12;

#[derive(Debug, Clone)]
struct Rec {
    consumer: usize,
    queue: u32,
    key: String,
    seq: u64,
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct Log {
    recs: Mutex<Vec<Rec>>,
}

impl Log {
    fn len(&self) -> usize {
        self.recs.lock().unwrap().len()
    }

    fn snapshot(&self) -> Vec<Rec> {
        self.recs.lock().unwrap().clone()
    }
}

fn options() -> ReplicaOptions {
    ReplicaOptions {
        extra_broker_toml: "orderly_lock_lease_ms = 3000\n".into(),
        ..ReplicaOptions::default()
    }
}

fn config(cluster: &ReplicaCluster) -> ClientConfig {
    ClientConfig::new([cluster.nameserver.addr.clone()])
        .request_timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_millis(500))
}

async fn start_consumer(cluster: &ReplicaCluster, id: usize, log: Arc<Log>) -> PushConsumer {
    ConsumerBuilder::new(config(cluster), GROUP)
        .subscribe(TOPIC)
        .orderly(OrderlyFailure::Block)
        .start_position(StartPosition::Earliest)
        .heartbeat_interval(Duration::from_millis(500))
        .rebalance_interval(Duration::from_secs(1))
        .commit_interval(Duration::from_millis(300))
        .start_push(move |m: ReceivedMessage| {
            let log = log.clone();
            async move {
                let start = Instant::now();
                let body = String::from_utf8_lossy(&m.message.body).into_owned();
                let (key, seq) = body.split_once(':').unwrap_or(("?", "0"));
                // Long enough that two owners at once would overlap.
                tokio::time::sleep(Duration::from_millis(2)).await;
                log.recs.lock().unwrap().push(Rec {
                    consumer: id,
                    queue: m.message.queue_id,
                    key: key.to_string(),
                    seq: seq.parse().unwrap_or(u64::MAX),
                    start,
                    end: Instant::now(),
                });
                Ok::<(), std::convert::Infallible>(())
            }
        })
        .await
        .unwrap()
}

/// Sends `key:0`, `key:1`, ... for every key, one after another per key (each waits for its
/// ack, retrying the same number on failure), until `stop`; returns the last acked per key.
fn start_producer(
    cluster: &ReplicaCluster,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(String, u64)>> {
    let producer = Producer::builder(config(cluster))
        .retries(3)
        .build()
        .unwrap();
    (0..KEYS)
        .map(|k| {
            let producer = producer.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let key = format!("k{k}");
                let mut next = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let m = Message::new(TOPIC, format!("{key}:{next}"));
                    match producer.send_with_key(m, &key).await {
                        Ok(_) => next += 1,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (key, next)
            })
        })
        .collect()
}

/// No queue was ever processed by two consumers at once (intervals of one queue never
/// overlap), and no message of a key was processed before its predecessor had been.
fn check(recs: &[Rec], acked: &HashMap<String, u64>) {
    let mut by_queue: BTreeMap<u32, Vec<&Rec>> = BTreeMap::new();
    for r in recs {
        by_queue.entry(r.queue).or_default().push(r);
    }
    for (q, rs) in &mut by_queue {
        rs.sort_by_key(|r| r.start);
        let mut busy_until: Option<&Rec> = None;
        for r in rs.iter() {
            if let Some(b) = busy_until {
                assert!(
                    r.start >= b.end,
                    "queue {q}: consumer {} started {}:{} while consumer {} was on {}:{}",
                    r.consumer,
                    r.key,
                    r.seq,
                    b.consumer,
                    b.key,
                    b.seq
                );
            }
            if busy_until.is_none_or(|b| r.end > b.end) {
                busy_until = Some(r);
            }
        }
    }
    let mut by_key: HashMap<&str, Vec<&Rec>> = HashMap::new();
    for r in recs {
        by_key.entry(r.key.as_str()).or_default().push(r);
    }
    for (key, want) in acked {
        let mut rs = by_key.remove(key.as_str()).unwrap_or_default();
        rs.sort_by_key(|r| r.start);
        let mut done: Option<u64> = None;
        for r in rs {
            let allowed = done.map_or(0, |d| d + 1);
            assert!(
                r.seq <= allowed,
                "{key}:{} processed (consumer {}) before {key}:{allowed}",
                r.seq,
                r.consumer
            );
            done = Some(done.map_or(r.seq, |d| d.max(r.seq)));
        }
        let got = done.map_or(0, |d| d + 1);
        assert!(got >= *want, "{key}: {want} acked, {got} processed");
    }
}

async fn wait_for_more(log: &Log, n: usize, what: &str) {
    let target = log.len() + n;
    wait_until(Duration::from_secs(60), what, || async {
        log.len() >= target
    })
    .await
    .unwrap();
}

async fn stop_producer(
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<(String, u64)>>,
) -> HashMap<String, u64> {
    stop.store(true, Ordering::Relaxed);
    let mut acked = HashMap::new();
    for t in tasks {
        let (k, n) = t.await.unwrap();
        acked.insert(k, n);
    }
    acked
}

/// Every acked message of every key processed (the highest sequence of each key seen).
async fn wait_all_processed(log: &Log, acked: &HashMap<String, u64>) {
    wait_until(
        Duration::from_secs(60),
        "every acked message processed",
        || async {
            let mut top: HashMap<String, u64> = HashMap::new();
            for r in log.snapshot() {
                let e = top.entry(r.key).or_insert(0);
                *e = (*e).max(r.seq + 1);
            }
            acked
                .iter()
                .all(|(k, n)| top.get(k).copied().unwrap_or(0) >= *n)
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_under_load_keep_each_keys_order_and_one_owner_per_queue() {
    let cluster = ReplicaCluster::start(options()).unwrap();
    cluster
        .create_topic_on_master(TOPIC, QUEUES, Duration::from_secs(20))
        .await
        .unwrap();
    let log = Arc::new(Log::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = vec![start_consumer(&cluster, 0, log.clone()).await];
    let producer = start_producer(&cluster, stop.clone());
    wait_for_more(&log, 300, "the first consumer at work").await;
    for id in 1..3 {
        consumers.push(start_consumer(&cluster, id, log.clone()).await);
        wait_for_more(&log, 300, "work after a consumer joined").await;
    }
    // Everyone holds something, and the group says it is orderly with the broker's holders.
    wait_until(
        Duration::from_secs(20),
        "queues split three ways",
        || async { consumers.iter().all(|c| !c.assignment().is_empty()) },
    )
    .await
    .unwrap();
    let admin = Admin::new(config(&cluster)).unwrap();
    let d = admin.describe_group(GROUP).await.unwrap();
    assert_eq!(d.group.mode, "orderly");
    let ids: Vec<String> = consumers
        .iter()
        .map(|c| c.client_id().to_string())
        .collect();
    let holders: Vec<&str> = d
        .queues
        .iter()
        .filter_map(|q| q.member.as_deref())
        .collect();
    assert!(
        !holders.is_empty() && holders.iter().all(|h| ids.iter().any(|i| i == h)),
        "{holders:?} vs {ids:?}"
    );

    // The first one leaves: its queues move on only after it unlocked them.
    consumers.remove(0).shutdown().await;
    wait_for_more(&log, 300, "work after a consumer left").await;
    let acked = stop_producer(&stop, producer).await;
    wait_all_processed(&log, &acked).await;
    for c in consumers {
        c.shutdown().await;
    }
    let recs = log.snapshot();
    check(&recs, &acked);
    // Hand-overs without faults: the leaving owner commits before it unlocks and the next one
    // starts from that commit (the lock's answer carries it), so nothing is processed twice.
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<&Rec> = recs
        .iter()
        .filter(|r| !seen.insert((r.key.clone(), r.seq)))
        .collect();
    assert!(
        twice.is_empty(),
        "processed again after a hand-over: {twice:?}"
    );
    let moved = (0..QUEUES)
        .filter(|q| {
            let mut owners: Vec<usize> = recs
                .iter()
                .filter(|r| r.queue == *q)
                .map(|r| r.consumer)
                .collect();
            owners.sort_unstable();
            owners.dedup();
            owners.len() > 1
        })
        .count();
    assert!(moved > 0, "no queue changed hands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_master_never_gives_a_queue_two_owners() {
    let mut cluster = ReplicaCluster::start(options()).unwrap();
    let master = cluster
        .create_topic_on_master(TOPIC, QUEUES, Duration::from_secs(20))
        .await
        .unwrap();
    let log = Arc::new(Log::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for id in 0..3 {
        consumers.push(start_consumer(&cluster, id, log.clone()).await);
    }
    let producer = start_producer(&cluster, stop.clone());
    wait_for_more(&log, 500, "consumers at work").await;
    cluster.node(master).kill9();
    let new_master = cluster
        .await_master(Duration::from_secs(20), Some(master), Some(TOPIC))
        .await
        .unwrap();
    assert_ne!(new_master, master);
    wait_for_more(&log, 500, "work after the failover").await;
    // One consumer leaves under the new master too.
    consumers.remove(0).shutdown().await;
    wait_for_more(&log, 300, "work after a consumer left").await;
    let acked = stop_producer(&stop, producer).await;
    wait_all_processed(&log, &acked).await;
    for c in consumers {
        c.shutdown().await;
    }
    check(&log.snapshot(), &acked);
}
