//! A message that keeps failing in an ordered queue: retried in place while the queue waits,
//! then dead-lettered after the group's max retries so the queue moves on, or (if the consumer
//! asked) retried for ever with everything behind it held back. Also the CLI's `--orderly`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{
    Admin, ClientConfig, ConsumerBuilder, Message, OrderlyFailure, Producer, PushConsumer,
    ReceivedMessage, StartPosition,
};
use sluice_integration_tests::{wait_until, Cluster, ClusterOptions};

type Seen = Arc<Mutex<Vec<(String, u32)>>>;

fn client_config(cluster: &Cluster) -> ClientConfig {
    ClientConfig::new([cluster.nameserver.addr.clone()]).request_timeout(Duration::from_secs(5))
}

async fn start(
    cluster: &Cluster,
    group: &str,
    on_failure: OrderlyFailure,
    seen: Seen,
) -> PushConsumer {
    ConsumerBuilder::new(client_config(cluster), group)
        .subscribe("steps")
        .orderly(on_failure)
        .start_position(StartPosition::Earliest)
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .heartbeat_interval(Duration::from_millis(200))
        .rebalance_interval(Duration::from_millis(300))
        .commit_interval(Duration::from_millis(200))
        .start_push(move |m: ReceivedMessage| {
            let seen = seen.clone();
            async move {
                let body = String::from_utf8_lossy(m.body()).into_owned();
                seen.lock()
                    .unwrap()
                    .push((body.clone(), m.reconsume_times()));
                if body == "bad" {
                    return Err("cannot apply this step".to_string());
                }
                Ok(())
            }
        })
        .await
        .unwrap()
}

fn bodies(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(b, _)| b.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_retried_in_place_then_dead_lettered_or_blocks() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    admin.create_topic("steps", 1, None).await.unwrap();
    for g in ["steps-dlq", "steps-block"] {
        admin.update_group_config(g, Some(2), None).await.unwrap();
    }
    let producer = Producer::builder(client_config(&cluster)).build().unwrap();
    for b in ["first", "bad", "after"] {
        producer.send(Message::new("steps", b)).await.unwrap();
    }

    // Dead letter: three attempts (one and two retries) in place, then the queue moves on.
    let seen: Seen = Arc::default();
    let c = start(
        &cluster,
        "steps-dlq",
        OrderlyFailure::DeadLetter,
        seen.clone(),
    )
    .await;
    wait_until(
        Duration::from_secs(20),
        "the message after the poison one",
        || async { bodies(&seen).contains(&"after".to_string()) },
    )
    .await
    .unwrap();
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![
            ("first".to_string(), 0),
            ("bad".to_string(), 0),
            ("bad".to_string(), 1),
            ("bad".to_string(), 2),
            ("after".to_string(), 0)
        ]
    );
    let dead = admin.dead_letters("steps-dlq", 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!((dead[0].attempts, dead[0].topic.as_str()), (3, "steps"));
    assert!(dead[0].failure.contains("cannot apply"), "{dead:?}");
    c.shutdown().await;

    // Block: retried past the group's max, and nothing behind it is processed.
    let seen: Seen = Arc::default();
    let c = start(&cluster, "steps-block", OrderlyFailure::Block, seen.clone()).await;
    wait_until(
        Duration::from_secs(20),
        "six attempts of the poison message",
        || async { bodies(&seen).iter().filter(|b| *b == "bad").count() >= 6 },
    )
    .await
    .unwrap();
    c.shutdown().await;
    let b = bodies(&seen);
    assert!(!b.contains(&"after".to_string()), "{b:?}");
    assert!(admin
        .dead_letters("steps-block", 10)
        .await
        .unwrap()
        .is_empty());
    // Its offset stayed before the poison message: a restart starts there again.
    assert_eq!(cluster.group_lag_total("steps-block").unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_consumes_orderly_and_the_group_shows_it() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    admin.create_topic("keyed", 2, None).await.unwrap();
    let producer = Producer::builder(client_config(&cluster)).build().unwrap();
    for i in 0..30 {
        let key = format!("k{}", i % 3);
        let m = Message::new("keyed", format!("{key}:{i:02}"));
        producer.send_with_key(m, &key).await.unwrap();
    }
    let out = tokio::task::block_in_place(|| {
        cluster.cli(&[
            "consume",
            "keyed",
            "--group",
            "cli-orderly",
            "--orderly",
            "--from",
            "earliest",
            "--max",
            "30",
            "--json",
        ])
    })
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let got: Vec<String> = doc["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(got.len(), 30, "{got:?}");
    // Each key's messages in the order they were sent.
    for k in ["k0", "k1", "k2"] {
        let of_key: Vec<&String> = got.iter().filter(|b| b.starts_with(k)).collect();
        let mut sorted = of_key.clone();
        sorted.sort_unstable();
        assert_eq!(of_key, sorted, "{k}");
    }
    let lag = tokio::task::block_in_place(|| cluster.group_lag_total("cli-orderly")).unwrap();
    assert_eq!(lag, 0);
}

/// A `sluice consume --orderly` process; killed if the test fails before it is.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A consumer killed with SIGKILL keeps its queues until the lease runs out: no one else
/// processes them sooner, and then another member takes them over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_holds_its_queues_until_the_lease_runs_out() {
    const LEASE_MS: u64 = 6_000;
    let cluster = Cluster::start(
        1,
        ClusterOptions {
            extra_broker_toml: format!("orderly_lock_lease_ms = {LEASE_MS}\n"),
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    admin.create_topic("steps", 2, None).await.unwrap();
    let mut child = Child(
        std::process::Command::new(sluice_integration_tests::bin("sluice"))
            .arg("--nameservers")
            .arg(cluster.nameservers())
            .args([
                "consume",
                "steps",
                "--group",
                "killed",
                "--orderly",
                "--from",
                "earliest",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let held = || async {
        let groups = admin.list_groups().await.unwrap_or_default();
        groups
            .into_iter()
            .find(|g| g.group == "killed")
            .map(|g| g.locks)
            .unwrap_or_default()
    };
    wait_until(
        Duration::from_secs(20),
        "the process holding both queues",
        || async { held().await.iter().filter(|l| l.remaining_ms > 0).count() == 2 },
    )
    .await
    .unwrap();
    child.0.kill().unwrap();
    let _ = child.0.wait();
    let left = held()
        .await
        .iter()
        .map(|l| l.remaining_ms)
        .min()
        .unwrap_or(0);
    let killed_at = std::time::Instant::now();
    assert!(left > 1_000, "{left} ms left of the lease");

    let producer = Producer::builder(client_config(&cluster)).build().unwrap();
    for b in ["one", "two", "three", "four"] {
        producer.send(Message::new("steps", b)).await.unwrap();
    }
    let seen: Seen = Arc::default();
    let c = start(&cluster, "killed", OrderlyFailure::Block, seen.clone()).await;
    wait_until(Duration::from_secs(30), "the queues taken over", || async {
        bodies(&seen).len() >= 4
    })
    .await
    .unwrap();
    let waited = killed_at.elapsed();
    // The member list forgets the dead process after 3 s; the locks hold the queues longer.
    assert!(
        waited >= Duration::from_millis(left.saturating_sub(300)),
        "taken over after {waited:?}, with {left} ms of the lease left at the kill"
    );
    c.shutdown().await;
}
