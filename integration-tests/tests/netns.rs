//! Multi-host deployment with network namespaces as hosts: scripts/deploy.sh (transport
//! `netns`: `ip netns exec` instead of ssh, cp instead of scp, a background start instead of
//! systemd) stands up a nameserver and a 3-replica group on distinct addresses in a private
//! 10.77.0.0/24 that exists only inside the namespaces this test creates. The chaos tool then
//! partitions the master for real (its namespace's link goes down): a new master must be
//! elected, every acknowledged message consumed, and the old master rejoin after the heal.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for `ip netns`); elsewhere the test says so and
//! returns as skipped. Every namespace (and with it every veth and the bridge) is deleted on
//! drop, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sluice_integration_tests::{bin_dir, repo_root, TEST_DISK_BUDGET};

/// The namespaces of one test run: `<prefix>-sw` (bridge), `-ns`, `-b1..3`, `-cl` (clients).
struct Namespaces {
    prefix: String,
    inventory: PathBuf,
}

impl Namespaces {
    fn names(&self) -> Vec<String> {
        ["sw", "ns", "b1", "b2", "b3", "cl"]
            .iter()
            .map(|s| format!("{}-{s}", self.prefix))
            .collect()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // deploy.sh kills what runs inside the namespaces and deletes them; then whatever is
        // left with this run's prefix goes too (e.g. when the inventory was never written).
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/deploy.sh"))
            .arg("--inventory")
            .arg(&self.inventory)
            .arg("netns-destroy")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for ns in self.names() {
            if Path::new("/run/netns").join(&ns).exists() {
                let pids = Command::new("ip")
                    .args(["netns", "pids", &ns])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: kill(2) on a process inside a namespace this test created.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
            }
        }
    }
}

/// Can this process create network namespaces? Tries one and deletes it.
fn netns_available(probe: &str) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["netns", "add", probe])
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let _ = Command::new("ip").args(["netns", "delete", probe]).status();
    Ok(())
}

