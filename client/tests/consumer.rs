//! Push and pull consumers against fake brokers: delivery, commits, redelivery, rebalancing.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{
    ClientConfig, ConsumerBuilder, HandlerError, Message, Producer, ReceivedMessage, StartPosition,
};
use support::{start_broker, wait_for, FakeNameServer};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn config(ns: &FakeNameServer) -> ClientConfig {
    ClientConfig::new([ns.addr.clone()]).request_timeout(Duration::from_secs(2))
}

fn builder(ns: &FakeNameServer, group: &str, topic: &str) -> ConsumerBuilder {
    ConsumerBuilder::new(config(ns), group)
        .subscribe(topic)
        .start_position(StartPosition::Earliest)
        .heartbeat_interval(Duration::from_millis(200))
        .rebalance_interval(Duration::from_millis(500))
        .commit_interval(Duration::from_millis(100))
        .poll_timeout(Duration::from_millis(500))
        .drain_timeout(Duration::from_secs(2))
}

async fn produce(ns: &FakeNameServer, topic: &str, n: usize) {
    let p = Producer::builder(config(ns)).build().unwrap();
    for i in 0..n {
        p.send(Message::new(topic, format!("m{i}"))).await.unwrap();
    }
}

/// A handler that forwards every delivery to a channel.
fn forwarder() -> (
    impl Fn(ReceivedMessage) -> futures::future::Ready<Result<(), HandlerError>>,
    mpsc::UnboundedReceiver<ReceivedMessage>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |m: ReceivedMessage| {
        let _ = tx.send(m);
        futures::future::ready(Ok(()))
    };
    (handler, rx)
}

async fn collect(
    rx: &mut mpsc::UnboundedReceiver<ReceivedMessage>,
    n: usize,
) -> Vec<ReceivedMessage> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(m)) => got.push(m),
            _ => panic!("got only {} of {n} messages", got.len()),
        }
    }
    got
}

#[tokio::test]
async fn push_consumer_delivers_everything_and_commits() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    let b = start_broker("broker-b", &[&ns]).await;
    a.add_topic("t", 2);
    b.add_topic("t", 2);
    produce(&ns, "t", 100).await;
    let (handler, mut rx) = forwarder();
    let c = builder(&ns, "g", "t")
        .concurrency(4)
        .start_push(handler)
        .await
        .unwrap();
    let got = collect(&mut rx, 100).await;
    let ids: BTreeSet<String> = got.iter().map(|m| m.message_id().to_string()).collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(c.assignment().len(), 4);
    for broker in [&a, &b] {
        for q in 0..2 {
            let max = broker.messages("t", q).len() as u64;
            wait_for("commit", WAIT, || {
                broker.committed("g", "t", q) == Some(max)
            })
            .await;
        }
    }
    c.shutdown().await;
    // Shutdown says goodbye at once instead of waiting for the expiry.
    assert!(a.members("g").is_empty() && b.members("g").is_empty());
}

