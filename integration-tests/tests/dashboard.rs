//! The web dashboard in a real headless browser (Chromium through ChromeDriver): a cluster with
//! traffic, a failing message in the dead letters and a lagging group; every page is opened
//! and what it shows is checked against the CLI's `--json`; a message is followed from search
//! to its trace, and a dead letter is redriven from its page. Screenshots of each page go to
//! `target/dashboard-screenshots/`.

use std::collections::BTreeSet;
use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::Value;
use sluice_client::trace::TRACE_TOPIC;
use sluice_client::StartPosition;
use sluice_client::{Admin, ClientConfig, Message, Producer, PushConsumer, ReceivedMessage};
use sluice_integration_tests::browser::Browser;
use sluice_integration_tests::cli_child::CliChild;
use sluice_integration_tests::{repo_root, wait_until, Cluster, ClusterOptions};

const POISON: &str = "order-13";

fn json(cluster: &Cluster, args: &[&str]) -> Value {
    let out = cluster.cli(args).unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// Waits for the page a click or a submit led to (an element only it has).
async fn arrive(c: &Client, css: &str) {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"));
}

async fn texts(c: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.find_all(Locator::Css(css)).await.unwrap() {
        out.push(e.text().await.unwrap());
    }
    out
}

async fn attrs(c: &Client, css: &str, attr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.find_all(Locator::Css(css)).await.unwrap() {
        out.push(e.attr(attr).await.unwrap().unwrap_or_default());
    }
    out
}

/// Traffic: 20 traced messages consumed by `billing` (the poison one dead-lettered), then 30
/// more nobody consumes. The poison message's id.
async fn traffic(cluster: &Cluster, admin: &Admin, config: &ClientConfig) -> String {
    admin.create_topic("orders", 4, None).await.unwrap();
    admin
        .update_group_config("billing", Some(1), Some(vec![100]))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the trace topic's route",
        || async { admin.topic_route(TRACE_TOPIC).await.is_ok() },
    )
    .await
    .unwrap();
    let consumer = PushConsumer::builder(config.clone(), "billing")
        .subscribe("orders")
        .start_position(StartPosition::Earliest)
        .heartbeat_interval(Duration::from_millis(200))
        .rebalance_interval(Duration::from_millis(300))
        .commit_interval(Duration::from_millis(200))
        .trace(true)
        .start_push(|m: ReceivedMessage| async move {
            if m.keys().iter().any(|k| k == POISON) {
                return Err(std::io::Error::other("no such customer"));
            }
            Ok(())
        })
        .await
        .unwrap();
    let producer = Producer::builder(config.clone())
        .trace(true)
        .build()
        .unwrap();
    let mut poison = String::new();
    for i in 0..20 {
        let key = format!("order-{i}");
        let r = producer
            .send(Message::new("orders", format!("order {i}")).with_key(key.clone()))
            .await
            .unwrap();
        if key == POISON {
            poison = r.message_id;
        }
    }
    wait_until(
        Duration::from_secs(30),
        "the poison message dead-lettered",
        || async {
            admin
                .dead_letters("billing", 10)
                .await
                .is_ok_and(|d| d.iter().any(|d| d.message_id == poison))
        },
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(30), "billing caught up", || async {
        cluster.group_lag_total("billing").is_ok_and(|l| l == 0)
    })
    .await
    .unwrap();
    consumer.shutdown().await;
    for i in 20..50 {
        producer
            .send(Message::new("orders", format!("order {i}")))
            .await
            .unwrap();
    }
    producer.shutdown().await;
    poison
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_what_the_cli_reports_in_a_real_browser() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let config = ClientConfig::new([cluster.nameservers()]).request_timeout(Duration::from_secs(5));
    let admin = Admin::new(config.clone()).unwrap();
    let poison = traffic(&cluster, &admin, &config).await;

    let mut dash = CliChild::spawn(
        &cluster.nameservers(),
        &[
            "dashboard",
            "--listen",
            "127.0.0.1:0",
            "--sample-interval",
            "300ms",
            "--refresh",
            "0",
        ],
    )
    .unwrap();
    let line = dash
        .read_until("dashboard at ", Duration::from_secs(20))
        .unwrap();
    let base = line.trim_start_matches("dashboard at ").trim().to_string();
    let browser = Browser::start().await.unwrap();
    let c = &browser.client;
    let shots = repo_root().join("target/dashboard-screenshots");

    // Cluster: every broker replica the CLI lists, with its role.
    c.goto(&base).await.unwrap();
    let status = json(&cluster, &["cluster", "status", "--json"]);
    let want: BTreeSet<String> = status["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            format!(
                "{}/{} {}",
                b["broker_name"].as_str().unwrap(),
                b["replica_id"],
                b["role"].as_str().unwrap()
            )
        })
        .collect();
    let ids = attrs(c, "#brokers tr[data-broker]", "data-broker").await;
    let roles = texts(c, "#brokers tr[data-broker] td.role").await;
    let shown: BTreeSet<String> = ids
        .iter()
        .zip(&roles)
        .map(|(i, r)| format!("{i} {r}"))
        .collect();
    assert_eq!(shown, want);
    browser.screenshot(&shots, "cluster").await.unwrap();

    // Topics: every topic, and the stored count of `orders` as `topic describe` has it.
    c.goto(&format!("{base}topics")).await.unwrap();
    let listed: BTreeSet<String> = attrs(c, "#topics tr[data-topic]", "data-topic")
        .await
        .into_iter()
        .collect();
    let topics: BTreeSet<String> = json(&cluster, &["topic", "list", "--json"])["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, topics);
    assert!(listed.contains(TRACE_TOPIC), "{listed:?}");
    let described = json(&cluster, &["topic", "describe", "orders", "--json"]);
    assert_eq!(described["messages"], 50);
    assert_eq!(
        texts(c, "#topics tr[data-topic='orders'] td.messages").await,
        ["50"]
    );
    browser.screenshot(&shots, "topics").await.unwrap();

    // One topic: its queues' offsets.
    c.find(Locator::Css("#topics tr[data-topic='orders'] a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    arrive(c, "#queues").await;
    let mut want = Vec::new();
    for q in described["queues"].as_array().unwrap() {
        want.push(format!(
            "{}:{} {} {}",
            q["broker_name"].as_str().unwrap(),
            q["queue_id"],
            q["min_offset"],
            q["max_offset"]
        ));
    }
    let rows = attrs(c, "#queues tr[data-queue]", "data-queue").await;
    let mins = texts(c, "#queues tr[data-queue] td.min").await;
    let maxs = texts(c, "#queues tr[data-queue] td.max").await;
    let shown: Vec<String> = (0..rows.len())
        .map(|i| format!("{} {} {}", rows[i], mins[i], maxs[i]))
        .collect();
    assert_eq!(shown, want);
    browser.screenshot(&shots, "topic").await.unwrap();

    // Groups, then billing: lag per queue as `group describe` has it, and a lag chart drawn
    // from the sampler's history (reloaded until it has points).
    c.goto(&format!("{base}groups")).await.unwrap();
    assert!(attrs(c, "#groups tr[data-group]", "data-group")
        .await
        .contains(&"billing".to_string()));
    browser.screenshot(&shots, "groups").await.unwrap();
    c.find(Locator::Css("#groups tr[data-group='billing'] a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    arrive(c, "#total-lag").await;
    wait_until(
        Duration::from_secs(20),
        "the lag chart to have points",
        || async {
            c.refresh().await.unwrap();
            let points = attrs(c, "figure.chart", "data-points").await;
            points
                .first()
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| p >= 3)
        },
    )
    .await
    .unwrap();
    let group = json(&cluster, &["group", "describe", "billing", "--json"]);
    let want: Vec<String> = group["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            format!(
                "{} {}:{} {}",
                q["topic"].as_str().unwrap(),
                q["broker_name"].as_str().unwrap(),
                q["queue_id"],
                q["lag"]
            )
        })
        .collect();
    let rows = attrs(c, "#queues tr[data-queue]", "data-queue").await;
    let lags = texts(c, "#queues tr[data-queue] td.lag").await;
    let shown: Vec<String> = rows
        .iter()
        .zip(&lags)
        .map(|(r, l)| format!("{r} {l}"))
        .collect();
    assert_eq!(shown, want);
    assert_eq!(group["total_lag"], 30);
    assert_eq!(texts(c, "#total-lag").await, ["30"]);
    browser.screenshot(&shots, "group").await.unwrap();

    // Search by key, then follow the message to its trace.
    c.goto(&format!("{base}messages")).await.unwrap();
    let form = c.form(Locator::Css("form#search")).await.unwrap();
    form.set_by_name("topic", "orders").await.unwrap();
    form.set_by_name("key", POISON).await.unwrap();
    form.submit().await.unwrap();
    arrive(c, "#results").await;
    assert_eq!(texts(c, "#results a").await, vec![poison.clone()]);
    browser.screenshot(&shots, "search").await.unwrap();
    c.find(Locator::Css("#results a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    arrive(c, "#events").await;
    let trace = json(&cluster, &["message", "trace", &poison, "--json"]);
    let kinds: Vec<String> = trace["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("sent"), "{trace:#}");
    assert!(kinds.iter().any(|k| k == "consumed"), "{trace:#}");
    assert_eq!(attrs(c, "#events tr[data-kind]", "data-kind").await, kinds);
    assert_eq!(
        texts(c, "#trace-id").await,
        [trace["trace_id"].as_str().unwrap().to_string()]
    );
    browser.screenshot(&shots, "message").await.unwrap();

    // Dead letters: the poison message, redriven from the page.
    c.goto(&format!("{base}dlq?group=billing")).await.unwrap();
    assert_eq!(
        attrs(c, "#dead-letters tr[data-id]", "data-id").await,
        vec![poison.clone()]
    );
    browser.screenshot(&shots, "dead-letters").await.unwrap();
    c.find(Locator::Css("#dead-letters button.redrive"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    arrive(c, "#redriven").await;
    assert_eq!(
        texts(c, "#redriven").await,
        ["1 message(s) sent back to their topics."]
    );
    let dlq = json(&cluster, &["dlq", "list", "--group", "billing", "--json"]);
    assert_eq!(dlq[0]["message_id"], poison.as_str());
    assert_eq!(dlq[0]["redriven"], true, "{dlq:#}");

    // Transactions: none open, as `tx list` says.
    c.goto(&format!("{base}transactions")).await.unwrap();
    assert_eq!(
        json(&cluster, &["tx", "list", "--json"]),
        Value::Array(Vec::new())
    );
    let body = c
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("No open or parked transaction."), "{body}");
    browser.screenshot(&shots, "transactions").await.unwrap();

    browser.client.clone().close().await.unwrap();
    dash.kill9();
}
