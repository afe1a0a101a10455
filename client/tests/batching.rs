//! The accumulator behind `send_async`: batch boundaries, linger, per-message outcomes,
//! order per queue, flush on shutdown. Against fake brokers.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::join_all;
use sluice_client::{ClientConfig, ErrorCode, Message, Producer, SendHandle};
use sluice_proto::ApiError;
use support::{start_broker, FakeNameServer};

fn config(ns: &FakeNameServer) -> ClientConfig {
    ClientConfig::new([ns.addr.clone()]).request_timeout(Duration::from_secs(5))
}

async fn send_all(p: &Producer, messages: Vec<Message>) -> Vec<SendHandle> {
    let mut handles = Vec::new();
    for m in messages {
        handles.push(p.send_async(m).await.unwrap());
    }
    handles
}

fn numbered(topic: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new(topic, format!("m{i}")))
        .collect()
}

#[tokio::test]
async fn batches_stop_at_the_message_limit() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    // A long linger: batches leave only when full (or flushed).
    let p = Producer::builder(config(&ns))
        .batch_max_messages(100)
        .linger(Duration::from_secs(30))
        .build()
        .unwrap();
    p.prepare("t").await.unwrap();
    let handles = send_all(&p, numbered("t", 500)).await;
    let receipts: Vec<_> = join_all(handles).await;
    assert!(receipts.iter().all(|r| r.is_ok()));
    let sizes: Vec<usize> = a
        .send_attempts
        .lock()
        .unwrap()
        .iter()
        .map(Vec::len)
        .collect();
    assert_eq!(sizes, [100, 100, 100, 100, 100]);
    // Each message got its own receipt, offsets in send order.
    let offsets: Vec<u64> = receipts
        .into_iter()
        .map(|r| r.unwrap().queue_offset)
        .collect();
    assert_eq!(offsets, (0..500).collect::<Vec<u64>>());
}

#[tokio::test]
async fn batches_stop_at_the_byte_limit_and_big_messages_go_alone() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    let p = Producer::builder(config(&ns))
        .batch_max_bytes(3_000)
        .linger(Duration::from_secs(30))
        .build()
        .unwrap();
    p.prepare("t").await.unwrap();
    let mut messages: Vec<Message> = (0..9)
        .map(|i| Message::new("t", vec![b'a' + i as u8; 900]))
        .collect();
    messages.push(Message::new("t", vec![b'z'; 10_000]));
    let handles = send_all(&p, messages).await;
    p.flush().await;
    for r in join_all(handles).await {
        r.unwrap();
    }
    let sizes: Vec<usize> = a
        .send_attempts
        .lock()
        .unwrap()
        .iter()
        .map(Vec::len)
        .collect();
    // Three ~950-byte messages per 3000-byte batch; the 10 KB one alone.
    assert_eq!(sizes, [3, 3, 3, 1]);
    assert_eq!(a.message_count("t"), 10);
}

#[tokio::test]
async fn without_linger_a_lone_message_leaves_at_once_and_linger_holds_it() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    let eager = Producer::builder(config(&ns)).build().unwrap();
    eager.prepare("t").await.unwrap();
    let started = Instant::now();
    eager
        .send_async(Message::new("t", "now"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));

    let patient = Producer::builder(config(&ns))
        .linger(Duration::from_millis(400))
        .build()
        .unwrap();
    patient.prepare("t").await.unwrap();
    let started = Instant::now();
    patient
        .send_async(Message::new("t", "later"))
        .await
        .unwrap()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "left after {waited:?}, before its linger"
    );
    // A flush does not wait for the linger.
    let h = patient
        .send_async(Message::new("t", "flushed"))
        .await
        .unwrap();
    let started = Instant::now();
    patient.flush().await;
    h.await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(350));
}