#[tokio::test]
async fn handler_failure_redelivers_and_holds_the_commit_point() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    produce(&ns, "t", 3).await;
    let allow = Arc::new(AtomicBool::new(false));
    let attempts: Arc<Mutex<HashMap<u64, Vec<u32>>>> = Arc::default();
    let (allow2, attempts2) = (allow.clone(), attempts.clone());
    let handler = move |m: ReceivedMessage| {
        let allow = allow2.clone();
        let attempts = attempts2.clone();
        async move {
            attempts
                .lock()
                .unwrap()
                .entry(m.offset())
                .or_default()
                .push(m.reconsume_times());
            if m.offset() == 1 && !allow.load(Ordering::SeqCst) {
                return Err::<(), HandlerError>("not yet".into());
            }
            Ok(())
        }
    };
    let c = builder(&ns, "g", "t")
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(80))
        .start_push(handler)
        .await
        .unwrap();
    // 0 and 2 are done, 1 keeps failing: the commit point stays at 1.
    wait_for("commit at 1", WAIT, || a.committed("g", "t", 0) == Some(1)).await;
    wait_for("several retries", WAIT, || {
        attempts
            .lock()
            .unwrap()
            .get(&1)
            .is_some_and(|v| v.len() >= 4)
    })
    .await;
    // Several commit intervals later (retries back off 80 ms at most, commits run every
    // 100 ms), the commit point has not moved past the failing message.
    let tries = attempts.lock().unwrap()[&1].len();
    wait_for("more retries", WAIT, || {
        attempts.lock().unwrap()[&1].len() >= tries + 4
    })
    .await;
    assert_eq!(a.committed("g", "t", 0), Some(1));
    allow.store(true, Ordering::SeqCst);
    wait_for("commit past the retried message", WAIT, || {
        a.committed("g", "t", 0) == Some(3)
    })
    .await;
    let seen = attempts.lock().unwrap().clone();
    assert_eq!(seen[&0], [0]);
    assert_eq!(seen[&2], [0]);
    let retries = &seen[&1];
    assert!(retries.windows(2).all(|w| w[1] == w[0] + 1), "{retries:?}");
    c.shutdown().await;
}

#[tokio::test]
async fn consumers_split_queues_and_take_over_on_leave() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    let b = start_broker("broker-b", &[&ns]).await;
    a.add_topic("t", 4);
    b.add_topic("t", 4);
    let (h1, mut rx1) = forwarder();
    let (h2, mut rx2) = forwarder();
    let c1 = builder(&ns, "g", "t").start_push(h1).await.unwrap();
    wait_for("c1 owns all", WAIT, || c1.assignment().len() == 8).await;
    let c2 = builder(&ns, "g", "t").start_push(h2).await.unwrap();
    wait_for("split", WAIT, || {
        c1.assignment().len() == 4 && c2.assignment().len() == 4
    })
    .await;
    let s1: BTreeSet<_> = c1.assignment().into_iter().collect();
    let s2: BTreeSet<_> = c2.assignment().into_iter().collect();
    assert!(s1.is_disjoint(&s2));
    // Sorted split: the smaller client id takes the first half (broker-a's queues).
    let (first, _) = if c1.client_id() < c2.client_id() {
        (&s1, &s2)
    } else {
        (&s2, &s1)
    };
    assert!(
        first.iter().all(|q| q.broker_name == "broker-a"),
        "{first:?}"
    );

    produce(&ns, "t", 80).await;
    let mut ids = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while ids.len() < 80 {
        tokio::select! {
            Some(m) = rx1.recv() => { ids.insert(m.message_id().to_string()); }
            Some(m) = rx2.recv() => { ids.insert(m.message_id().to_string()); }
            _ = tokio::time::sleep_until(deadline) => panic!("got {} of 80", ids.len()),
        }
    }
    c2.shutdown().await;
    wait_for("c1 takes over", WAIT, || c1.assignment().len() == 8).await;
    produce(&ns, "t", 8).await;
    let got = collect(&mut rx1, 8).await;
    assert_eq!(got.len(), 8);
    c1.shutdown().await;
}

