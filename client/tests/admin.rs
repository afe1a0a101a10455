//! Admin operations against fake servers.

mod support;

use std::time::Duration;

use sluice_client::{Admin, ClientConfig, ErrorCode, Message, Producer};
use support::{dead_address, start_broker, FakeNameServer};

fn config(ns: &[&FakeNameServer]) -> ClientConfig {
    ClientConfig::new(ns.iter().map(|n| n.addr.clone())).request_timeout(Duration::from_secs(2))
}

#[tokio::test]
async fn create_topic_waits_until_every_nameserver_routes_it() {
    let ns1 = FakeNameServer::start().await;
    let ns2 = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns1, &ns2]).await;
    let b = start_broker("broker-b", &[&ns1, &ns2]).await;
    *a.register_delay.lock().unwrap() = Duration::from_millis(300);
    *b.register_delay.lock().unwrap() = Duration::from_millis(100);
    let admin = Admin::new(config(&[&ns1, &ns2])).unwrap();
    let created = admin.create_topic("orders", 4, None).await.unwrap();
    assert_eq!(created.len(), 2);
    assert!(created.iter().all(|c| c.created));
    // No waiting needed by the caller: both nameservers route it already.
    for ns in [&ns1, &ns2] {
        let admin = Admin::new(config(&[ns])).unwrap();
        let route = admin.topic_route("orders").await.unwrap();
        let names: Vec<&str> = route
            .brokers
            .iter()
            .map(|b| b.broker_name.as_str())
            .collect();
        assert_eq!(names, ["broker-a", "broker-b"]);
        assert_eq!(route.writable_queues().len(), 8);
    }
    // Creating it again with the same settings is fine; different settings are not.
    let again = admin.create_topic("orders", 4, None).await.unwrap();
    assert!(again.iter().all(|c| !c.created));
    let err = admin.create_topic("orders", 8, None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TopicAlreadyExists), "{err}");
    assert_eq!(admin.list_topics().await.unwrap(), ["orders"]);
}

#[tokio::test]
async fn create_topic_validates_and_filters_by_cluster() {
    let ns = FakeNameServer::start().await;
    let _a = start_broker("broker-a", &[&ns]).await;
    let admin = Admin::new(config(&[&ns])).unwrap();
    assert!(admin.create_topic("bad name", 4, None).await.is_err());
    assert!(admin.create_topic("t", 0, None).await.is_err());
    let err = admin.create_topic("t", 4, Some("other")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoRoute), "{err}");
    let created = admin.create_topic("t", 2, Some("c1")).await.unwrap();
    assert_eq!(created.len(), 1);
}

#[tokio::test]
async fn create_topic_gives_up_after_the_route_wait() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    *a.register_delay.lock().unwrap() = Duration::from_secs(60);
    let admin = Admin::new(config(&[&ns]))
        .unwrap()
        .route_wait(Duration::from_millis(300));
    let err = admin.create_topic("t", 2, None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoRoute), "{err}");
    assert!(err.to_string().contains("did not route it"), "{err}");
}

#[tokio::test]
async fn cluster_status_merges_broker_reports() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    let _b = start_broker("broker-b", &[&ns]).await;
    a.add_topic("t", 1);
    ns.state.set_address("broker-b", &dead_address().await);
    let admin = Admin::new(config(&[&ns])).unwrap();
    let rows = admin.cluster_status().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].broker_name, "broker-a");
    assert!(rows[0].reachable);
    assert_eq!(rows[0].role, "MASTER");
    assert_eq!(rows[0].flush_mode.as_deref(), Some("async"));
    assert_eq!(rows[0].disk_usage_ratio, Some(0.25));
    assert!(!rows[1].reachable);
    assert!(rows[1].error.is_some());
}

#[tokio::test]
async fn group_lag_and_message_lookups() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 2);
    let p = Producer::builder(config(&[&ns])).build().unwrap();
    let mut receipts = Vec::new();
    for i in 0..10 {
        receipts.push(
            p.send(Message::new("t", format!("m{i}")).with_key(format!("k{}", i % 3)))
                .await
                .unwrap(),
        );
    }
    a.set_committed("g", "t", 0, 2);
    let admin = Admin::new(config(&[&ns])).unwrap();
    let lag = admin.group_lag("g", None).await.unwrap();
    assert_eq!(lag.len(), 2);
    assert_eq!(
        (
            lag[0].queue_id,
            lag[0].max_offset,
            lag[0].committed_offset,
            lag[0].lag
        ),
        (0, 5, Some(2), 3)
    );
    assert_eq!(
        (lag[1].queue_id, lag[1].committed_offset, lag[1].lag),
        (1, None, 5)
    );
    let err = admin.group_lag("nobody", None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::GroupNotFound), "{err}");

    let m = admin.get_message(&receipts[7].message_id).await.unwrap();
    assert_eq!(m.body().as_ref(), b"m7");
    assert_eq!(m.broker_name, "broker-a");
    let err = admin.get_message("0000").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MessageNotFound));

    let by_key = admin.find_by_key("t", "k1", 64).await.unwrap();
    let mut bodies: Vec<String> = by_key
        .iter()
        .map(|m| String::from_utf8_lossy(m.body()).into_owned())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["m1", "m4", "m7"]);
    let all = admin.find_by_time("t", 0, i64::MAX, 4).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(all
        .windows(2)
        .all(|w| w[0].message.store_timestamp_ms <= w[1].message.store_timestamp_ms));
    assert!(admin.find_by_time("t", 10, 5, 4).await.is_err());
}

#[tokio::test]
async fn a_nameserver_without_the_topic_is_not_the_last_word() {
    let ns1 = FakeNameServer::start().await;
    let ns2 = FakeNameServer::start().await;
    // The broker registered with ns2 only (ns1 has not heard from it yet).
    let a = start_broker("broker-a", &[&ns2]).await;
    a.add_topic("t", 2);
    let admin = Admin::new(config(&[&ns1, &ns2])).unwrap();
    let route = admin.topic_route("t").await.unwrap();
    assert_eq!(route.brokers[0].broker_name, "broker-a");
    let err = admin.topic_route("missing").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TopicNotFound));
}
