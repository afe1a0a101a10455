//! Read hints in a real 3-replica group: the master sends a consumer that is behind to a slave
//! (the behind-threshold is set to 0 here), a slave that is cut off or killed sends it back or
//! is skipped, and through every switch each message is consumed once, in order per queue.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_client::{ClientConfig, ConsumerBuilder, PullConsumer, StartPosition};
use sluice_integration_tests::replica::{ReplicaCluster, ReplicaOptions};
use sluice_integration_tests::{connect_broker, create_topic_request, wait_until};
use sluice_proto::v1::{QueryOffsetRequest, ReadHintReason, ReadStats, SendRequest};

const TOPIC: &str = "reads";
const GROUP_NAME: &str = "readers";

/// A started group with the topic created: (cluster, master id, slave ids).
async fn start(queues: u32, fault_injection: bool) -> (ReplicaCluster, u64, Vec<u64>) {
    let cluster = ReplicaCluster::start(ReplicaOptions {
        fault_injection,
        // Every reader that is behind at all counts as "far behind".
        extra_broker_toml: "read_hint_behind_memory_ratio = 0.0\n".into(),
        ..Default::default()
    })
    .unwrap();
    let master = cluster
        .await_master(Duration::from_secs(10), None, None)
        .await
        .unwrap();
    let mut m = connect_broker(cluster.address(master)).await.unwrap();
    m.create_topic(create_topic_request(TOPIC, queues))
        .await
        .unwrap();
    cluster
        .await_master(Duration::from_secs(10), None, Some(TOPIC))
        .await
        .unwrap();
    let slaves = cluster
        .peers
        .keys()
        .copied()
        .filter(|&id| id != master)
        .collect();
    (cluster, master, slaves)
}

/// Appends messages `from..from + n` to `queue` through the master, in batches.
async fn produce(cluster: &ReplicaCluster, master: u64, queue: u32, from: u64, n: u64) {
    let mut c = connect_broker(cluster.address(master)).await.unwrap();
    let mut i = from;
    while i < from + n {
        let batch = (from + n - i).min(50);
        let messages = (i..i + batch)
            .map(|k| sluice_proto::v1::Message {
                body: format!("q{queue}-{k}").into_bytes().into(),
                ..Default::default()
            })
            .collect();
        c.send(SendRequest {
            topic: TOPIC.into(),
            queue_id: queue,
            messages,
            ..Default::default()
        })
        .await
        .unwrap();
        i += batch;
    }
}

async fn consumer(cluster: &ReplicaCluster, batch: u32, buffer: usize) -> PullConsumer {
    ConsumerBuilder::new(
        ClientConfig::new([cluster.nameserver.addr.clone()])
            .request_timeout(Duration::from_secs(2)),
        GROUP_NAME,
    )
    .subscribe(TOPIC)
    .start_position(StartPosition::Earliest)
    .poll_timeout(Duration::from_secs(1))
    .pull_batch_size(batch)
    .max_unfinished_per_queue(buffer)
    .buffer_size(buffer)
    .start_pull()
    .await
    .unwrap()
}

/// What a consumer received so far; checks every message arrives once and in order.
#[derive(Default)]
struct Received {
    next: BTreeMap<u32, u64>,
}

impl Received {
    fn total(&self) -> u64 {
        self.next.values().sum()
    }

    /// Polls once (up to 1 s) and checks what arrived.
    async fn poll(&mut self, c: &mut PullConsumer, max: usize) {
        for m in c.poll(max, Duration::from_secs(1)).await.unwrap() {
            let q = m.message.queue_id;
            let next = self.next.entry(q).or_default();
            assert_eq!(
                m.message.queue_offset, *next,
                "queue {q}: gap, repeat or reorder"
            );
            let body = String::from_utf8_lossy(&m.message.body).into_owned();
            assert_eq!(body, format!("q{q}-{next}"), "queue {q}: wrong message");
            *next += 1;
        }
    }

    /// Polls until `expected[q]` messages arrived on every queue q.
    async fn until(&mut self, c: &mut PullConsumer, expected: &BTreeMap<u32, u64>, t: Duration) {
        let start = Instant::now();
        while expected
            .iter()
            .any(|(q, n)| self.next.get(q).copied().unwrap_or(0) < *n)
        {
            assert!(
                start.elapsed() < t,
                "consumed {:?} of {expected:?} within {t:?}",
                self.next
            );
            self.poll(c, 64).await;
        }
        assert_eq!(&self.next, expected, "more than was produced");
    }
}

fn hints(s: &ReadStats, reason: ReadHintReason) -> u64 {
    s.hints
        .iter()
        .filter(|h| h.reason == reason as i32)
        .map(|h| h.count)
        .sum()
}

/// The group's committed offset of `queue` as the group's master has it now: on a loaded
/// machine leadership can move during a test, and the old master, a follower then, may not have
/// applied the last commit yet when it is asked.
async fn committed(cluster: &ReplicaCluster, queue: u32) -> Option<u64> {
    let master = cluster
        .await_master(Duration::from_secs(10), None, None)
        .await
        .unwrap();
    let mut c = connect_broker(cluster.address(master)).await.unwrap();
    let r = c
        .query_offset(QueryOffsetRequest {
            group: GROUP_NAME.into(),
            topic: TOPIC.into(),
            queue_id: queue,
        })
        .await
        .unwrap()
        .into_inner();
    r.found.then_some(r.offset)
}