#[tokio::test]
async fn pull_consumer_commits_and_a_successor_resumes() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 2);
    produce(&ns, "t", 10).await;
    let mut c = builder(&ns, "g", "t")
        .auto_commit(false)
        .start_pull()
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 10 {
        let batch = c.poll(4, WAIT).await.unwrap();
        assert!(!batch.is_empty() && batch.len() <= 4);
        got.extend(batch);
    }
    assert!(c
        .poll(10, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    c.commit().await.unwrap();
    for q in 0..2 {
        assert_eq!(
            a.committed("g", "t", q),
            Some(a.messages("t", q).len() as u64)
        );
    }
    c.shutdown().await;

    produce(&ns, "t", 5).await;
    let mut c = builder(&ns, "g", "t")
        .auto_commit(false)
        .start_pull()
        .await
        .unwrap();
    let mut bodies = BTreeSet::new();
    while bodies.len() < 5 {
        for m in c.poll(10, WAIT).await.unwrap() {
            assert!(bodies.insert(m.body().clone()), "duplicate delivery");
        }
    }
    assert!(c
        .poll(10, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    c.shutdown().await;
}

#[tokio::test]
async fn uncommitted_pull_messages_are_delivered_again() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    produce(&ns, "t", 6).await;
    let mut c = builder(&ns, "g", "t")
        .auto_commit(false)
        .start_pull()
        .await
        .unwrap();
    let mut first = Vec::new();
    while first.len() < 6 {
        first.extend(c.poll(3, WAIT).await.unwrap());
    }
    c.shutdown().await;
    assert_eq!(a.committed("g", "t", 0).unwrap_or(0), 0);
    let mut c = builder(&ns, "g", "t")
        .auto_commit(false)
        .start_pull()
        .await
        .unwrap();
    let mut again = Vec::new();
    while again.len() < 6 {
        again.extend(c.poll(6, WAIT).await.unwrap());
    }
    assert_eq!(first, again);
    c.shutdown().await;
}

#[tokio::test]
async fn auto_commit_finishes_the_previous_poll() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    produce(&ns, "t", 4).await;
    let mut c = builder(&ns, "g", "t").start_pull().await.unwrap();
    let mut got = 0;
    while got < 4 {
        got += c.poll(4, WAIT).await.unwrap().len();
    }
    // Nothing is committed until the application comes back for more.
    assert_eq!(a.committed("g", "t", 0).unwrap_or(0), 0);
    assert!(c
        .poll(4, Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty());
    wait_for("auto commit", WAIT, || a.committed("g", "t", 0) == Some(4)).await;
    c.shutdown().await;
}

#[tokio::test]
async fn offset_below_the_queue_minimum_moves_to_it() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    produce(&ns, "t", 10).await;
    a.trim("t", 0, 6);
    a.set_committed("g", "t", 0, 2);
    let (handler, mut rx) = forwarder();
    let c = builder(&ns, "g", "t").start_push(handler).await.unwrap();
    let got = collect(&mut rx, 4).await;
    let offsets: BTreeSet<u64> = got.iter().map(|m| m.offset()).collect();
    assert_eq!(offsets, (6..10).collect());
    wait_for("commit", WAIT, || a.committed("g", "t", 0) == Some(10)).await;
    c.shutdown().await;
}

#[tokio::test]
async fn offset_above_the_queue_maximum_moves_to_it() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    produce(&ns, "t", 3).await;
    a.set_committed("g", "t", 0, 50);
    let (handler, mut rx) = forwarder();
    let c = builder(&ns, "g", "t").start_push(handler).await.unwrap();
    wait_for("moved to max", WAIT, || a.committed("g", "t", 0) == Some(3)).await;
    produce(&ns, "t", 1).await;
    let got = collect(&mut rx, 1).await;
    assert_eq!(got[0].offset(), 3);
    c.shutdown().await;
}

#[tokio::test]
async fn latest_start_skips_older_messages() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 2);
    produce(&ns, "t", 6).await;
    let (handler, mut rx) = forwarder();
    let c = builder(&ns, "g", "t")
        .start_position(StartPosition::Latest)
        .start_push(handler)
        .await
        .unwrap();
    wait_for("assignment", WAIT, || c.assignment().len() == 2).await;
    // The start position is pinned by a commit before new messages arrive.
    wait_for("start committed", WAIT, || {
        a.committed("g", "t", 0) == Some(3) && a.committed("g", "t", 1) == Some(3)
    })
    .await;
    produce(&ns, "t", 2).await;
    let got = collect(&mut rx, 2).await;
    assert!(got.iter().all(|m| m.offset() == 3), "{got:?}");
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv())
        .await
        .is_err());
    c.shutdown().await;
}

