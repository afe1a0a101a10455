//! scripts/bench-compare.sh without the peer (`--skip-nats`), small counts: the rounds, the
//! fresh start of every round (or one cluster with `--reuse`), and the table it prints.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_integration_tests::{bin_dir, repo_root, TEST_DISK_BUDGET};

/// Kills the script if the test panics or times out, then stops the cluster it may have left.
struct Run {
    child: Child,
    dir: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/cluster.sh"))
            .args(["down", "--dir"])
            .arg(self.dir.join("sluice-r1"))
            .env("SLUICE_BIN_DIR", bin_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs the script with two rounds of tiny workloads; returns its output and the table.
fn compare(dir: &Path, extra: &[&str]) -> (String, String) {
    let markdown = dir.join("table.md");
    let log = dir.join("out.log");
    let child = Command::new("bash")
        .arg(repo_root().join("scripts/bench-compare.sh"))
        .args([
            "--replicas",
            "1",
            "--repeat",
            "2",
            "--skip-nats",
            "--keep",
            "--dir",
        ])
        .arg(dir.join("run"))
        .arg("--markdown")
        .arg(&markdown)
        .args(extra)
        .env("SLUICE_BIN_DIR", bin_dir())
        .env("SLUICE_DISK_BUDGET_BYTES", TEST_DISK_BUDGET.to_string())
        .env("SLUICE_STOP_TIMEOUT", "5")
        .env("SYNC_COUNT", "50")
        .env("ASYNC_COUNT", "500")
        .env("PIPELINED_COUNT", "2000")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut run = Run {
        child,
        dir: dir.join("run"),
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = run.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "bench-compare.sh still runs after 180 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.success(),
        "bench-compare.sh failed ({status}):\n{out}"
    );
    (out, std::fs::read_to_string(&markdown).unwrap())
}

/// The Sluice value of a table row, as a number.
fn row(table: &str, name: &str) -> f64 {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {name} |")))
        .unwrap_or_else(|| panic!("no row {name:?} in\n{table}"));
    let cell = line.split('|').nth(2).unwrap().trim().replace(',', "");
    cell.parse()
        .unwrap_or_else(|_| panic!("row {name:?} has no number: {line}"))
}

#[test]
fn every_round_starts_afresh_unless_told_to_reuse_and_the_table_has_every_row() {
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let (out, table) = compare(&fresh, &[]);
    assert_eq!(
        out.matches("== starting Sluice").count(),
        2,
        "a cluster per round:\n{out}"
    );
    for name in [
        "1 replica: sync publish (1 in flight) (msgs/s)",
        "1 replica: sync p50 (us)",
        "1 replica: sync p99 (us)",
        "1 replica: async publish (256 in flight) (msgs/s)",
        "1 replica: pipelined, batched (Sluice only) (msgs/s)",
    ] {
        assert!(row(&table, name) > 0.0, "{name}: {table}");
    }
    // Both rounds were measured, each on its own cluster: --keep moved round 1's data aside,
    // and the last round's directory holds only its own topics.
    let results = std::fs::read_to_string(fresh.join("run/results.tsv")).unwrap();
    assert_eq!(
        results
            .lines()
            .filter(|l| l.starts_with("sluice\tr1 pipelined msgs/s\t"))
            .count(),
        2,
        "{results}"
    );
    let mut first = topics_of(&fresh.join("run/r1-round1/sluice-r1"));
    first.sort();
    assert_eq!(first, ["cmp-async-1", "cmp-pipe-1", "cmp-sync-1"]);
    let mut last = topics_of(&fresh.join("run/sluice-r1"));
    last.sort();
    assert_eq!(last, ["cmp-async-2", "cmp-pipe-2", "cmp-sync-2"]);

    let reuse = tmp.path().join("reuse");
    std::fs::create_dir_all(&reuse).unwrap();
    let (out, _) = compare(&reuse, &["--reuse"]);
    assert_eq!(
        out.matches("== starting Sluice").count(),
        1,
        "one cluster:\n{out}"
    );
    let mut topics = topics_of(&reuse.join("run/sluice-r1"));
    topics.sort();
    assert_eq!(
        topics,
        [
            "cmp-async-1",
            "cmp-async-2",
            "cmp-pipe-1",
            "cmp-pipe-2",
            "cmp-sync-1",
            "cmp-sync-2"
        ]
    );
    assert!(!reuse.join("run/r1-round1").exists());
}

/// Topics with consume queues in a kept cluster directory.
fn topics_of(cluster: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for cq in walk(cluster) {
        if cq.file_name().is_some_and(|n| n == "consumequeue") && cq.is_dir() {
            for t in std::fs::read_dir(&cq).unwrap().flatten() {
                out.push(t.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
            out.push(p);
        }
    }
    out
}
