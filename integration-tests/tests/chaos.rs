//! The short chaos scenario CI runs: `scripts/chaos.sh` starts its own cluster (cluster.sh, one
//! group of 3 replicas, fault injection on), kills, pauses and partitions the master under
//! load, and must find every acknowledged message consumed, in order, and the replicas equal;
//! once on a plain cluster and once on a secured one.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_integration_tests::{bin_dir, repo_root, TEST_DISK_BUDGET};

/// The whole run (cluster start, cycles, drain, checks) must end within this.
const RUN_BOUND: Duration = Duration::from_secs(110);

/// Stops every cluster chaos.sh made under `tmp` (its TMPDIR), also when the test panics or
/// chaos.sh had to be killed before its own cleanup ran.
struct ClusterGuard<'a> {
    tmp: &'a Path,
}

impl Drop for ClusterGuard<'_> {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.tmp) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("sluice-chaos.") {
                let _ = Command::new("bash")
                    .arg(repo_root().join("scripts/cluster.sh"))
                    .arg("down")
                    .arg("--dir")
                    .arg(e.path())
                    .env("SLUICE_STOP_TIMEOUT", "5")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Waits for `child` at most `bound`; on timeout sends SIGTERM (chaos.sh then stops its
/// cluster), then SIGKILL.
fn wait_bounded(child: &mut Child, bound: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let grace = Instant::now() + Duration::from_secs(20);
            while Instant::now() < grace {
                if let Ok(Some(_)) = child.try_wait() {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn short_chaos_run_kill_pause_partition_loses_nothing() {
    short_chaos_run(&[]);
}

/// The same against a cluster with authentication on, signed Raft traffic and signed
/// registrations: the chaos tool signs as the admin, its fault injection with the cluster
/// secret.
#[test]
fn short_chaos_run_on_a_secured_cluster_loses_nothing() {
    let err = short_chaos_run(&["--secure"]);
    assert!(
        err.contains("secured: source"),
        "the cluster was not secured:\n{err}"
    );
}

/// Runs chaos.sh with `extra` arguments, checks its report; returns its stderr.
fn short_chaos_run(extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let _guard = ClusterGuard { tmp: tmp.path() };
    let report_path = tmp.path().join("report.json");
    let log_path = tmp.path().join("chaos.log");
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg(repo_root().join("scripts/chaos.sh"))
        .args([
            "--cycles",
            "3",
            "--faults",
            "kill,pause,partition",
            "--report",
        ])
        .arg(&report_path)
        .args(extra)
        .args(["--", "--warmup-acks", "100", "--hold-acks", "100"])
        .env("SLUICE_BIN_DIR", bin_dir())
        // Disk ratios against a budget: a host disk filled by others is not this test's subject.
        .env("SLUICE_DISK_BUDGET_BYTES", TEST_DISK_BUDGET.to_string())
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(std::fs::File::create(tmp.path().join("chaos.err")).unwrap())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, RUN_BOUND);
    let out = std::fs::read_to_string(&log_path).unwrap_or_default();
    let err = std::fs::read_to_string(tmp.path().join("chaos.err")).unwrap_or_default();
    println!("{out}\n{err}");
    let status = status.unwrap_or_else(|| panic!("chaos.sh did not finish within {RUN_BOUND:?}"));
    assert!(
        status.success(),
        "chaos.sh failed ({status}):\n{out}\n{err}"
    );
    println!("chaos run took {:?}", started.elapsed());

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["cycles_completed"], 3);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["missing_from_log"], 0);
    assert_eq!(report["moved"], 0);
    assert_eq!(report["reordered"], 0);
    assert_eq!(report["out_of_order"], 0);
    assert_eq!(report["replicas_consistent"], true);
    let acked = report["acked"].as_u64().unwrap();
    assert!(
        acked >= 400,
        "too little load to mean anything: {acked} acks"
    );
    assert!(report["consumed"].as_u64().unwrap() >= acked);
    let cycles = report["cycles"].as_array().unwrap();
    let faults: Vec<&str> = cycles
        .iter()
        .map(|c| c["fault"].as_str().unwrap())
        .collect();
    assert_eq!(faults, ["kill", "pause", "partition"]);
    for c in cycles {
        // A different replica took over, producers got acks from it, the old one rejoined.
        assert_ne!(c["new_master"], c["old_master"], "{c}");
        assert!(c["failover_ms"].as_u64().is_some(), "{c}");
        assert_eq!(c["rejoined"], true, "{c}");
    }
    // The cluster chaos.sh started is stopped and its directory removed after a passing run.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("sluice-chaos."))
        .collect();
    assert!(left.is_empty(), "chaos.sh left its cluster directory");
    let running = processes_mentioning(tmp.path());
    assert!(running.is_empty(), "nodes still running: {running:?}");
    err
}

/// Pids of live processes whose command line mentions `path` (the nodes name their config
/// file in it).
fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A zombie (state Z) has exited.
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmdline).contains(&needle)
        })
        .collect()
}
