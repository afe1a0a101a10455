//! Producer behaviour against fake brokers: queue selection, retries, batches, pipelining.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sluice_client::{ClientConfig, ErrorCode, Message, Producer};
use sluice_proto::ApiError;
use support::{dead_address, start_broker, FakeNameServer};

fn config(ns: &FakeNameServer) -> ClientConfig {
    ClientConfig::new([ns.addr.clone()]).request_timeout(Duration::from_secs(2))
}

#[tokio::test]
async fn round_robin_covers_every_queue_of_every_broker() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    let b = start_broker("broker-b", &[&ns]).await;
    a.add_topic("t", 2);
    b.add_topic("t", 2);
    // Idempotent sends go through the accumulator, the others alone; `send_async` one at a
    // time is a batch of one each time.
    for (mode, idempotent) in [("send", true), ("send", false), ("send_async", true)] {
        let p = Producer::builder(config(&ns))
            .idempotence(idempotent)
            .build()
            .unwrap();
        let mut per_queue: HashMap<(String, u32), u32> = HashMap::new();
        for i in 0..20 {
            let m = Message::new("t", format!("m{i}"));
            let r = match mode {
                "send" => p.send(m).await.unwrap(),
                _ => p.send_async(m).await.unwrap().await.unwrap(),
            };
            assert_eq!(r.message_id.len(), 32);
            *per_queue.entry((r.broker_name, r.queue_id)).or_default() += 1;
        }
        assert_eq!(per_queue.len(), 4, "{mode} idempotent={idempotent}");
        assert!(
            per_queue.values().all(|&n| n == 5),
            "{mode} idempotent={idempotent}: {per_queue:?}"
        );
        p.shutdown().await;
    }
    assert_eq!(a.message_count("t") + b.message_count("t"), 60);
}

#[tokio::test]
async fn same_key_lands_on_same_queue_in_order() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    let b = start_broker("broker-b", &[&ns]).await;
    a.add_topic("t", 4);
    b.add_topic("t", 4);
    let p = Producer::builder(config(&ns)).build().unwrap();
    let mut queue_of: HashMap<String, (String, u32)> = HashMap::new();
    for round in 0..5 {
        for k in 0..8 {
            let key = format!("order-{k}");
            let r = p
                .send_with_key(Message::new("t", format!("{key}:{round}")), &key)
                .await
                .unwrap();
            let q = (r.broker_name.clone(), r.queue_id);
            assert_eq!(queue_of.entry(key).or_insert_with(|| q.clone()), &q);
        }
    }
    // Messages of a key sit in one queue, in send order.
    let (broker, queue) = queue_of["order-3"].clone();
    let store = if broker == "broker-a" { &a } else { &b };
    let bodies: Vec<String> = store
        .messages("t", queue)
        .into_iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .filter(|s| s.starts_with("order-3:"))
        .collect();
    assert_eq!(
        bodies,
        [
            "order-3:0",
            "order-3:1",
            "order-3:2",
            "order-3:3",
            "order-3:4"
        ]
    );
}

#[tokio::test]
async fn retryable_failure_retries_on_another_broker_with_the_same_id() {
    // A batch of `send_async` has its queue picked already; its retry moves all the same.
    for mode in ["send", "send_async"] {
        let ns = FakeNameServer::start().await;
        let a = start_broker("broker-a", &[&ns]).await;
        let b = start_broker("broker-b", &[&ns]).await;
        a.add_topic("t", 1);
        b.add_topic("t", 1);
        let p = Producer::builder(config(&ns))
            .idempotence(false)
            .build()
            .unwrap();
        // Whichever broker gets the first attempt fails it with NOT_MASTER.
        a.fail_next_sends(vec![ApiError::not_master("").into()]);
        b.fail_next_sends(vec![ApiError::not_master("").into()]);
        let m = Message::new("t", "x");
        let r = match mode {
            "send" => p.send(m).await.unwrap(),
            _ => p.send_async(m).await.unwrap().await.unwrap(),
        };
        let attempts_a = a.send_attempts.lock().unwrap().clone();
        let attempts_b = b.send_attempts.lock().unwrap().clone();
        // The first attempt failed on one broker, the retry went to the other one and failed
        // there too (its injected failure), the third attempt succeeded.
        let all: Vec<&Vec<String>> = attempts_a.iter().chain(attempts_b.iter()).collect();
        assert_eq!(all.len(), 3, "{mode}: a={attempts_a:?} b={attempts_b:?}");
        assert_eq!(
            attempts_a.len().min(attempts_b.len()),
            1,
            "{mode}: each broker was tried"
        );
        assert!(
            all.iter().all(|ids| **ids == [r.message_id.clone()]),
            "{mode}: a retry keeps the id"
        );
        assert_eq!(a.message_count("t") + b.message_count("t"), 1, "{mode}");
    }
}

