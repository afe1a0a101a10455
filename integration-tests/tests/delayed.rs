//! Delayed messages end to end against real binaries: invisible until due, delivered in
//! their queue in order, cancelled before due, limits refused, exactly once across kill -9.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use sluice_client::{Admin, ClientConfig, ErrorCode, Message, Producer, SendReceipt};
use sluice_integration_tests::replica::read_all;
use sluice_integration_tests::{wait_until, Cluster, ClusterOptions};
use sluice_proto::v1::StoredMessage;

fn client_config(cluster: &Cluster) -> ClientConfig {
    ClientConfig::new([cluster.nameservers()]).request_timeout(Duration::from_secs(10))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn prop<'a>(m: &'a StoredMessage, name: &str) -> Option<&'a str> {
    m.properties.get(name).map(String::as_str)
}

/// Every message of a topic on broker 0, by body.
async fn delivered(
    cluster: &Cluster,
    topic: &str,
    queues: u32,
) -> HashMap<String, Vec<StoredMessage>> {
    let mut out: HashMap<String, Vec<StoredMessage>> = HashMap::new();
    for q in 0..queues {
        for m in read_all(&cluster.brokers[0].addr, topic, q).await.unwrap() {
            out.entry(String::from_utf8_lossy(&m.body).into_owned())
                .or_default()
                .push(m);
        }
    }
    out
}

