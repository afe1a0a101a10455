//! Group administration on real brokers. Resetting offsets under a live consumer: a dry run
//! changes nothing; a reset to earliest has the running consumer (no restart) deliver
//! everything again within a few heartbeats, and its commits from before the reset do not undo
//! it; the CLI shows the plan. Listing, describing (who holds which queue) and deleting a group.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{
    Admin, ClientConfig, Message, Producer, PushConsumer, ReceivedMessage, ResetPosition,
    StartPosition,
};
use sluice_integration_tests::{wait_until, Cluster, ClusterOptions};

const TOPIC: &str = "orders";
const GROUP: &str = "billing";

fn client_config(cluster: &Cluster) -> ClientConfig {
    ClientConfig::new([cluster.nameservers()]).request_timeout(Duration::from_secs(10))
}

async fn lag(admin: &Admin) -> u64 {
    admin
        .group_lag(GROUP, Some(TOPIC))
        .await
        .map_or(u64::MAX, |rows| rows.iter().map(|r| r.lag).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_consumer_follows_a_reset_without_a_restart() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let config = client_config(&cluster);
    let admin = Admin::new(config.clone()).unwrap();
    admin.create_topic(TOPIC, 3, None).await.unwrap();
    let producer = Producer::builder(config.clone()).build().unwrap();
    for i in 0..30 {
        producer
            .send(Message::new(TOPIC, format!("order-{i}")))
            .await
            .unwrap();
    }
    producer.shutdown().await;

    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let consumer = {
        let seen = seen.clone();
        PushConsumer::builder(config.clone(), GROUP)
            .subscribe(TOPIC)
            .start_position(StartPosition::Earliest)
            .heartbeat_interval(Duration::from_millis(200))
            .rebalance_interval(Duration::from_millis(300))
            .commit_interval(Duration::from_millis(200))
            .start_push(move |m: ReceivedMessage| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(m.body()).into_owned());
                    Ok::<(), std::io::Error>(())
                }
            })
            .await
            .unwrap()
    };
    let count = |seen: &Arc<Mutex<Vec<String>>>| seen.lock().unwrap().len();
    wait_until(
        Duration::from_secs(20),
        "all 30 consumed and committed",
        || async { count(&seen) >= 30 && lag(&admin).await == 0 },
    )
    .await
    .unwrap();
    assert_eq!(count(&seen), 30);

    // A dry run: the plan, nothing changed.
    let plan = admin
        .reset_offsets(GROUP, Some(TOPIC), ResetPosition::Earliest, true)
        .await
        .unwrap();
    assert_eq!(plan.len(), 3);
    assert!(plan.iter().all(|r| r.to == 0), "{plan:?}");
    assert_eq!(plan.iter().map(|r| r.from.unwrap_or(0)).sum::<u64>(), 30);
    assert_eq!(lag(&admin).await, 0);

    // The reset: the running consumer delivers all 30 again and commits past them.
    admin
        .reset_offsets(GROUP, Some(TOPIC), ResetPosition::Earliest, false)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "consumed again after the reset",
        || async { count(&seen) >= 60 && lag(&admin).await == 0 },
    )
    .await
    .unwrap();
    let mut again: Vec<String> = seen.lock().unwrap()[30..].to_vec();
    again.sort();
    let mut all: Vec<String> = (0..30).map(|i| format!("order-{i}")).collect();
    all.sort();
    assert_eq!(again, all);

    // To the end: nothing more is delivered, the lag stays 0.
    let to_end = admin
        .reset_offsets(GROUP, None, ResetPosition::Latest, false)
        .await
        .unwrap();
    assert!(to_end.iter().all(|r| r.to == 10), "{to_end:?}");
    consumer.shutdown().await;
    assert_eq!(count(&seen), 60);
    assert_eq!(lag(&admin).await, 0);

    let out = cluster
        .cli(&["group", "reset", GROUP, "--to", "1", "--dry-run"])
        .unwrap();
    assert!(out.contains("dry run") && out.contains(TOPIC), "{out}");
    assert_eq!(lag(&admin).await, 0, "a dry run changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_are_listed_described_and_deleted() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let config = client_config(&cluster);
    let admin = Admin::new(config.clone()).unwrap();
    admin.create_topic("jobs", 4, None).await.unwrap();
    let producer = Producer::builder(config.clone()).build().unwrap();
    for i in 0..20 {
        producer
            .send(Message::new("jobs", format!("job-{i}")))
            .await
            .unwrap();
    }
    producer.shutdown().await;
    let start = || async {
        PushConsumer::builder(config.clone(), "workers")
            .subscribe("jobs")
            .start_position(StartPosition::Earliest)
            .heartbeat_interval(Duration::from_millis(200))
            .rebalance_interval(Duration::from_millis(300))
            .commit_interval(Duration::from_millis(200))
            .start_push(|_m: ReceivedMessage| async { Ok::<(), std::io::Error>(()) })
            .await
            .unwrap()
    };
    let (a, b) = (start().await, start().await);
    let lag_of = |admin: &Admin| {
        let admin = admin.clone();
        async move {
            admin
                .group_lag("workers", Some("jobs"))
                .await
                .map_or(u64::MAX, |rows| rows.iter().map(|r| r.lag).sum())
        }
    };
    wait_until(Duration::from_secs(20), "consumed and split", || async {
        let both = admin.describe_group("workers").await.is_ok_and(|d| {
            d.group.members.len() == 2 && d.queues.iter().all(|q| q.member.is_some())
        });
        both && lag_of(&admin).await == 0
    })
    .await
    .unwrap();

    let listed = admin.list_groups().await.unwrap();
    let g = listed.iter().find(|g| g.group == "workers").unwrap();
    assert_eq!((g.mode, g.members.len()), ("clustering", 2));
    assert!(g.topics.contains(&"jobs".to_string()), "{g:?}");
    let d = admin.describe_group("workers").await.unwrap();
    assert_eq!(d.queues.len(), 4);
    for m in &d.group.members {
        let held = d
            .queues
            .iter()
            .filter(|q| q.member.as_ref() == Some(m))
            .count();
        assert_eq!(held, 2, "each member holds half: {d:?}");
    }
    assert_eq!(d.total_lag, 0);

    let refused = admin.delete_group("workers", false).await.unwrap_err();
    assert!(refused.to_string().contains("live member"), "{refused}");
    a.shutdown().await;
    b.shutdown().await;
    admin.delete_group("workers", false).await.unwrap();
    let gone = admin.describe_group("workers").await.unwrap_err();
    assert_eq!(
        gone.code(),
        Some(sluice_client::ErrorCode::GroupNotFound),
        "{gone}"
    );
    let out = cluster.cli(&["group", "list"]).unwrap();
    assert!(!out.contains("workers"), "{out}");
}
