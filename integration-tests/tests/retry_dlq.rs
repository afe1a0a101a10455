//! Consumer retries and dead letters against real binaries: a failing handler's message comes
//! back on the group's retry topic with its attempt count, goes to the dead-letter topic once
//! the group's retries are spent, and redrive sends it back to its topic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{
    Admin, ClientConfig, Message, Producer, PullConsumer, PushConsumer, ReceivedMessage,
    SendBackOutcome, StartPosition,
};
use sluice_integration_tests::{wait_until, Cluster, ClusterOptions};

fn client_config(cluster: &Cluster) -> ClientConfig {
    ClientConfig::new([cluster.nameservers()]).request_timeout(Duration::from_secs(10))
}

/// Every delivery: body -> reconsume count of each delivery, in order.
type Seen = Arc<Mutex<HashMap<String, Vec<u32>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_messages_retry_with_backoff_then_dead_letter_and_redrive() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    admin.create_topic("jobs", 2, None).await.unwrap();
    let policies = admin
        .update_group_config("workers", Some(2), Some(vec![300, 600]))
        .await
        .unwrap();
    assert_eq!(
        (policies[0].max_retries, policies[0].backoff_ms.clone()),
        (2, vec![300, 600])
    );
    assert_eq!(admin.group_config("workers").await.unwrap(), policies);

    let seen: Seen = Arc::default();
    let healed = Arc::new(Mutex::new(false));
    let consumer = {
        let seen = seen.clone();
        let healed = healed.clone();
        PushConsumer::builder(client_config(&cluster), "workers")
            .subscribe("jobs")
            .start_position(StartPosition::Earliest)
            .heartbeat_interval(Duration::from_millis(200))
            .rebalance_interval(Duration::from_millis(300))
            .commit_interval(Duration::from_millis(300))
            .start_push(move |m: ReceivedMessage| {
                let seen = seen.clone();
                let healed = healed.clone();
                async move {
                    let body = String::from_utf8_lossy(m.body()).into_owned();
                    let attempt = m.reconsume_times();
                    seen.lock()
                        .unwrap()
                        .entry(body.clone())
                        .or_default()
                        .push(attempt);
                    let fails = match body.split_once('-') {
                        Some(("bad", _)) => !*healed.lock().unwrap(),
                        Some(("flaky", n)) => attempt < n.parse::<u32>().unwrap_or(0),
                        _ => false,
                    };
                    if fails {
                        return Err(std::io::Error::other(format!(
                            "cannot handle {body} #{attempt}"
                        )));
                    }
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    let p = Producer::builder(client_config(&cluster)).build().unwrap();
    let bodies = ["good-1", "good-2", "flaky-1", "flaky-2", "bad-a", "bad-b"];
    for b in bodies {
        p.send(Message::new("jobs", b).with_key(b)).await.unwrap();
    }

    let dead = || async { admin.dead_letters("workers", 100).await.unwrap() };
    wait_until(
        Duration::from_secs(30),
        "both bad messages dead-lettered",
        || async { dead().await.len() >= 2 },
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(30),
        "flaky messages succeeded",
        || async {
            let s = seen.lock().unwrap();
            s.get("flaky-2").is_some_and(|a| a.len() == 3)
        },
    )
    .await
    .unwrap();
    {
        let s = seen.lock().unwrap();
        assert_eq!(s["good-1"], vec![0]);
        assert_eq!(s["flaky-1"], vec![0, 1]);
        assert_eq!(s["flaky-2"], vec![0, 1, 2]);
        assert_eq!(s["bad-a"], vec![0, 1, 2], "the first try and two retries");
    }
    let letters = dead().await;
    let bad_a = letters
        .iter()
        .find(|d| d.failure.contains("bad-a"))
        .expect("bad-a");
    assert_eq!(
        (bad_a.topic.as_str(), bad_a.attempts, bad_a.redriven),
        ("jobs", 3, false)
    );
    assert!(
        bad_a.failure.contains("cannot handle bad-a #2"),
        "{}",
        bad_a.failure
    );
    // Found by id and by key like any message: the newest record of the id is the dead letter.
    let by_id = admin.get_message(&bad_a.message_id).await.unwrap();
    assert_eq!(by_id.message.topic, "%DLQ%workers");
    assert!(!admin
        .find_by_key("%DLQ%workers", "bad-a", 10)
        .await
        .unwrap()
        .is_empty());

    // Redrive one with a handler that now succeeds: it is consumed again with a fresh count.
    *healed.lock().unwrap() = true;
    let r = admin
        .redrive("workers", std::slice::from_ref(&bad_a.message_id), false)
        .await
        .unwrap();
    assert_eq!(r.iter().map(|b| b.redriven).sum::<u32>(), 1);
    wait_until(
        Duration::from_secs(30),
        "bad-a consumed after redrive",
        || async { seen.lock().unwrap()["bad-a"].len() == 4 },
    )
    .await
    .unwrap();
    assert_eq!(seen.lock().unwrap()["bad-a"], vec![0, 1, 2, 0]);
    let letters = dead().await;
    assert!(letters
        .iter()
        .any(|d| d.message_id == bad_a.message_id && d.redriven));
    assert!(letters
        .iter()
        .any(|d| d.message_id != bad_a.message_id && !d.redriven));
    // Redriving it again does nothing: it is not pending any more.
    let again = admin
        .redrive("workers", std::slice::from_ref(&bad_a.message_id), false)
        .await
        .unwrap();
    assert_eq!(again.iter().map(|b| b.redriven).sum::<u32>(), 0);
    consumer.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_consumer_nacks_and_gets_the_message_back_from_its_retry_topic() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    admin.create_topic("t", 1, None).await.unwrap();
    let p = Producer::builder(client_config(&cluster)).build().unwrap();
    p.send(Message::new("t", "once more")).await.unwrap();
    let mut c = PullConsumer::builder(client_config(&cluster), "pullers")
        .subscribe("t")
        .start_position(StartPosition::Earliest)
        .heartbeat_interval(Duration::from_millis(200))
        .rebalance_interval(Duration::from_millis(300))
        .start_pull()
        .await
        .unwrap();
    let first = loop {
        let got = c.poll(10, Duration::from_secs(5)).await.unwrap();
        if let Some(m) = got.into_iter().next() {
            break m;
        }
    };
    let outcome = c
        .nack(&first, Some(Duration::from_millis(200)), "not now")
        .await
        .unwrap();
    assert!(
        matches!(outcome, SendBackOutcome::Retry { attempt: 1, .. }),
        "{outcome:?}"
    );
    let again = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let got = c.poll(10, Duration::from_secs(1)).await.unwrap();
            if let Some(m) = got.into_iter().find(|m| m.topic() == "%RETRY%pullers") {
                break m;
            }
        }
    })
    .await
    .expect("the nacked message came back");
    assert_eq!(again.body().as_ref(), b"once more");
    assert_eq!(again.reconsume_times(), 1);
    assert_eq!(again.message_id(), first.message_id());
    c.shutdown().await;
    p.shutdown().await;
}