fn deploy(inventory: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/deploy.sh"))
        .arg("--inventory")
        .arg(inventory)
        .args(args)
        .env("SLUICE_BIN_DIR", bin_dir())
        .env("SLUICE_STOP_TIMEOUT", "5")
        .env("SLUICE_READY_TIMEOUT", "60")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn deploy_ok(inventory: &Path, args: &[&str]) -> String {
    let out = deploy(inventory, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "deploy.sh {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn namespaces_as_hosts_survive_a_real_partition_of_the_master() {
    // Short and unique: namespace names are per machine, link names at most 15 bytes.
    let prefix = format!("sl{:05x}", std::process::id() & 0xfffff);
    let tmp = tempfile::tempdir().unwrap();
    let inventory = tmp.path().join("netns.inventory");
    if let Err(why) = netns_available(&format!("{prefix}-probe")) {
        println!("SKIPPED: cannot create network namespaces here ({why}); run as root");
        return;
    }
    let guard = Namespaces {
        prefix: prefix.clone(),
        inventory: inventory.clone(),
    };
    let p = &prefix;
    std::fs::write(
        &inventory,
        format!(
            "# test cluster: one namespace per host on a private bridge\n\
             transport netns\n\
             remote_dir {root}\n\
             netns_prefix {p}\n\
             netns_bridge {p}-sw\n\
             netns_client {p}-cl 10.77.0.100/24\n\
             cluster_name netns-it\n\
             heartbeat_interval_ms 1000\n\
             broker_expiry_ms 10000\n\
             disk_budget_bytes {TEST_DISK_BUDGET}\n\
             node ns-1       nameserver {p}-ns 10.77.0.10:9876\n\
             node broker-a-1 broker     {p}-b1 10.77.0.11:10911 group=broker-a replica=1\n\
             node broker-a-2 broker     {p}-b2 10.77.0.12:10911 group=broker-a replica=2\n\
             node broker-a-3 broker     {p}-b3 10.77.0.13:10911 group=broker-a replica=3\n",
            root = tmp.path().join("root").display(),
        ),
    )
    .unwrap();

    let out = deploy_ok(&inventory, &["netns-create"]);
    println!("{out}");
    // Each host has its own address, on its own link, inside its own namespace only.
    for (i, host) in ["b1", "b2", "b3"].iter().enumerate() {
        let addr = Command::new("ip")
            .args(["-n", &format!("{p}-{host}"), "-o", "addr", "show", "eth0"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&addr.stdout);
        assert!(text.contains(&format!("10.77.0.{}/24", 11 + i)), "{text}");
    }
    let root_addrs = Command::new("ip").args(["-o", "addr"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&root_addrs.stdout).contains("10.77.0."),
        "the test subnet leaked into the root namespace"
    );

    let started = Instant::now();
    let out = deploy_ok(&inventory, &["up"]);
    println!("{out}");
    assert!(out.contains("every group has a master"), "{out}");
    println!("cluster up in {:?}", started.elapsed());
    // The units were generated for every node (and verified by deploy.sh where possible).
    for n in ["ns-1", "broker-a-1", "broker-a-2", "broker-a-3"] {
        let unit = tmp
            .path()
            .join(format!(".deploy/netns/{n}/sluice-{n}.service"));
        let text = std::fs::read_to_string(&unit).unwrap();
        assert!(text.contains("ExecStart="), "{text}");
    }
    let nodes = deploy_ok(&inventory, &["nodes"]);
    let addrs: Vec<&str> = nodes
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').nth(4).unwrap())
        .collect();
    assert_eq!(
        addrs,
        [
            "10.77.0.10:9876",
            "10.77.0.11:10911",
            "10.77.0.12:10911",
            "10.77.0.13:10911"
        ]
    );

    // One partition cycle under load, run from the client namespace.
    let report = tmp.path().join("report.json");
    let deploy_sh = repo_root().join("scripts/deploy.sh");
    let chaos = Command::new("bash")
        .arg(&deploy_sh)
        .arg("--inventory")
        .arg(&inventory)
        .arg("client")
        .arg(bin_dir().join("sluice-chaos"))
        .args([
            "run",
            "--cycles",
            "1",
            "--faults",
            "partition",
            "--warmup-acks",
            "100",
            "--hold-acks",
            "100",
            "--failover-timeout",
            "30",
            "--heal-timeout",
            "60",
            "--report",
        ])
        .arg(&report)
        .arg("--")
        .arg("bash")
        .arg(&deploy_sh)
        .arg("--inventory")
        .arg(&inventory)
        .env("SLUICE_BIN_DIR", bin_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&chaos.stdout);
    println!("{text}\n{}", String::from_utf8_lossy(&chaos.stderr));
    assert!(
        chaos.status.success(),
        "chaos run failed ({})",
        chaos.status
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["ok"], true);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["reordered"], 0);
    assert_eq!(r["replicas_consistent"], true);
    assert!(r["acked"].as_u64().unwrap() >= 200, "{}", r["acked"]);
    let cycle = &r["cycles"][0];
    assert_eq!(cycle["fault"], "partition");
    assert_ne!(cycle["new_master"], cycle["old_master"]);
    assert!(cycle["failover_ms"].as_u64().is_some());
    assert_eq!(cycle["rejoined"], true);

    // Everything is running again, nothing is left partitioned.
    let nodes = deploy_ok(&inventory, &["nodes"]);
    assert!(
        nodes
            .lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.ends_with("\trunning")),
        "{nodes}"
    );
    deploy_ok(&inventory, &["down"]);
    let out = deploy_ok(&inventory, &["netns-destroy"]);
    println!("{out}");
    for ns in guard.names() {
        assert!(
            !Path::new("/run/netns").join(&ns).exists(),
            "namespace {ns} left behind"
        );
    }
    // Deadline for the whole scenario, as CI runs it.
    assert!(started.elapsed() < Duration::from_secs(180));
}

/// The ssh transport runs the same steps as the namespace one; without hosts to reach, a dry
/// run shows the exact ssh/scp/systemctl commands it would run, and the generated files.
#[test]
fn ssh_transport_dry_run_shows_the_same_steps_over_ssh() {
    let tmp = tempfile::tempdir().unwrap();
    let inventory = tmp.path().join("prod.inventory");
    std::fs::write(
        &inventory,
        "transport ssh\nssh_user deploy\nservice_user sluice\nremote_dir /opt/sluice\n\
         cluster_name prod\nflush sync\n\
         node ns-1       nameserver host1 10.0.0.1:9876\n\
         node broker-a-1 broker     host2 10.0.0.2:10911 group=broker-a replica=1\n\
         node broker-a-2 broker     host3 10.0.0.3:10911 group=broker-a replica=2\n\
         node broker-a-3 broker     host4 10.0.0.4:10911 group=broker-a replica=3\n",
    )
    .unwrap();
    let dry = |args: &[&str]| {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/deploy.sh"))
            .arg("--inventory")
            .arg(&inventory)
            .args(args)
            .env("SLUICE_BIN_DIR", bin_dir())
            .env("SLUICE_DEPLOY_DRY_RUN", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let out = dry(&["up"]);
    for (host, node) in [("host2", "broker-a-1"), ("host4", "broker-a-3")] {
        for needle in [
            format!("'deploy@{host}:/opt/sluice/bin/sluice-broker.tmp'"),
            format!("'deploy@{host}:/opt/sluice/nodes/{node}/config.toml.tmp'"),
            format!("'/etc/systemd/system/sluice-{node}.service'"),
            format!("'deploy@{host}' 'sudo systemctl enable --now sluice-{node}.service'"),
        ] {
            assert!(out.contains(&needle), "missing {needle} in:\n{out}");
        }
    }
    // Nameservers start before brokers.
    let ns = out.find("enable --now sluice-ns-1").unwrap();
    let b = out.find("enable --now sluice-broker-a-1").unwrap();
    assert!(ns < b);
    let stage = tmp.path().join(".deploy/prod");
    let config = std::fs::read_to_string(stage.join("broker-a-2/config.toml")).unwrap();
    for line in [
        "listen = \"10.0.0.3:10911\"",
        "nameservers = [\"10.0.0.1:9876\"]",
        "replica_id = 2",
        "flush = \"sync\"",
        "peers = { 1 = \"10.0.0.2:10911\", 2 = \"10.0.0.3:10911\", 3 = \"10.0.0.4:10911\" }",
    ] {
        assert!(config.contains(line), "missing {line} in:\n{config}");
    }
    let unit = std::fs::read_to_string(stage.join("broker-a-2/sluice-broker-a-2.service")).unwrap();
    assert!(unit.contains("\nUser=sluice\n"), "{unit}");
    assert!(
        unit.contains("ExecStart=/opt/sluice/bin/sluice-broker --config /opt/sluice/nodes/broker-a-2/config.toml"),
        "{unit}"
    );
    // Over ssh a partition goes through fault injection on the broker's own host.
    let out = dry(&["partition", "broker-a-2"]);
    let line = out
        .lines()
        .find(|l| l.contains("'deploy@host3'") && l.contains("sluice-chaos"))
        .unwrap_or_else(|| panic!("no fault injection over ssh in:\n{out}"));
    for word in [
        "fault",
        "10.0.0.3:10911",
        "isolate",
        "'\\''1'\\'' '\\''3'\\''",
    ] {
        assert!(line.contains(word), "{word} not in {line}");
    }

    // Bad inventories are refused with the line at fault.
    for (bad, why) in [
        ("node a broker h 10.0.0.1:1\n", "needs group"),
        ("node a nameserver h nope\n", "not HOST:PORT"),
        (
            "node a nameserver h 1.1.1.1:1\nnode a nameserver h 1.1.1.1:2\n",
            "listed twice",
        ),
        (
            "transport carrier-pigeon\nnode a nameserver h 1.1.1.1:1\n",
            "transport",
        ),
        (
            "node n nameserver h 1.1.1.1:1\nnode a broker h 1.1.1.1:2 group=g replica=1\n\
             node b broker h 1.1.1.1:3 group=g replica=1\n",
            "unique",
        ),
    ] {
        let f = tmp.path().join("bad.inventory");
        std::fs::write(&f, bad).unwrap();
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/deploy.sh"))
            .arg("--inventory")
            .arg(&f)
            .arg("nodes")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{bad:?}: {err}");
    }
}
