//! scripts/cluster.sh as the chaos tool drives it: replica groups (`--groups --replicas`),
//! `nodes`, `kill-master`, `pause`/`resume`, `partition`/`heal`, `restart`, idempotent `up` and
//! `down`, and two clusters in different directories that do not touch each other.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sluice_integration_tests::{bin_dir, repo_root, TEST_DISK_BUDGET};

fn script(dir: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/cluster.sh"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("SLUICE_BIN_DIR", bin_dir())
        // Disk ratios against a budget: a host disk filled by others is not this test's subject.
        .env("SLUICE_DISK_BUDGET_BYTES", TEST_DISK_BUDGET.to_string())
        .env("SLUICE_STOP_TIMEOUT", "5")
        .env("SLUICE_HEARTBEAT_MS", "1000")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = script(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cluster.sh {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `cluster.sh down` on drop, also when the test panics.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = script(&self.0, &["down"]);
    }
}

#[derive(Debug, Clone)]
struct NodeRow {
    kind: String,
    group: String,
    replica: u64,
    address: String,
    state: String,
}

fn nodes(dir: &Path) -> BTreeMap<String, NodeRow> {
    ok(dir, &["nodes"])
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 6, "bad nodes line {l:?}");
            (
                f[0].to_string(),
                NodeRow {
                    kind: f[1].into(),
                    group: f[2].into(),
                    replica: f[3].parse().unwrap(),
                    address: f[4].into(),
                    state: f[5].into(),
                },
            )
        })
        .collect()
}

fn pids(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(dir.join("nodes")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("node.pid")).ok())
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The replica of `group` that `sluice cluster status` shows as a reachable MASTER.
fn master_of(dir: &Path, group: &str) -> Option<String> {
    let ns = std::fs::read_to_string(dir.join("nameservers")).ok()?;
    let out = Command::new(bin_dir().join("sluice"))
        .args(["--nameservers", ns.trim(), "cluster", "status", "--json"])
        .output()
        .ok()?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    doc["brokers"]
        .as_array()?
        .iter()
        .find(|b| b["broker_name"] == group && b["role"] == "MASTER" && b["reachable"] == true)
        .and_then(|b| b["address"].as_str().map(String::from))
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn replica_groups_kill_master_pause_partition_and_isolation_between_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let _down_a = Down(a.clone());
    let _down_b = Down(b.clone());

    ok(
        &a,
        &[
            "up",
            "--groups",
            "2",
            "--replicas",
            "3",
            "--fault-injection",
        ],
    );
    ok(&b, &["up"]);
    let na = nodes(&a);
    let nb = nodes(&b);
    let brokers: Vec<&NodeRow> = na.values().filter(|n| n.kind == "broker").collect();
    assert_eq!(brokers.len(), 6, "{na:?}");
    for g in ["broker-a", "broker-b"] {
        let ids: Vec<u64> = brokers
            .iter()
            .filter(|n| n.group == g)
            .map(|n| n.replica)
            .collect();
        assert_eq!(ids, [1, 2, 3], "{g}");
    }
    // Every node of both clusters on its own address, every node running.
    let addrs: HashSet<&str> = na
        .values()
        .chain(nb.values())
        .map(|n| n.address.as_str())
        .collect();
    assert_eq!(addrs.len(), na.len() + nb.len());
    assert!(na.values().chain(nb.values()).all(|n| n.state == "running"));
    // B is the default shape: one nameserver, one standalone broker.
    assert_eq!(nb.len(), 2);
    assert_eq!(nb["broker-a-1"].replica, 0);

    // `up` again is a no-op that reports the running cluster.
    assert!(ok(&a, &["up"]).contains("already running"));

    // kill-master: the master of broker-b dies, another replica takes over; broker-a and the
    // other cluster are untouched.
    let a_master = master_of(&a, "broker-a").expect("broker-a has a master");
    let old = master_of(&a, "broker-b").expect("broker-b has a master");
    let out = ok(&a, &["kill-master", "broker-b"]);
    assert!(out.contains("killed"), "{out}");
    // SIGKILL is delivered at once, but the process may take a moment to exit and be reaped.
    let killed = wait_for("the killed master to be stopped", || {
        nodes(&a)
            .into_iter()
            .find(|(_, n)| n.address == old && n.state == "stopped")
            .map(|(name, n)| (name, n.state))
    });
    let new = wait_for("a new broker-b master", || {
        master_of(&a, "broker-b").filter(|m| *m != old)
    });
    assert_ne!(new, old);
    assert_eq!(
        master_of(&a, "broker-a").as_deref(),
        Some(a_master.as_str())
    );
    assert!(nodes(&b).values().all(|n| n.state == "running"));
    // Killing a stopped node is fine; restart brings it back.
    ok(&a, &["kill", &killed.0]);
    ok(&a, &["restart", &killed.0]);
    assert_eq!(nodes(&a)[&killed.0].state, "running");

    // pause / resume a replica: SIGSTOP shows as paused.
    ok(&a, &["pause", "broker-a-2"]);
    assert_eq!(nodes(&a)["broker-a-2"].state, "paused");
    ok(&a, &["pause", "broker-a-2"]);
    ok(&a, &["resume", "broker-a-2"]);
    assert_eq!(nodes(&a)["broker-a-2"].state, "running");

    // partition / heal through fault injection; the standalone broker of B refuses.
    let out = ok(&a, &["partition", "broker-a-3"]);
    assert!(out.contains("isolated peers [1,2]"), "{out}");
    assert_eq!(nodes(&a)["broker-a-3"].state, "partitioned");
    let out = ok(&a, &["heal", "broker-a-3"]);
    assert!(out.contains("isolated peers []"), "{out}");
    assert_eq!(nodes(&a)["broker-a-3"].state, "running");
    assert!(!script(&b, &["partition", "broker-a-1"]).status.success());
    assert!(!script(&a, &["kill-master", "broker-z"]).status.success());

    // A paused node still stops on `down`; `down` stops only this directory's nodes.
    ok(&a, &["pause", "broker-a-1"]);
    let a_pids = pids(&a);
    let b_pids = pids(&b);
    assert_eq!(a_pids.len(), 7);
    ok(&a, &["down"]);
    assert!(a_pids.iter().all(|&p| !alive(p)), "cluster A still running");
    assert!(b_pids.iter().all(|&p| alive(p)), "down on A stopped B");
    assert!(ok(&a, &["down"]).contains("down"));
    ok(&b, &["down"]);
    assert!(b_pids.iter().all(|&p| !alive(p)));
}