#[tokio::test]
async fn an_idempotent_retry_keeps_its_queue_and_sequence_and_moves_only_when_refused() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    let b = start_broker("broker-b", &[&ns]).await;
    a.add_topic("t", 1);
    b.add_topic("t", 1);
    let p = Producer::builder(config(&ns)).retries(4).build().unwrap();
    // An outcome the producer cannot know (a timeout, a master change): every retry goes to
    // the same broker and queue with the same producer id, epoch and sequence.
    let unknown = || -> Vec<tonic::Status> {
        vec![
            ApiError::new(ErrorCode::StoreTimeout, "slow").into(),
            ApiError::not_master("").into(),
        ]
    };
    a.fail_next_sends(unknown());
    b.fail_next_sends(unknown());
    let r = p.send(Message::new("t", "x")).await.unwrap();
    let (home, other) = if r.broker_name == "broker-a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(*home.send_sequences.lock().unwrap(), [(7, 0, 0); 3]);
    assert!(other.send_attempts.lock().unwrap().is_empty());
    // The next batch on that queue follows the first one.
    let mut next = None;
    let mut sent = 1;
    for _ in 0..8 {
        let r2 = p.send(Message::new("t", "y")).await.unwrap();
        sent += 1;
        if r2.broker_name == r.broker_name {
            next = home.send_sequences.lock().unwrap().last().copied();
            break;
        }
    }
    assert_eq!(next, Some((7, 0, 1)));
    // A sequence refused (a gap): the batch is numbered again at a new epoch, on its queue.
    home.fail_next_sends(vec![
        ApiError::new(ErrorCode::OutOfOrderSequence, "gap").into()
    ]);
    other.fail_next_sends(vec![
        ApiError::new(ErrorCode::OutOfOrderSequence, "gap").into()
    ]);
    let r3 = p.send(Message::new("t", "z")).await.unwrap();
    let seqs = if r3.broker_name == r.broker_name {
        home
    } else {
        other
    };
    let last: Vec<_> = seqs
        .send_sequences
        .lock()
        .unwrap()
        .iter()
        .rev()
        .take(2)
        .copied()
        .collect();
    assert_eq!(last[0].1, last[1].1 + 1, "a new epoch: {last:?}");
    assert_eq!(last[0].2, 0);
    // Refused before anything was stored: the batch may go to the other broker.
    let sent_before = a.send_attempts.lock().unwrap().len() + b.send_attempts.lock().unwrap().len();
    a.fail_next_sends(vec![ApiError::new(ErrorCode::DiskFull, "full").into()]);
    b.fail_next_sends(vec![ApiError::new(ErrorCode::DiskFull, "full").into()]);
    p.send(Message::new("t", "w")).await.unwrap();
    let attempts = a.send_attempts.lock().unwrap().len() + b.send_attempts.lock().unwrap().len();
    assert!(attempts - sent_before >= 2);
    assert_eq!(a.message_count("t") + b.message_count("t"), sent + 2);
}