/// Polls a few messages at a time until a slave has served some; returns that slave.
async fn reading_slave(
    cluster: &ReplicaCluster,
    slaves: &[u64],
    c: &mut PullConsumer,
    got: &mut Received,
) -> u64 {
    let start = Instant::now();
    loop {
        for &s in slaves {
            if cluster.read_stats(s).await.unwrap().messages > 0 {
                return s;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no slave served a pull"
        );
        got.poll(c, 4).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_behind_moves_to_a_slave_and_reads_everything_once() {
    let (cluster, master, slaves) = start(4, false).await;
    let per_queue = 300;
    for q in 0..4 {
        produce(&cluster, master, q, 0, per_queue).await;
    }
    cluster
        .await_caught_up(master, &slaves, Duration::from_secs(10))
        .await
        .unwrap();

    let mut c = consumer(&cluster, 16, 64).await;
    let mut got = Received::default();
    let expected: BTreeMap<u32, u64> = (0..4).map(|q| (q, per_queue)).collect();
    got.until(&mut c, &expected, Duration::from_secs(20)).await;
    c.commit().await.unwrap();

    // The master sent the consumer away and the slaves served most of the backlog.
    let on_master = cluster.read_stats(master).await.unwrap();
    assert!(
        hints(&on_master, ReadHintReason::ConsumerBehind) > 0,
        "{on_master:?}"
    );
    assert!(on_master.redirects > 0, "{on_master:?}");
    let mut from_slaves = 0;
    for &s in &slaves {
        let st = cluster.read_stats(s).await.unwrap();
        assert!(st.slave_read_enable, "{st:?}");
        from_slaves += st.messages;
    }
    assert_eq!(
        from_slaves + on_master.messages,
        got.total(),
        "counted once"
    );
    assert!(
        from_slaves * 2 > got.total(),
        "slaves served {from_slaves} of {}",
        got.total()
    );
    // Offsets committed while reading from slaves reached the master.
    for q in 0..4 {
        assert_eq!(committed(&cluster, q).await, Some(per_queue), "queue {q}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_slave_sends_the_consumer_back_without_gaps() {
    let (cluster, master, slaves) = start(1, true).await;
    produce(&cluster, master, 0, 0, 400).await;
    cluster
        .await_caught_up(master, &slaves, Duration::from_secs(10))
        .await
        .unwrap();
    // A small buffer: the consumer pulls only as fast as the test polls.
    let mut c = consumer(&cluster, 8, 8).await;
    let mut got = Received::default();
    let held = reading_slave(&cluster, &slaves, &mut c, &mut got).await;
    let other = *slaves.iter().find(|&&s| s != held).unwrap();

    // Cut the slave off from the group; what is written from now on never reaches it.
    let peers: Vec<u64> = cluster
        .peers
        .keys()
        .copied()
        .filter(|&p| p != held)
        .collect();
    cluster.isolate(held, &peers).await.unwrap();
    produce(&cluster, master, 0, 400, 300).await;
    got.until(&mut c, &BTreeMap::from([(0, 700)]), Duration::from_secs(25))
        .await;

    let cut = cluster.read_stats(held).await.unwrap();
    assert!(
        cut.redirects > 0,
        "the cut-off slave sent the consumer away: {cut:?}"
    );
    assert!(
        cut.messages <= 400,
        "it cannot have served what was written after the cut: {cut:?}"
    );
    let rest = cluster.read_stats(master).await.unwrap().messages
        + cluster.read_stats(other).await.unwrap().messages;
    assert_eq!(rest + cut.messages, 700, "every message served once");
    cluster.heal(held).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_slave_being_read_loses_nothing() {
    let (mut cluster, master, slaves) = start(1, false).await;
    produce(&cluster, master, 0, 0, 400).await;
    cluster
        .await_caught_up(master, &slaves, Duration::from_secs(10))
        .await
        .unwrap();
    let mut c = consumer(&cluster, 8, 8).await;
    let mut got = Received::default();
    let victim = reading_slave(&cluster, &slaves, &mut c, &mut got).await;
    cluster.node(victim).kill9();
    produce(&cluster, master, 0, 400, 200).await;
    got.until(&mut c, &BTreeMap::from([(0, 600)]), Duration::from_secs(25))
        .await;
    c.commit().await.unwrap();
    assert_eq!(committed(&cluster, 0).await, Some(600));
    // The consumer went on without the dead slave; the master knows it is gone.
    wait_until(
        Duration::from_secs(5),
        "the master to see the slave down",
        || async {
            cluster.status(master).await.is_ok_and(|s| {
                s.replicas
                    .iter()
                    .any(|p| p.replica_id == victim && !p.active)
            })
        },
    )
    .await
    .unwrap();
    c.shutdown().await;
}