#[tokio::test]
async fn starting_on_a_missing_topic_fails() {
    let ns = FakeNameServer::start().await;
    let _a = start_broker("broker-a", &[&ns]).await;
    let (handler, _rx) = forwarder();
    let err = builder(&ns, "g", "missing")
        .start_push(handler)
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.code(),
        Some(sluice_client::ErrorCode::TopicNotFound),
        "{err}"
    );
    let err = ConsumerBuilder::new(config(&ns), "g")
        .start_pull()
        .await
        .err()
        .unwrap();
    assert!(matches!(err, sluice_client::Error::Config(_)), "{err}");
}

/// A handler that reports each message and then waits until the test opens the gate.
type HandlerFuture = futures::future::BoxFuture<'static, Result<(), HandlerError>>;

fn gated() -> (
    impl Fn(ReceivedMessage) -> HandlerFuture,
    mpsc::UnboundedReceiver<u64>,
    tokio::sync::watch::Sender<bool>,
) {
    use futures::FutureExt;
    let (tx, rx) = mpsc::unbounded_channel();
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let handler = move |m: ReceivedMessage| {
        let tx = tx.clone();
        let mut gate = gate_rx.clone();
        async move {
            let _ = tx.send(m.offset());
            let _ = gate.wait_for(|open| *open).await;
            Ok(())
        }
        .boxed()
    };
    (handler, rx, gate_tx)
}

#[tokio::test]
async fn shutdown_waits_for_running_handlers_then_commits_them() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    produce(&ns, "t", 1).await;
    let (handler, mut started, gate) = gated();
    let c = builder(&ns, "g", "t").start_push(handler).await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, started.recv()).await.unwrap(),
        Some(0)
    );
    let shutdown = tokio::spawn(c.shutdown());
    // Shutdown is held up by the running handler...
    assert!(tokio::time::timeout(Duration::from_millis(300), async {
        while !shutdown.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_err());
    // ...and once it finishes, its message counts as consumed.
    gate.send_replace(true);
    tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
    assert_eq!(a.committed("g", "t", 0), Some(1));
}

#[tokio::test]
async fn handlers_slower_than_the_drain_timeout_leave_their_message_uncommitted() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    produce(&ns, "t", 3).await;
    let (handler, mut started, _gate) = gated();
    let c = builder(&ns, "g", "t")
        .concurrency(1)
        .drain_timeout(Duration::from_millis(200))
        .start_push(handler)
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, started.recv()).await.unwrap(),
        Some(0)
    );
    tokio::time::timeout(WAIT, c.shutdown()).await.unwrap();
    // Nothing finished: the group starts again at the first message.
    assert_eq!(a.committed("g", "t", 0), Some(0));
    assert!(a.members("g").is_empty());
}

#[tokio::test]
async fn scale_out_hands_queues_over_without_redelivery() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 4);
    let (h1, mut rx1) = forwarder();
    let (h2, mut rx2) = forwarder();
    let c1 = builder(&ns, "g", "t").start_push(h1).await.unwrap();
    produce(&ns, "t", 40).await;
    let mut seen: Vec<String> = collect(&mut rx1, 40)
        .await
        .iter()
        .map(|m| m.message_id().to_string())
        .collect();
    let c2 = builder(&ns, "g", "t").start_push(h2).await.unwrap();
    wait_for("split", WAIT, || {
        c1.assignment().len() == 2 && c2.assignment().len() == 2
    })
    .await;
    produce(&ns, "t", 40).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 80 {
        tokio::select! {
            Some(m) = rx1.recv() => seen.push(m.message_id().to_string()),
            Some(m) = rx2.recv() => seen.push(m.message_id().to_string()),
            _ = tokio::time::sleep_until(deadline) => panic!("got {} of 80", seen.len()),
        }
    }
    // Anything delivered twice would show up here within a few poll rounds.
    let extra = tokio::time::timeout(Duration::from_millis(500), async {
        tokio::select! {
            Some(m) = rx1.recv() => m,
            Some(m) = rx2.recv() => m,
        }
    })
    .await;
    assert!(extra.is_err(), "duplicate delivery: {extra:?}");
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 80);
    c1.shutdown().await;
    c2.shutdown().await;
}