#[tokio::test]
async fn order_per_queue_is_kept_across_many_batches() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    let b = start_broker("broker-b", &[&ns]).await;
    a.add_topic("t", 2);
    b.add_topic("t", 2);
    let p = Producer::builder(config(&ns))
        .batch_max_messages(7)
        .max_in_flight(64)
        .build()
        .unwrap();
    p.prepare("t").await.unwrap();
    let mut handles = Vec::new();
    for i in 0..600 {
        // Keyed messages stay on their key's queue; unkeyed ones go round robin.
        let h = match i % 3 {
            0 => p
                .send_async_with_key(Message::new("t", format!("k0:{i}")), "k0")
                .await
                .unwrap(),
            1 => p
                .send_async_with_key(Message::new("t", format!("k1:{i}")), "k1")
                .await
                .unwrap(),
            _ => p
                .send_async(Message::new("t", format!("rr:{i}")))
                .await
                .unwrap(),
        };
        handles.push(h);
    }
    let receipts: Vec<_> = join_all(handles)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    // Batching happened: fewer requests than messages.
    let requests = a.send_attempts.lock().unwrap().len() + b.send_attempts.lock().unwrap().len();
    assert!(requests < 600, "{requests} requests for 600 messages");
    // Within every queue, offsets follow the send order.
    let mut last: HashMap<(String, u32), u64> = HashMap::new();
    for r in &receipts {
        let key = (r.broker_name.clone(), r.queue_id);
        if let Some(prev) = last.insert(key, r.queue_offset) {
            assert!(r.queue_offset > prev, "queue order broken at {r:?}");
        }
    }
    // And the stored bodies of a key are in send order.
    for key in ["k0", "k1"] {
        let stored: Vec<u64> = ["broker-a", "broker-b"]
            .iter()
            .flat_map(|broker| {
                let store = if *broker == "broker-a" { &a } else { &b };
                (0..2).flat_map(move |q| store.messages("t", q))
            })
            .filter_map(|m| {
                let body = String::from_utf8(m.body.to_vec()).unwrap();
                body.strip_prefix(&format!("{key}:"))
                    .map(|n| n.parse::<u64>().unwrap())
            })
            .collect();
        assert_eq!(stored.len(), 200);
        assert!(stored.windows(2).all(|w| w[0] < w[1]), "{key}: {stored:?}");
    }
}

#[tokio::test]
async fn a_refused_batch_fails_only_its_offending_messages() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    a.max_body.store(100, Ordering::SeqCst);
    let p = Producer::builder(config(&ns))
        .linger(Duration::from_secs(30))
        .build()
        .unwrap();
    p.prepare("t").await.unwrap();
    let messages: Vec<Message> = (0..10)
        .map(|i| {
            let size = if i == 3 || i == 7 { 500 } else { 10 };
            Message::new("t", vec![b'0' + i as u8; size])
        })
        .collect();
    let handles = send_all(&p, messages).await;
    p.flush().await;
    let results = join_all(handles).await;
    for (i, r) in results.iter().enumerate() {
        if i == 3 || i == 7 {
            let e = r.as_ref().unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::MessageTooLarge), "{i}: {e}");
        } else {
            assert!(r.is_ok(), "{i}: {r:?}");
        }
    }
    // The eight good ones are stored, in order.
    let stored: Vec<u8> = a.messages("t", 0).iter().map(|m| m.body[0]).collect();
    assert_eq!(stored, b"01245689");
}

#[tokio::test]
async fn a_batch_is_retried_whole_and_non_retryable_errors_reach_every_message() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 1);
    let p = Producer::builder(config(&ns))
        .linger(Duration::from_secs(30))
        .build()
        .unwrap();
    p.prepare("t").await.unwrap();
    a.fail_next_sends(vec![ApiError::new(ErrorCode::StoreTimeout, "slow").into()]);
    let handles = send_all(&p, numbered("t", 5)).await;
    p.flush().await;
    for r in join_all(handles).await {
        r.unwrap();
    }
    let attempts = a.send_attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0], attempts[1], "the retry carries the same ids");
    assert_eq!(a.message_count("t"), 5);

    a.fail_next_sends(vec![
        ApiError::new(ErrorCode::NoPermission, "read only").into()
    ]);
    let handles = send_all(&p, numbered("t", 4)).await;
    p.flush().await;
    for r in join_all(handles).await {
        assert_eq!(r.unwrap_err().code(), Some(ErrorCode::NoPermission));
    }
    assert_eq!(a.message_count("t"), 5);
}

#[tokio::test]
async fn shutdown_sends_what_lingers_and_refuses_more() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 4);
    let p = Producer::builder(config(&ns))
        .linger(Duration::from_secs(60))
        .build()
        .unwrap();
    p.prepare("t").await.unwrap();
    let handles = send_all(&p, numbered("t", 50)).await;
    let started = Instant::now();
    p.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    for r in join_all(handles).await {
        r.unwrap();
    }
    assert_eq!(a.message_count("t"), 50);
    let err = p.send_async(Message::new("t", "late")).await.err().unwrap();
    assert!(err.to_string().contains("shut down"), "{err}");
}

#[tokio::test]
async fn dropping_every_producer_still_delivers_what_was_queued() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 2);
    let p = Producer::builder(config(&ns))
        .linger(Duration::from_secs(60))
        .build()
        .unwrap();
    p.prepare("t").await.unwrap();
    let handles = send_all(&p, numbered("t", 20)).await;
    drop(p);
    let results = tokio::time::timeout(Duration::from_secs(10), join_all(handles))
        .await
        .expect("queued sends finish after the producer is gone");
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(a.message_count("t"), 20);
}
