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
