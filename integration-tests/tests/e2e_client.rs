//! The client library end to end against real binaries: produce, consume in groups,
//! rebalance, resume after a broker crash.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{
    Admin, ClientConfig, Message, Producer, PullConsumer, PushConsumer, ReceivedMessage,
    StartPosition,
};
use sluice_integration_tests::{wait_until, Cluster, ClusterOptions};

fn client_config(cluster: &Cluster) -> ClientConfig {
    ClientConfig::new([cluster.nameservers()]).request_timeout(Duration::from_secs(10))
}

/// (queue id, offset, body) in the order the handler saw them.
type Seen = Arc<Mutex<Vec<(u32, u64, String)>>>;

async fn push_consumer(
    cluster: &Cluster,
    group: &str,
    topic: &str,
    seen: Seen,
    concurrency: usize,
) -> PushConsumer {
    PushConsumer::builder(client_config(cluster), group)
        .subscribe(topic)
        .start_position(StartPosition::Earliest)
        .heartbeat_interval(Duration::from_millis(200))
        .rebalance_interval(Duration::from_millis(500))
        .commit_interval(Duration::from_millis(500))
        .concurrency(concurrency)
        .start_push(move |m: ReceivedMessage| {
            let seen = seen.clone();
            async move {
                let body = String::from_utf8_lossy(m.body()).into_owned();
                seen.lock().unwrap().push((m.queue_id(), m.offset(), body));
                Ok::<(), std::io::Error>(())
            }
        })
        .await
        .unwrap()
}

async fn pull_consumer(cluster: &Cluster, group: &str, topic: &str) -> PullConsumer {
    PullConsumer::builder(client_config(cluster), group)
        .subscribe(topic)
        .start_position(StartPosition::Earliest)
        .heartbeat_interval(Duration::from_millis(200))
        .rebalance_interval(Duration::from_millis(500))
        .start_pull()
        .await
        .unwrap()
}

async fn produce(producer: &Producer, topic: &str, range: std::ops::Range<u32>) -> Vec<String> {
    let mut handles = Vec::new();
    for i in range {
        let body = format!("msg-{i}");
        handles.push((
            body.clone(),
            producer
                .send_async(Message::new(topic, body.into_bytes()))
                .await
                .unwrap(),
        ));
    }
    let mut acked = Vec::new();
    for (body, h) in handles {
        h.await.unwrap();
        acked.push(body);
    }
    acked
}

