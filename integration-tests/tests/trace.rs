//! Message trace against real binaries: a traced message's timeline through produce, store, a
//! failed delivery, its retry and a success, as `sluice message trace` prints it; and a broker
//! that refuses traces, or one too slow to take them, never holds up sends.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::trace::{ConsumeResult, TraceContext, TRACEPARENT, TRACE_TOPIC};
use sluice_client::{
    Admin, ClientConfig, ErrorCode, Message, Producer, PushConsumer, ReceivedMessage, StartPosition,
};
use sluice_integration_tests::{wait_until, Cluster, ClusterOptions};

fn client_config(cluster: &Cluster) -> ClientConfig {
    ClientConfig::new([cluster.nameservers()]).request_timeout(Duration::from_secs(5))
}

async fn wait_for_route(admin: &Admin, topic: &str) {
    wait_until(Duration::from_secs(20), "the topic's route", || async {
        admin.topic_route(topic).await.is_ok()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_followed_from_send_through_a_failed_delivery_to_its_success() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    admin.create_topic("orders", 2, None).await.unwrap();
    admin
        .update_group_config("billing", Some(3), Some(vec![200]))
        .await
        .unwrap();
    // The broker creates the trace topic when it becomes master.
    wait_for_route(&admin, TRACE_TOPIC).await;

    let attempts = Arc::new(AtomicU32::new(0));
    let received: Arc<Mutex<Option<ReceivedMessage>>> = Arc::default();
    let consumer = {
        let attempts = attempts.clone();
        let received = received.clone();
        PushConsumer::builder(client_config(&cluster), "billing")
            .subscribe("orders")
            .start_position(StartPosition::Earliest)
            .heartbeat_interval(Duration::from_millis(200))
            .rebalance_interval(Duration::from_millis(300))
            .trace(true)
            .start_push(move |m: ReceivedMessage| {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                *received.lock().unwrap() = Some(m);
                async move {
                    if n == 0 {
                        return Err(std::io::Error::other("payment service down"));
                    }
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    let producer = Producer::builder(client_config(&cluster))
        .producer_group("shop")
        .trace(true)
        .build()
        .unwrap();
    let receipt = producer
        .send(Message::new("orders", "order 42").with_key("order-42"))
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "the retry to succeed", || async {
        attempts.load(Ordering::SeqCst) >= 2
    })
    .await
    .unwrap();
    producer.shutdown().await;
    consumer.shutdown().await;

    // The traceparent the producer gave the message reached the consumer.
    let last = received.lock().unwrap().clone().unwrap();
    let traceparent = last.message.properties.get(TRACEPARENT).cloned().unwrap();
    let trace_id = TraceContext::parse(&traceparent).unwrap().trace_id_hex();

    let id = receipt.message_id.clone();
    let mut doc = serde_json::Value::Null;
    wait_until(Duration::from_secs(20), "six trace events", || {
        let out = cluster.cli(&["message", "trace", &id, "--json"]);
        let parsed = out.ok().and_then(|o| serde_json::from_str(&o).ok());
        let ready = parsed
            .as_ref()
            .and_then(|d: &serde_json::Value| d["events"].as_array().map(|e| e.len() >= 6))
            .unwrap_or(false);
        if let Some(d) = parsed {
            doc = d;
        }
        async move { ready }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {doc:#}"));
    assert_eq!(doc["trace_id"], trace_id.as_str(), "{doc:#}");
    let events = doc["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "sent",
            "stored",
            "delivered",
            "consumed",
            "delivered",
            "consumed"
        ],
        "{doc:#}"
    );
    let (sent, stored) = (&events[0], &events[1]);
    assert_eq!(sent["result"], "ok");
    assert_eq!(sent["producer_group"], "shop");
    assert_eq!(sent["keys"][0], "order-42");
    assert_eq!(stored["topic"], "orders");
    assert_eq!(stored["queue_id"], receipt.queue_id);
    assert_eq!(stored["offset"], receipt.queue_offset);
    assert_eq!(stored["broker_name"], receipt.broker_name.as_str());
    assert!(stored["store_ms"].as_i64().unwrap() > 0);

    let (first, failed) = (&events[2], &events[3]);
    assert_eq!(first["topic"], "orders");
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["group"], "billing");
    assert_eq!(failed["result"], ConsumeResult::RetryLater.as_str());
    assert!(failed["error"]
        .as_str()
        .unwrap()
        .contains("payment service down"));

    let (retry, ok) = (&events[4], &events[5]);
    assert_eq!(
        retry["topic"], "%RETRY%billing",
        "redelivered from the retry topic"
    );
    assert_eq!(retry["attempt"], 2);
    assert_eq!(ok["result"], "ok");
    assert_eq!(ok["attempt"], 2);
    assert!(ok["handler_ms"].is_u64());
    // Where it is now: the retry copy, the newest record with this id.
    assert_eq!(doc["now"]["topic"], "%RETRY%billing", "{doc:#}");

    let table = cluster.cli(&["message", "trace", &id]).unwrap();
    for needle in [
        "sent",
        "stored",
        "result=retry_later",
        "error=\"payment service down\"",
        "result=ok",
        &format!("trace id: {trace_id}"),
        "now: %RETRY%billing",
    ] {
        assert!(table.contains(needle), "{needle:?} missing from:\n{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_refusing_traces_drops_them_and_sends_go_on() {
    let opts = ClusterOptions {
        extra_broker_toml: "trace_enabled = false".into(),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(1, opts).unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    admin.create_topic("orders", 2, None).await.unwrap();
    // The broker does not create the trace topic; someone else did, so routes lead to it and
    // the broker has to refuse the writes itself.
    admin.create_topic(TRACE_TOPIC, 1, None).await.unwrap();
    wait_for_route(&admin, TRACE_TOPIC).await;

    let producer = Producer::builder(client_config(&cluster))
        .trace(true)
        .build()
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..500 {
        let m = Message::new("orders", format!("m{i}"));
        handles.push(producer.send_async(m).await.unwrap());
    }
    for h in handles {
        h.await.unwrap();
    }
    producer.shutdown().await;
    let stats = producer.trace_stats().unwrap();
    // Every message was recorded as sent and stored; none of it reached the trace topic.
    assert_eq!(stats.recorded, 1000, "{stats:?}");
    assert_eq!(stats.written, 0, "{stats:?}");
    assert_eq!(
        stats.failed, 1000,
        "the broker refused every write: {stats:?}"
    );
    let err = admin.message_trace("anything").await;
    assert!(matches!(err, Ok(t) if t.events.is_empty()));

    // With no trace topic anywhere, `message trace` says so clearly.
    let bare = Cluster::start(
        1,
        ClusterOptions {
            extra_broker_toml: "trace_enabled = false".into(),
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let admin = Admin::new(client_config(&bare)).unwrap();
    let err = admin.message_trace("anything").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoRoute), "{err}");
    assert!(err.to_string().contains(TRACE_TOPIC), "{err}");
}

/// The trace topic lives on a broker that stops answering (SIGSTOP) while the producer sends to
/// another: every send is acknowledged, and the events that cannot be written are dropped and
/// counted instead of queueing without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_trace_broker_does_not_hold_up_sends() {
    let mut cluster = Cluster::start(0, ClusterOptions::default()).unwrap();
    // broker-a takes data and refuses traces; broker-b hosts the trace topic.
    cluster.opts.extra_broker_toml = "trace_enabled = false".into();
    cluster.add_broker("broker-a").unwrap();
    cluster.opts.extra_broker_toml = String::new();
    cluster.add_broker("broker-b").unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    let mut a = cluster.broker_client(0).await.unwrap();
    a.create_topic(sluice_integration_tests::create_topic_request("orders", 2))
        .await
        .unwrap();
    wait_for_route(&admin, "orders").await;
    wait_for_route(&admin, TRACE_TOPIC).await;

    // Writes to the frozen broker time out only after ten minutes: every drop below comes
    // from the recorder's bounded queue, none from a failed write that freed room.
    let config = client_config(&cluster).request_timeout(Duration::from_secs(600));
    let producer = Producer::builder(config).trace(true).build().unwrap();
    producer
        .send(Message::new("orders", "warm-up"))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the warm-up's trace", || async {
        producer.trace_stats().unwrap().written == 2
    })
    .await
    .unwrap();

    let pid = cluster.brokers[1].pid().unwrap();
    let frozen = Frozen::new(pid);
    let n: u64 = 20_000;
    let mut handles = Vec::new();
    for i in 0..n {
        let m = Message::new("orders", format!("m{i}"));
        handles.push(producer.send_async(m).await.unwrap());
    }
    for h in handles {
        h.await.unwrap();
    }
    let stats = producer.trace_stats().unwrap();
    assert_eq!(stats.recorded, 2 * (n + 1), "{stats:?}");
    // Every send was acknowledged while no trace write could finish: the events beyond the
    // recorder's bounded queue were dropped at once rather than waited for.
    assert_eq!(stats.written, 2, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert!(stats.overflowed > 0, "{stats:?}");
    drop(frozen);
}

/// SIGSTOPs a process until dropped (then SIGCONTs it), so a failing test never leaves a
/// frozen broker behind.
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Frozen {
        signal("-STOP", pid);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(sig: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}
