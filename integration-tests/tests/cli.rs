//! The `sluice` command line tool and the cluster scripts, as a user runs them.

use std::io::Write;
use std::process::{Command, Stdio};

use sluice_integration_tests::{bin, bin_dir, Cluster, ClusterOptions};

fn cli_stdin(cluster: &Cluster, args: &[&str], input: &str) -> String {
    let mut child = Command::new(bin("sluice"))
        .arg("--nameservers")
        .arg(cluster.nameservers())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn cli_round_trip() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    cluster
        .cli(&["topic", "create", "cli-topic", "--queues", "3"])
        .unwrap();
    let topics = json(&cluster.cli(&["topic", "list", "--json"]).unwrap());
    assert!(topics.to_string().contains("cli-topic"), "{topics}");
    let route = json(
        &cluster
            .cli(&["topic", "route", "cli-topic", "--json"])
            .unwrap(),
    );
    assert!(route.to_string().contains("broker-a"), "{route}");

    let lines: String = (0..50).map(|i| format!("line {i}\n")).collect();
    let produced = cli_stdin(
        &cluster,
        &["produce", "cli-topic", "--key", "k1", "--tag", "t1"],
        &lines,
    );
    assert_eq!(
        produced.lines().filter(|l| !l.trim().is_empty()).count(),
        50,
        "{produced}"
    );
    let generated = cluster
        .cli(&["produce", "cli-topic", "--count", "20", "--size", "100"])
        .unwrap();
    assert_eq!(
        generated.lines().filter(|l| !l.trim().is_empty()).count(),
        20,
        "{generated}"
    );

    let consumed = cluster
        .cli(&[
            "consume",
            "cli-topic",
            "--group",
            "cli-g",
            "--from",
            "earliest",
            "--max",
            "70",
            "--idle-timeout",
            "10",
        ])
        .unwrap();
    for i in 0..50 {
        assert!(
            consumed.contains(&format!("line {i}")),
            "line {i} missing from {consumed}"
        );
    }
    assert_eq!(cluster.group_lag_total("cli-g").unwrap(), 0);

    let status = json(&cluster.cli(&["cluster", "status", "--json"]).unwrap());
    let s = status.to_string();
    assert!(s.contains("broker-a") && s.contains("it"), "{status}");

    // Message query: by key finds the 50 keyed lines; one of them by id.
    let found = json(
        &cluster
            .cli(&[
                "message",
                "find",
                "--topic",
                "cli-topic",
                "--key",
                "k1",
                "--json",
            ])
            .unwrap(),
    );
    let found = found
        .as_array()
        .cloned()
        .unwrap_or_else(|| found["messages"].as_array().cloned().unwrap());
    assert_eq!(found.len(), 50);
    let id = found[0]["message_id"].as_str().unwrap().to_string();
    let one = cluster.cli(&["message", "get", &id, "--json"]).unwrap();
    assert!(one.contains(&id), "{one}");
    let ranged = json(
        &cluster
            .cli(&[
                "message",
                "find",
                "--topic",
                "cli-topic",
                "--from",
                "0",
                "--to",
                &i64::MAX.to_string(),
                "--json",
            ])
            .unwrap(),
    );
    assert!(ranged.to_string().contains("line 0"), "{ranged}");

    // Errors are clear and exit non-zero.
    let out = Command::new(bin("sluice"))
        .args([
            "--nameservers",
            &cluster.nameservers(),
            "topic",
            "route",
            "no-such-topic",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .to_lowercase()
        .contains("no-such-topic"));
}

/// scripts/cluster.sh and scripts/quickstart.sh as the README uses them, on prebuilt binaries.
#[test]
fn cluster_script_up_quickstart_down() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let cdir = dir.path().join("cluster");
    let run = |script: &str, args: &[&str]| {
        Command::new("bash")
            .arg(root.join("scripts").join(script))
            .args(args)
            .env("SLUICE_BIN_DIR", bin_dir())
            .env("SLUICE_CLUSTER_DIR", &cdir)
            .current_dir(&root)
            .output()
            .unwrap()
    };
    struct Down<'a>(&'a dyn Fn());
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let cdir_s = cdir.display().to_string();
    let down = || {
        let _ = run("cluster.sh", &["down", "--dir", &cdir_s]);
    };
    let _guard = Down(&down);

    let out = run("quickstart.sh", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quickstart failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("order-"), "{stdout}");
    let again = run("cluster.sh", &["up", "--dir", &cdir_s]);
    assert!(again.status.success(), "second up must be a no-op");
    // The pids the script started, read before `down` removes the pid files.
    let pids: Vec<i32> = walk(&cdir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pid"))
        .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
        .collect();
    assert!(
        pids.len() >= 2,
        "expected a nameserver and a broker pid under {cdir_s}"
    );
    // A process that exited but was not reaped yet (a zombie, state Z) counts as stopped.
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    };
    assert!(pids.iter().all(|p| alive(*p)), "nodes not running after up");
    let out = run("cluster.sh", &["down", "--dir", &cdir_s]);
    assert!(out.status.success());
    for pid in pids {
        assert!(!alive(pid), "pid {pid} still running after down");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