fn bodies(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(_, _, b)| b.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_consumed_exactly_once_in_queue_order() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    admin.create_topic("orders", 8, None).await.unwrap();
    let producer = Producer::builder(client_config(&cluster)).build().unwrap();
    let acked = produce(&producer, "orders", 0..10_000).await;
    assert_eq!(acked.len(), 10_000);

    let seen: Seen = Arc::default();
    let consumer = push_consumer(&cluster, "billing", "orders", seen.clone(), 1).await;
    wait_until(
        Duration::from_secs(60),
        "10,000 messages consumed",
        || async { seen.lock().unwrap().len() >= 10_000 },
    )
    .await
    .unwrap();
    consumer.shutdown().await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 10_000, "duplicates delivered with no failure");
    let distinct: HashSet<&str> = seen.iter().map(|(_, _, b)| b.as_str()).collect();
    assert_eq!(distinct.len(), 10_000);
    let mut per_queue: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (q, off, _) in &seen {
        per_queue.entry(*q).or_default().push(*off);
    }
    assert_eq!(per_queue.len(), 8, "round-robin uses every queue");
    for (q, offsets) in per_queue {
        let expected: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(
            offsets, expected,
            "queue {q} delivered out of order or with gaps"
        );
    }
    // Everything committed on shutdown: no lag.
    let lag = admin.group_lag("billing", Some("orders")).await.unwrap();
    assert_eq!(lag.iter().map(|r| r.lag).sum::<u64>(), 0, "{lag:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_resumes_from_committed_offsets_after_broker_kill_9() {
    let mut cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    admin.create_topic("resume", 4, None).await.unwrap();
    let producer = Producer::builder(client_config(&cluster)).build().unwrap();
    let acked = produce(&producer, "resume", 0..1000).await;

    // Consume part of it and commit exactly what was processed.
    let mut first = pull_consumer(&cluster, "readers", "resume").await;
    let mut got_first: Vec<String> = Vec::new();
    while got_first.len() < 400 {
        for m in first.poll(50, Duration::from_secs(5)).await.unwrap() {
            got_first.push(String::from_utf8_lossy(m.body()).into_owned());
        }
    }
    first.commit().await.unwrap();
    first.shutdown().await;

    cluster.brokers[0].kill9();
    cluster.brokers[0].restart().unwrap();

    // Acked before the crash, and more after it.
    let acked_after = produce(&producer, "resume", 1000..1200).await;
    let mut second = pull_consumer(&cluster, "readers", "resume").await;
    let expected_rest = acked.len() + acked_after.len() - got_first.len();
    let mut got_second: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while got_second.len() < expected_rest && std::time::Instant::now() < deadline {
        for m in second.poll(100, Duration::from_secs(2)).await.unwrap() {
            got_second.push(String::from_utf8_lossy(m.body()).into_owned());
        }
    }
    second.commit().await.unwrap();
    second.shutdown().await;

    let all: HashSet<&String> = got_first.iter().chain(got_second.iter()).collect();
    for m in acked.iter().chain(acked_after.iter()) {
        assert!(all.contains(m), "acked {m} never consumed");
    }
    // It resumed from the committed offsets rather than from the start.
    assert_eq!(
        got_second.len(),
        expected_rest,
        "re-delivered committed messages"
    );
    let first_set: HashSet<&String> = got_first.iter().collect();
    assert!(got_second.iter().all(|m| !first_set.contains(m)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_push_consumers_split_queues_and_the_survivor_takes_over() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    admin.create_topic("split", 8, None).await.unwrap();
    let producer = Producer::builder(client_config(&cluster)).build().unwrap();

    let seen_a: Seen = Arc::default();
    let seen_b: Seen = Arc::default();
    let a = push_consumer(&cluster, "workers", "split", seen_a.clone(), 4).await;
    let b = push_consumer(&cluster, "workers", "split", seen_b.clone(), 4).await;
    wait_until(Duration::from_secs(15), "queues split 4/4", || async {
        let (qa, qb) = (a.assignment(), b.assignment());
        let union: HashSet<_> = qa.iter().chain(qb.iter()).cloned().collect();
        qa.len() == 4 && qb.len() == 4 && union.len() == 8
    })
    .await
    .unwrap();

    let mut acked = produce(&producer, "split", 0..2000).await;
    wait_until(Duration::from_secs(30), "first 2000 consumed", || async {
        let all: HashSet<String> = bodies(&seen_a).into_iter().chain(bodies(&seen_b)).collect();
        all.len() >= 2000
    })
    .await
    .unwrap();
    assert!(!seen_a.lock().unwrap().is_empty() && !seen_b.lock().unwrap().is_empty());

    // B leaves; A takes every queue within a rebalance interval (plus scheduling slack).
    b.shutdown().await;
    let left = std::time::Instant::now();
    wait_until(
        Duration::from_secs(5),
        "survivor owns all 8 queues",
        || async { a.assignment().len() == 8 },
    )
    .await
    .unwrap();
    eprintln!("takeover after {:?}", left.elapsed());

    acked.extend(produce(&producer, "split", 2000..4000).await);
    wait_until(Duration::from_secs(30), "all 4000 consumed", || async {
        let all: HashSet<String> = bodies(&seen_a).into_iter().chain(bodies(&seen_b)).collect();
        all.len() >= 4000
    })
    .await
    .unwrap();
    a.shutdown().await;

    let all: HashMap<String, usize> =
        bodies(&seen_a)
            .into_iter()
            .chain(bodies(&seen_b))
            .fold(HashMap::new(), |mut m, b| {
                *m.entry(b).or_default() += 1;
                m
            });
    for m in &acked {
        assert!(all.contains_key(m), "{m} lost");
    }
    let dups: usize = all.values().map(|c| c - 1).sum();
    eprintln!("duplicates across the handover: {dups}");
}

/// The consumer reads raw records and parses them itself: what it hands out must be exactly
/// what was sent and what the broker's own decoding says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumed_message_carries_every_field_it_was_sent_with() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    admin.create_topic("fields", 2, None).await.unwrap();
    let producer = Producer::builder(client_config(&cluster)).build().unwrap();
    let body = b"\x00\xff not text \xfe".to_vec();
    let receipt = producer
        .send(
            Message::new("fields", body.clone())
                .with_tag("t1")
                .with_key("k1")
                .with_key("k2")
                .with_property("p", "v")
                .with_property("empty", "")
                .with_flag(7),
        )
        .await
        .unwrap();

    let mut consumer = pull_consumer(&cluster, "g-fields", "fields").await;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.is_empty() && tokio::time::Instant::now() < deadline {
        got = consumer.poll(10, Duration::from_millis(500)).await.unwrap();
    }
    consumer.shutdown().await;
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0].message;
    assert_eq!(
        (m.topic.as_str(), m.queue_id, m.queue_offset),
        ("fields", receipt.queue_id, receipt.queue_offset)
    );
    assert_eq!(m.message_id, receipt.message_id);
    assert_eq!(m.commit_log_offset, receipt.commit_log_offset);
    assert_eq!(&m.body[..], &body[..]);
    assert_eq!(m.tag, "t1");
    assert_eq!(m.keys, vec!["k1", "k2"]);
    let props: HashMap<String, String> = [("p", "v"), ("empty", "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(m.properties, props);
    assert_eq!((m.flag, m.sys_flag, m.reconsume_times), (7, 0, 0));
    assert!(!m.born_host.is_empty() && !m.store_host.is_empty(), "{m:?}");
    assert!(m.born_timestamp_ms > 0 && m.store_timestamp_ms >= m.born_timestamp_ms);
    assert!(
        m.store_size as usize > body.len() && m.body_crc != 0,
        "{m:?}"
    );

    let mut b = cluster.broker_client(0).await.unwrap();
    let decoded = b
        .pull(sluice_proto::v1::PullRequest {
            topic: "fields".into(),
            queue_id: receipt.queue_id,
            offset: receipt.queue_offset,
            max_messages: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(decoded.records.is_empty(), "records only when asked for");
    // The broker's answer also carries the idempotent batch's sequence, which the client drops.
    let mut broker_view = decoded.messages;
    for b in &mut broker_view {
        assert!(b
            .properties
            .remove(sluice_proto::props::PRODUCER_SEQUENCE)
            .is_some());
    }
    assert_eq!(broker_view, vec![m.clone()]);
}
