//! `sluice bench produce|consume|e2e` against real binaries, small counts, JSON reports.

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sluice_integration_tests::{bin, Cluster, ClusterOptions};

/// Kills the child if the test panics while it runs.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `sluice --nameservers NS args...`, killing it after `timeout`.
fn sluice(cluster: &Cluster, args: &[&str], timeout: Duration) -> Output {
    let child = Command::new(bin("sluice"))
        .arg("--nameservers")
        .arg(cluster.nameservers())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(Some(child));
    let child = running.0.as_mut().unwrap();
    // Drain both pipes while waiting, so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sluice {args:?} still running after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    running.0 = None;
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn report(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let out = sluice(cluster, args, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sluice {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn bench_produce_consume_e2e_report_what_they_measured() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();

    // Produce: creates the topic, sends every message, one latency sample per send.
    let p = report(
        &cluster,
        &[
            "bench",
            "produce",
            "--topic",
            "bt",
            "--queues",
            "3",
            "--count",
            "500",
            "--size",
            "100",
            "--in-flight",
            "64",
            "--json",
        ],
    );
    assert_eq!(p["settings"]["workload"], "produce");
    assert_eq!(p["settings"]["queues"], 3);
    assert_eq!(p["settings"]["message_size"], 100);
    assert_eq!(p["broker"]["flush_mode"], "async");
    assert_eq!(p["broker"]["brokers"], 1);
    let sent = &p["produce"];
    assert_eq!(u(&sent["messages"]), 500, "{p}");
    assert_eq!(u(&sent["failed"]), 0, "{p}");
    assert_eq!(u(&sent["bytes"]), 500 * 100);
    assert!(f(&sent["msgs_per_sec"]) > 0.0);
    let lat = &sent["latency_us"];
    assert_eq!(u(&lat["samples"]), 500);
    assert!(u(&lat["p50"]) > 0 && u(&lat["p50"]) <= u(&lat["p99"]));
    assert!(u(&lat["p99"]) <= u(&lat["max"]));
    assert!(p["consume"].is_null());

    // One at a time (`send`, each waits for its ack), and without batching.
    let sync = report(
        &cluster,
        &[
            "bench",
            "produce",
            "--topic",
            "bt",
            "--count",
            "30",
            "--size",
            "100",
            "--in-flight",
            "1",
            "--json",
        ],
    );
    assert_eq!(u(&sync["produce"]["messages"]), 30);
    assert!(sync["produce"]["latency_us"]["kind"]
        .as_str()
        .unwrap()
        .contains("one at a time"));
    let unbatched = report(
        &cluster,
        &[
            "bench",
            "produce",
            "--topic",
            "bt",
            "--count",
            "70",
            "--size",
            "100",
            "--producers",
            "2",
            "--no-batching",
            "--json",
        ],
    );
    assert_eq!(u(&unbatched["produce"]["messages"]), 70);
    assert_eq!(unbatched["settings"]["batching"], false);

    // Consume the backlog from the start: 600 messages, each carrying its send time.
    let c = report(
        &cluster,
        &[
            "bench",
            "consume",
            "--topic",
            "bt",
            "--count",
            "600",
            "--consumers",
            "2",
            "--pull-batch",
            "64",
            "--json",
        ],
    );
    let got = &c["consume"];
    assert_eq!(u(&got["messages"]), 600, "{c}");
    assert_eq!(u(&got["bytes"]), 600 * 100);
    assert_eq!(u(&got["latency_us"]["samples"]), 600);
    assert!(c["produce"].is_null());
    assert_eq!(c["settings"]["consumers"], 2);

    // The same backlog read by push consumers, concurrent and orderly (a new group each).
    for mode in ["push", "orderly"] {
        let c = report(
            &cluster,
            &[
                "bench", "consume", "--topic", "bt", "--count", "600", "--mode", mode, "--json",
            ],
        );
        assert!(u(&c["consume"]["messages"]) >= 600, "{mode}: {c}");
        assert_eq!(c["settings"]["consume_mode"], mode);
    }

    // Explicit batches: 250 messages in batches of 32 (the last one short), one sample each.
    let b = report(
        &cluster,
        &[
            "bench",
            "produce",
            "--topic",
            "bt",
            "--count",
            "250",
            "--size",
            "100",
            "--in-flight",
            "4",
            "--send-batch",
            "32",
            "--json",
        ],
    );
    assert_eq!(u(&b["produce"]["messages"]), 250, "{b}");
    assert_eq!(u(&b["produce"]["failed"]), 0, "{b}");
    assert_eq!(u(&b["produce"]["latency_us"]["samples"]), 8, "{b}");
    assert_eq!(b["settings"]["send_batch"], 32);
    assert!(b["produce"]["latency_us"]["kind"]
        .as_str()
        .unwrap()
        .contains("per batch"));

    // End to end on a new topic: everything sent is received, latency from send to delivery.
    let e = report(
        &cluster,
        &[
            "bench", "e2e", "--topic", "bt-e2e", "--count", "300", "--size", "64", "--json",
        ],
    );
    assert_eq!(u(&e["produce"]["messages"]), 300, "{e}");
    assert_eq!(u(&e["consume"]["messages"]), 300, "{e}");
    assert_eq!(u(&e["consume"]["latency_us"]["samples"]), 300);
    assert!(e["consume"]["latency_us"]["kind"]
        .as_str()
        .unwrap()
        .starts_with("send to delivery"));

    // A rate limit is honoured: 200 messages at 400/s take about half a second.
    let r = report(
        &cluster,
        &[
            "bench", "produce", "--topic", "bt", "--count", "200", "--rate", "400", "--json",
        ],
    );
    let secs = f(&r["produce"]["elapsed_s"]);
    assert!(
        (0.4..5.0).contains(&secs),
        "200 messages at 400/s took {secs}s"
    );
}

#[test]
fn bench_errors_are_clear() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    // Nothing to consume from a topic that does not exist.
    let out = sluice(
        &cluster,
        &[
            "bench",
            "consume",
            "--topic",
            "no-such-topic",
            "--count",
            "1",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-topic") && err.contains("does not exist"),
        "{err}"
    );
    // Bad options are usage errors (exit code 2) that name the option.
    for (args, needle) in [
        (&["bench", "e2e", "--size", "8"][..], "--size"),
        (&["bench", "produce", "--in-flight", "0"], "--in-flight"),
        (
            &["bench", "consume", "--pull-batch", "5000"],
            "--pull-batch",
        ),
    ] {
        let out = sluice(&cluster, args, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn bench_timers_reports_delayed_produce_lateness_burst_and_memory() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let out = sluice(
        &cluster,
        &[
            "bench",
            "timers",
            "--count",
            "300",
            "--rounds",
            "1",
            "--round-delay-secs",
            "1",
            "--rate",
            "200",
            "--seconds",
            "1",
            "--burst",
            "300",
            "--pending",
            "100",
            "--json",
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["plain_msgs_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["delayed_ratio"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["lateness"]["samples"], 200, "{r}");
    assert!(r["lateness"]["p50"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["burst_delivered"], 300, "{r}");
    assert!(
        r["burst_last_after_ms"].as_i64().unwrap() >= 0,
        "never before the due second: {r}"
    );
    assert_eq!(r["pending"], 100, "{r}");
    assert!(r["rss_after_bytes"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn bench_modes_reports_plain_idempotent_and_transactional_produce_side_by_side() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let out = sluice(
        &cluster,
        &[
            "bench", "modes", "--count", "500", "--rounds", "2", "--json",
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["rounds"], 2, "{r}");
    for k in [
        "plain_msgs_per_sec",
        "idempotent_msgs_per_sec",
        "idempotent_ratios",
    ] {
        let v = r[k].as_array().unwrap();
        assert_eq!(v.len(), 2, "{r}");
        assert!(v.iter().all(|x| x.as_f64().unwrap() > 0.0), "{r}");
    }
}

#[test]
fn bench_modes_measures_transactions_and_a_check_back_storm() {
    let cluster = Cluster::start(
        1,
        ClusterOptions {
            extra_broker_toml: "transaction_check_after = \"1s\"\n".into(),
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let out = sluice(
        &cluster,
        &[
            "bench",
            "modes",
            "--count",
            "200",
            "--tx-count",
            "40",
            "--rounds",
            "1",
            "--transactions",
            "--senders",
            "4",
            "--storm",
            "50",
            "--storm-secs",
            "1",
            "--json",
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["plain_sync_msgs_per_sec", "tx1_ratios", "tx10_ratios"] {
        let v = r[k].as_array().unwrap();
        assert_eq!(v.len(), 1, "{r}");
        assert!(v[0].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(r["storm_transactions"], 50, "{r}");
    assert!(r["storm_ratio"].as_f64().unwrap() > 0.0, "{r}");
    // The storm's checks are answered: the abandoned transactions end rolled back.
    let rows = cluster.cli(&["tx", "list", "--all", "--json"]).unwrap();
    let rows: serde_json::Value = serde_json::from_str(&rows).unwrap();
    let rolled_back = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "rolled back")
        .count();
    assert!(rolled_back > 0, "{rows}");
}