async fn send(p: &Producer, m: Message, key: &str) -> SendReceipt {
    p.send_with_key(m, key).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_arrive_when_due_in_order_and_cancel_stops_them() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    admin.create_topic("orders", 4, None).await.unwrap();
    let p = Producer::builder(client_config(&cluster)).build().unwrap();

    let start = now_ms();
    let mut due: HashMap<String, i64> = HashMap::new();
    // Five with the same due time and key: delivered in send order, in the key's queue.
    let at = SystemTime::now() + Duration::from_millis(1_500);
    let mut queue = None;
    for i in 0..5 {
        let r = send(
            &p,
            Message::new("orders", format!("same-{i}"))
                .with_key("order-42")
                .deliver_at(at),
            "order-42",
        )
        .await;
        assert!(r.delay_handle.is_some(), "{r:?}");
        due.insert(format!("same-{i}"), r.deliver_at_ms.unwrap());
        assert_eq!(*queue.get_or_insert(r.queue_id), r.queue_id);
    }
    let cancel_me = send(
        &p,
        Message::new("orders", "cancel-me").with_delay(Duration::from_secs(2)),
        "x",
    )
    .await;
    let sentinel = send(
        &p,
        Message::new("orders", "sentinel").with_delay(Duration::from_secs(3)),
        "y",
    )
    .await;
    due.insert("sentinel".into(), sentinel.deliver_at_ms.unwrap());
    let past = send(
        &p,
        Message::new("orders", "past").deliver_at(SystemTime::now() - Duration::from_secs(60)),
        "z",
    )
    .await;
    due.insert("past".into(), past.deliver_at_ms.unwrap());
    let level = send(
        &p,
        Message::new("orders", "level-1").with_delay_level(1),
        "w",
    )
    .await;
    let level_due = level.deliver_at_ms.unwrap();
    assert!(
        (999..=1_500).contains(&(level_due - start)),
        "level 1 is 1 s: {}",
        level_due - start
    );
    due.insert("level-1".into(), level_due);

    // Pending ones are invisible; a lookup by id shows them scheduled.
    let now = delivered(&cluster, "orders", 4).await;
    assert!(
        !now.contains_key("same-0") && !now.contains_key("sentinel"),
        "{:?}",
        now.keys()
    );
    let found = admin.get_message(&cancel_me.message_id).await.unwrap();
    let timer = found.message.timer.clone().expect("timer info");
    assert_eq!(timer.state, sluice_proto::v1::TimerState::Scheduled as i32);
    assert_eq!(timer.topic, "orders");
    let by_key = admin.find_by_key("orders", "order-42", 10).await.unwrap();
    assert_eq!(
        by_key.len(),
        5,
        "scheduled messages are found by key under their topic"
    );

    let o = p
        .cancel_delayed(cancel_me.delay_handle.as_deref().unwrap())
        .await
        .unwrap();
    assert!(o.cancelled(), "{o:?}");
    let again = p
        .cancel_delayed(cancel_me.delay_handle.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(again.outcome, "already_cancelled");

    wait_until(Duration::from_secs(20), "every timer delivered", || async {
        delivered(&cluster, "orders", 4).await.len() >= due.len()
    })
    .await
    .unwrap();
    let got = delivered(&cluster, "orders", 4).await;
    assert!(
        !got.contains_key("cancel-me"),
        "a cancelled message was delivered"
    );
    for (body, due_ms) in &due {
        let copies = &got[body];
        assert_eq!(copies.len(), 1, "{body} delivered {} times", copies.len());
        let m = &copies[0];
        assert!(
            m.store_timestamp_ms >= *due_ms,
            "{body} delivered {} ms early",
            due_ms - m.store_timestamp_ms
        );
        assert_eq!(prop(m, "__DELIVER_AT"), Some(due_ms.to_string().as_str()));
        assert_eq!(
            m.timer.as_ref().map(|t| t.state),
            None,
            "pulls carry no lookup info"
        );
    }
    let same: Vec<&StoredMessage> = (0..5).map(|i| &got[&format!("same-{i}")][0]).collect();
    assert!(same.iter().all(|m| Some(m.queue_id) == queue));
    assert!(
        same.windows(2)
            .all(|w| w[0].queue_offset < w[1].queue_offset),
        "same due time, same key: send order"
    );

    // Delivered: a cancel says so, a lookup shows it delivered.
    let sentinel_handle = sentinel.delay_handle.as_deref().unwrap();
    assert_eq!(
        p.cancel_delayed(sentinel_handle).await.unwrap().outcome,
        "already_delivered"
    );
    let found = admin.get_message(&sentinel.message_id).await.unwrap();
    assert_eq!(
        found.message.timer.map(|t| t.state),
        Some(sluice_proto::v1::TimerState::Delivered as i32)
    );

    // Limits: past max_delay, a level that does not exist, reserved properties.
    let far = SystemTime::now() + Duration::from_secs(31 * 24 * 3600);
    for (m, what) in [
        (Message::new("orders", "far").deliver_at(far), "max_delay"),
        (
            Message::new("orders", "lvl").with_delay_level(19),
            "delay_level 19",
        ),
        (
            Message::new("orders", "p").with_property("__DELIVER_AT", "1"),
            "reserved",
        ),
    ] {
        match p.send(m).await {
            Err(sluice_client::Error::Api(e)) => {
                assert_eq!(e.code, ErrorCode::InvalidArgument, "{what}: {e}");
                assert!(
                    e.message.contains(what.split(' ').next().unwrap()),
                    "{what}: {e}"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_pending_across_kill_9_are_delivered_once_and_never_early() {
    let mut cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    admin.create_topic("t", 4, None).await.unwrap();
    let p = Producer::builder(client_config(&cluster))
        .max_in_flight(256)
        .build()
        .unwrap();
    // 2,000 timers due over 1-4 s; the broker dies while they fire.
    let mut handles = Vec::new();
    for i in 0..2_000u64 {
        let delay = Duration::from_millis(1_000 + (i * 37) % 3_000);
        handles.push(
            p.send_async(Message::new("t", format!("m-{i}")).with_delay(delay))
                .await
                .unwrap(),
        );
    }
    let mut due = HashMap::new();
    for (i, h) in handles.into_iter().enumerate() {
        due.insert(format!("m-{i}"), h.await.unwrap().deliver_at_ms.unwrap());
    }
    p.shutdown().await;
    wait_until(Duration::from_secs(20), "some timers fired", || async {
        delivered(&cluster, "t", 4).await.len() >= 300
    })
    .await
    .unwrap();
    cluster.brokers[0].kill9();
    cluster.brokers[0].restart().unwrap();
    wait_until(
        Duration::from_secs(60),
        "every timer delivered after the restart",
        || async { delivered(&cluster, "t", 4).await.len() >= due.len() },
    )
    .await
    .unwrap();
    let got = delivered(&cluster, "t", 4).await;
    assert_eq!(got.len(), due.len());
    for (body, due_ms) in &due {
        let copies = &got[body];
        assert_eq!(copies.len(), 1, "{body} delivered {} times", copies.len());
        assert!(copies[0].store_timestamp_ms >= *due_ms, "{body} early");
    }
}