#[tokio::test]
async fn non_retryable_errors_are_not_retried() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 2);
    let p = Producer::builder(config(&ns)).build().unwrap();
    a.fail_next_sends(vec![
        ApiError::new(ErrorCode::MessageTooLarge, "too big").into()
    ]);
    let err = p.send(Message::new("t", "x")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MessageTooLarge));
    assert_eq!(a.send_attempts.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn retries_are_bounded() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 2);
    let p = Producer::builder(config(&ns)).retries(3).build().unwrap();
    a.fail_next_sends(
        (0..10)
            .map(|_| ApiError::new(ErrorCode::StoreTimeout, "slow disk").into())
            .collect(),
    );
    let err = p.send(Message::new("t", "x")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StoreTimeout));
    assert_eq!(a.send_attempts.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn unreachable_broker_is_avoided_and_route_refreshed() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    let b = start_broker("broker-b", &[&ns]).await;
    a.add_topic("t", 2);
    b.add_topic("t", 2);
    // broker-a's registered address is dead: real connection refusals.
    ns.state.set_address("broker-a", &dead_address().await);
    let p = Producer::builder(config(&ns)).build().unwrap();
    for i in 0..10 {
        let r = p.send(Message::new("t", format!("{i}"))).await.unwrap();
        assert_eq!(r.broker_name, "broker-b");
    }
    assert_eq!(b.message_count("t"), 10);
    // Connection failures triggered route refreshes beyond the first lookup.
    assert!(
        ns.state
            .route_calls
            .load(std::sync::atomic::Ordering::SeqCst)
            > 1
    );
}

#[tokio::test]
async fn route_refresh_follows_a_moved_master() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    let real = a.addr();
    // The client first sees a stale address, then the nameserver learns the real one.
    ns.state.set_address("broker-a", &dead_address().await);
    let p = Producer::builder(config(&ns)).retries(5).build().unwrap();
    let ns_state = ns.state.clone();
    let fixer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ns_state.set_address("broker-a", &real);
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match p.send(Message::new("t", "x")).await {
            Ok(r) => {
                assert_eq!(r.broker_name, "broker-a");
                break;
            }
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(std::time::Instant::now() < deadline, "never recovered: {e}");
            }
        }
    }
    fixer.await.unwrap();
}

#[tokio::test]
async fn unknown_topic_and_bad_input_fail_clearly() {
    let ns = FakeNameServer::start().await;
    let _a = start_broker("broker-a", &[&ns]).await;
    let p = Producer::builder(config(&ns)).build().unwrap();
    let err = p.send(Message::new("nope", "x")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TopicNotFound), "{err}");
    let err = p.send(Message::new("bad topic", "x")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidTopicName), "{err}");
    let err = p.send_batch(vec![]).await.unwrap_err();
    assert!(
        matches!(err, sluice_client::Error::InvalidArgument(_)),
        "{err}"
    );
    let err = p
        .send_batch(vec![Message::new("t1", "x"), Message::new("t2", "y")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, sluice_client::Error::InvalidArgument(_)),
        "{err}"
    );
}

#[tokio::test]
async fn batch_goes_to_one_queue_atomically() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 4);
    let p = Producer::builder(config(&ns)).build().unwrap();
    let batch: Vec<Message> = (0..5)
        .map(|i| Message::new("t", format!("b{i}")).with_key(format!("k{i}")))
        .collect();
    let receipts = p.send_batch(batch).await.unwrap();
    assert_eq!(receipts.len(), 5);
    let q = receipts[0].queue_id;
    assert!(receipts.iter().all(|r| r.queue_id == q));
    let offsets: Vec<u64> = receipts.iter().map(|r| r.queue_offset).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4]);
    assert_eq!(a.send_attempts.lock().unwrap().len(), 1, "one request");
    let stored = a.messages("t", q);
    assert_eq!(stored[4].keys, ["k4"]);
}

