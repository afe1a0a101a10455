//! Broadcast consumption as a user runs it: instances of one group running at the same time
//! each get every message; a restarted instance resumes from its own offsets; a new one starts
//! at latest.

use std::process::{Child, Command, Stdio};

use sluice_integration_tests::{bin, Cluster, ClusterOptions};

/// A `sluice consume --broadcast` process; killed if the test fails before it is waited for.
struct Consumer(Option<Child>);

impl Consumer {
    fn start(cluster: &Cluster, instance: &str, from: &str) -> Consumer {
        let child = Command::new(bin("sluice"))
            .arg("--nameservers")
            .arg(cluster.nameservers())
            .args([
                "consume",
                "news",
                "--group",
                "caches",
                "--broadcast",
                "--instance",
                instance,
                "--from",
                from,
                "--idle-timeout",
                "4",
                "--json",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Consumer(Some(child))
    }

    /// The bodies it consumed, sorted.
    fn bodies(mut self) -> Vec<String> {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut bodies: Vec<String> = doc["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("messages in {doc}"))
            .iter()
            .map(|m| m["body"].as_str().unwrap_or_default().to_string())
            .collect();
        bodies.sort();
        bodies
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn produce(cluster: &Cluster, from: usize, to: usize) -> Vec<String> {
    let bodies: Vec<String> = (from..to).map(|i| format!("news-{i:03}")).collect();
    let mut child = Command::new(bin("sluice"))
        .arg("--nameservers")
        .arg(cluster.nameservers())
        .args(["produce", "news"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for b in &bodies {
            writeln!(stdin, "{b}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bodies
}

#[test]
fn every_instance_gets_every_message_and_resumes_from_its_own_offsets() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    cluster
        .cli(&["topic", "create", "news", "--queues", "4"])
        .unwrap();
    let first = produce(&cluster, 0, 40);

    // Two instances at once: each gets all 40 (clustering would split them).
    let a = Consumer::start(&cluster, "host-a", "earliest");
    let b = Consumer::start(&cluster, "host-b", "earliest");
    assert_eq!(a.bodies(), first);
    assert_eq!(b.bodies(), first);

    // Restarted, instance a resumes after what it committed; a new instance starts at latest.
    let second = produce(&cluster, 40, 50);
    let a = Consumer::start(&cluster, "host-a", "earliest");
    let c = Consumer::start(&cluster, "host-c", "latest");
    assert_eq!(a.bodies(), second);
    assert!(c.bodies().is_empty());

    // Each instance's offsets are its own group's.
    let behind = cluster.group_lag_total("caches|host-b").unwrap();
    assert_eq!(behind, 10, "host-b has not read the second batch yet");
}

mod under_load {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use sluice_client::{
        Admin, ClientConfig, ConsumerBuilder, Message, Producer, PushConsumer, ReceivedMessage,
        StartPosition,
    };
    use sluice_integration_tests::{wait_until, Cluster, ClusterOptions};

    type Got = Arc<Mutex<BTreeSet<u64>>>;

    fn config(cluster: &Cluster) -> ClientConfig {
        ClientConfig::new([cluster.nameserver.addr.clone()]).request_timeout(Duration::from_secs(5))
    }

    async fn instance(cluster: &Cluster, id: &str, start: StartPosition, got: Got) -> PushConsumer {
        let c = ConsumerBuilder::new(config(cluster), "feed")
            .subscribe("ticks")
            .broadcast(id)
            .start_position(start)
            .heartbeat_interval(Duration::from_millis(300))
            .rebalance_interval(Duration::from_millis(500))
            .commit_interval(Duration::from_millis(200))
            .start_push(move |m: ReceivedMessage| {
                let got = got.clone();
                async move {
                    let body = String::from_utf8_lossy(m.body()).into_owned();
                    if let Some(n) = body.strip_prefix('n').and_then(|n| n.parse().ok()) {
                        got.lock().unwrap().insert(n);
                    }
                    Ok::<(), std::convert::Infallible>(())
                }
            })
            .await
            .unwrap();
        // A broadcast instance owns every queue once it started them.
        wait_until(
            Duration::from_secs(20),
            "the instance holding every queue",
            || async { c.assignment().len() == 4 },
        )
        .await
        .unwrap();
        c
    }

    async fn wait_for(got: &Got, want: &BTreeSet<u64>, who: &str) {
        wait_until(Duration::from_secs(30), who, || async {
            want.is_subset(&got.lock().unwrap())
        })
        .await
        .unwrap();
    }

    /// Instances join, leave and come back while a producer sends: the one that stays gets
    /// everything, the one that came back gets what it missed, and the one that joined late gets
    /// everything sent after it started.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_join_and_leave_while_messages_flow() {
        let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
        Admin::new(config(&cluster))
            .unwrap()
            .create_topic("ticks", 4, None)
            .await
            .unwrap();
        let (a, b, c): (Got, Got, Got) = Default::default();
        let stay = instance(&cluster, "stay", StartPosition::Earliest, a.clone()).await;
        let leave = instance(&cluster, "leave", StartPosition::Earliest, b.clone()).await;

        let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let producer = Producer::builder(config(&cluster)).build().unwrap();
        let sender = {
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if producer
                        .send(Message::new("ticks", format!("n{n}")))
                        .await
                        .is_ok()
                    {
                        acked.lock().unwrap().push(n);
                    }
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let count = |min: usize| {
            let acked = acked.clone();
            async move {
                wait_until(Duration::from_secs(30), "sends", || async {
                    acked.lock().unwrap().len() >= min
                })
                .await
                .unwrap()
            }
        };
        count(200).await;
        leave.shutdown().await;
        count(400).await;
        let late = instance(&cluster, "late", StartPosition::Latest, c.clone()).await;
        let joined_at = acked.lock().unwrap().len();
        count(joined_at + 200).await;
        let back = instance(&cluster, "leave", StartPosition::Earliest, b.clone()).await;
        count(joined_at + 400).await;
        stop.store(true, Ordering::Relaxed);
        sender.await.unwrap();

        let all: BTreeSet<u64> = acked.lock().unwrap().iter().copied().collect();
        let after_join: BTreeSet<u64> =
            acked.lock().unwrap()[joined_at..].iter().copied().collect();
        wait_for(&a, &all, "the staying instance to get every message").await;
        wait_for(
            &b,
            &all,
            "the returning instance to catch up on what it missed",
        )
        .await;
        wait_for(
            &c,
            &after_join,
            "the late instance to get everything after it joined",
        )
        .await;
        for i in [stay, back, late] {
            i.shutdown().await;
        }
    }
}
