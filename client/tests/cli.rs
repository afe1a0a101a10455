//! The `sluice` binary against fake servers: exit codes, JSON documents, produce/consume.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{start_broker, FakeNameServer};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn sluice(ns: Option<&str>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args)
        .env_remove("SLUICE_NAMESERVERS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(ns) = ns {
        cmd.env("SLUICE_NAMESERVERS", ns);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("sluice did not exit in time")
        .unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json(out: &Output) -> serde_json::Value {
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_with_2_and_failures_with_1() {
    let out = sluice(None, &["topic", "list"], None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("SLUICE_NAMESERVERS"), "{}", out.stderr);
    let out = sluice(Some("a:1"), &["topic", "create", "t"], None).await;
    assert_eq!(out.code, 2);
    let out = sluice(Some("not an address"), &["topic", "list"], None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);

    let ns = FakeNameServer::start().await;
    let _a = start_broker("broker-a", &[&ns]).await;
    let out = sluice(Some(&ns.addr), &["topic", "route", "missing"], None).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("TOPIC_NOT_FOUND"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_commands_print_tables_and_json() {
    let ns = FakeNameServer::start().await;
    let _a = start_broker("broker-a", &[&ns]).await;
    let _b = start_broker("broker-b", &[&ns]).await;
    let doc = json(
        &sluice(
            Some(&ns.addr),
            &["topic", "create", "orders", "--queues", "3", "--json"],
            None,
        )
        .await,
    );
    assert_eq!(doc["topic"], "orders");
    assert_eq!(doc["brokers"].as_array().unwrap().len(), 2);
    let doc = json(&sluice(Some(&ns.addr), &["topic", "list", "--json"], None).await);
    assert_eq!(doc["topics"], serde_json::json!(["orders"]));
    let doc = json(
        &sluice(
            Some(&ns.addr),
            &["topic", "route", "orders", "--json"],
            None,
        )
        .await,
    );
    assert_eq!(doc["brokers"][1]["broker_name"], "broker-b");
    assert_eq!(doc["brokers"][1]["write_queues"], 3);
    let out = sluice(Some(&ns.addr), &["cluster", "status"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines[0].starts_with("CLUSTER  BROKER    REPLICA  ROLE    ADDRESS"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("c1       broker-a  1        MASTER"),
        "{}",
        lines[1]
    );
    // The global flag also works after the subcommand.
    let out = sluice(None, &["topic", "list", "--nameservers", &ns.addr], None).await;
    assert_eq!(out.stdout, "TOPIC\norders\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_then_consume_then_lag() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 2);
    let out = sluice(
        Some(&ns.addr),
        &["produce", "t", "--key", "k"],
        Some("one\ntwo\n\nthree\n"),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let acks: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(acks.len(), 3, "blank lines are skipped: {}", out.stdout);
    assert!(
        acks.iter()
            .all(|l| l.contains(" queue=broker-a:") && l.contains(" offset=")),
        "{acks:?}"
    );
    let doc = json(
        &sluice(
            Some(&ns.addr),
            &["produce", "t", "--count", "5", "--size", "20", "--json"],
            None,
        )
        .await,
    );
    assert_eq!(doc["sent"], 5);
    assert_eq!(doc["receipts"][0]["message_id"].as_str().unwrap().len(), 32);

    let doc = json(
        &sluice(
            Some(&ns.addr),
            &[
                "consume", "t", "--group", "g", "--from", "earliest", "--max", "8", "--json",
            ],
            None,
        )
        .await,
    );
    assert_eq!(doc["count"], 8);
    let mut bodies: Vec<String> = doc["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect();
    bodies.sort();
    assert_eq!(
        &bodies[..3],
        [
            "message-0 xxxxxxxxxx",
            "message-1 xxxxxxxxxx",
            "message-2 xxxxxxxxxx"
        ]
    );
    assert!(bodies.contains(&"two".to_string()));
    // Offsets were committed before exit: the group has no lag, and a second run idles out.
    let doc = json(&sluice(Some(&ns.addr), &["group", "lag", "g", "--json"], None).await);
    assert_eq!(doc["total_lag"], 0, "{doc}");
    let out = sluice(
        Some(&ns.addr),
        &["consume", "t", "--group", "g", "--idle-timeout", "0.5"],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "");

    let by_key = json(
        &sluice(
            Some(&ns.addr),
            &["message", "find", "--topic", "t", "--key", "k", "--json"],
            None,
        )
        .await,
    );
    assert_eq!(by_key["count"], 3);
    let id = by_key["messages"][0]["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let one = json(&sluice(Some(&ns.addr), &["message", "get", &id, "--json"], None).await);
    assert_eq!(one["message_id"], id.as_str());
    let range = json(
        &sluice(
            Some(&ns.addr),
            &[
                "message",
                "find",
                "--topic",
                "t",
                "--from",
                "1970-01-01T00:00:00Z",
                "--to",
                "4102444800000",
                "--json",
            ],
            None,
        )
        .await,
    );
    assert_eq!(range["count"], 8);
}