#[tokio::test]
async fn concurrent_idempotent_sends_share_requests_and_keep_each_callers_order() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    // A linger or an in-flight limit of `send_async` neither delays nor serializes callers.
    let configs = [
        (true, Duration::ZERO, 1024),
        (true, Duration::from_secs(30), 1),
        (false, Duration::ZERO, 1024),
    ];
    for (idempotent, linger, in_flight) in configs {
        let what = format!("idempotent={idempotent} linger={linger:?} max_in_flight={in_flight}");
        let p = Producer::builder(config(&ns))
            .idempotence(idempotent)
            .linger(linger)
            .max_in_flight(in_flight)
            .build()
            .unwrap();
        p.prepare("t").await.unwrap();
        let before = a.send_attempts.lock().unwrap().len();
        let first = a.messages("t", 0).len();
        let mut tasks = Vec::new();
        for c in 0..16 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    p.send(Message::new("t", format!("c{c}-{i}")))
                        .await
                        .unwrap();
                }
            }));
        }
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .unwrap_or_else(|_| panic!("{what}: sends did not finish"));
        let sizes: Vec<usize> = a.send_attempts.lock().unwrap()[before..]
            .iter()
            .map(Vec::len)
            .collect();
        if idempotent {
            // Each queue has one batch on the wire: the others' sends wait and go together.
            assert!(sizes.len() <= 80, "{what}: {} requests", sizes.len());
        } else {
            assert!(
                sizes.iter().all(|&n| n == 1),
                "{what}: one message per request"
            );
        }
        let stored: Vec<String> = a.messages("t", 0)[first..]
            .iter()
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect();
        assert_eq!(stored.len(), 160, "{what}");
        for c in 0..16 {
            let mine: Vec<&String> = stored
                .iter()
                .filter(|b| b.starts_with(&format!("c{c}-")))
                .collect();
            let want: Vec<String> = (0..10).map(|i| format!("c{c}-{i}")).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>(), "{what}");
        }
        p.shutdown().await;
    }
}

#[tokio::test]
async fn many_sends_in_flight() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 4);
    let p = Producer::builder(config(&ns))
        .max_in_flight(32)
        .build()
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..500 {
        handles.push(
            p.send_async(Message::new("t", format!("{i}")))
                .await
                .unwrap(),
        );
    }
    let mut ids = HashSet::new();
    for h in handles {
        assert!(ids.insert(h.await.unwrap().message_id));
    }
    assert_eq!(a.message_count("t"), 500);
    p.shutdown().await;
    let err = p.send(Message::new("t", "late")).await.unwrap_err();
    assert!(matches!(err, sluice_client::Error::Shutdown(_)), "{err}");
}

#[tokio::test]
async fn nameserver_failover() {
    let dead = dead_address().await;
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    let config = ClientConfig::new([dead, ns.addr.clone()]).request_timeout(Duration::from_secs(2));
    let p = Producer::builder(config).build().unwrap();
    p.send(Message::new("t", "x")).await.unwrap();
    assert_eq!(a.message_count("t"), 1);
}

#[tokio::test]
async fn not_master_hint_is_followed_before_the_route_catches_up() {
    let ns = FakeNameServer::start().await;
    // The nameserver still routes broker-a to the old master; the new one is not registered yet.
    let old = start_broker("broker-a", &[&ns]).await;
    let new = start_broker("broker-a", &[]).await;
    old.add_topic("t", 1);
    new.add_topic("t", 1);
    old.fail_next_sends(vec![ApiError::not_master(new.addr()).into()]);
    let p = Producer::builder(config(&ns)).build().unwrap();
    let r = p.send(Message::new("t", "x")).await.unwrap();
    assert_eq!(r.broker_name, "broker-a");
    assert_eq!(new.message_count("t"), 1);
    assert_eq!(old.message_count("t"), 0);
}

#[tokio::test]
async fn retries_on_a_single_broker_group_are_spread_out() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 2);
    a.fail_next_sends(vec![
        tonic::Status::unavailable("connection reset"),
        tonic::Status::unavailable("connection reset"),
    ]);
    let p = Producer::builder(config(&ns)).build().unwrap();
    let started = std::time::Instant::now();
    p.send(Message::new("t", "x")).await.unwrap();
    assert_eq!(a.send_attempts.lock().unwrap().len(), 3);
    // 50 ms, then 100 ms between the attempts.
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}
