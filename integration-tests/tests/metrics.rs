//! Prometheus metrics of a live broker: scraped over HTTP while the test produces and
//! consumes, the figures match what the test did.

use std::io::{Read, Write};
use std::time::Duration;

use sluice_client::{
    Admin, ClientConfig, ConsumerBuilder, Message, Producer, Selector, StartPosition,
};
use sluice_integration_tests::{wait_until, Cluster, ClusterOptions};

/// GET /metrics, the body.
fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("openmetrics-text"),
        "{head}"
    );
    body.to_string()
}

/// The value of `name{labels}` ("" for no labels).
fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_what_the_broker_did() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let cluster = Cluster::start(
        1,
        ClusterOptions {
            extra_broker_toml: format!("metrics_listen = \"{metrics}\"\n"),
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let config = ClientConfig::new([cluster.nameserver.addr.clone()])
        .request_timeout(Duration::from_secs(5));
    Admin::new(config.clone())
        .unwrap()
        .create_topic("metered", 2, None)
        .await
        .unwrap();
    let producer = Producer::builder(config.clone()).build().unwrap();
    let mut bytes = 0u64;
    for i in 0..50 {
        let body = format!("message number {i}");
        bytes += body.len() as u64;
        producer.send(Message::new("metered", body)).await.unwrap();
    }
    let text = tokio::task::block_in_place(|| scrape(&metrics));
    let topic = r#"topic="metered""#;
    assert_eq!(
        value(&text, "sluice_stored_messages_total", topic),
        Some(50.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "sluice_stored_bytes_total", topic),
        Some(bytes as f64)
    );
    assert!(value(&text, "sluice_send_seconds_count", "").unwrap_or(0.0) >= 50.0);
    assert_eq!(value(&text, "sluice_master", ""), Some(1.0));
    assert!(value(&text, "sluice_commit_log_max_offset_bytes", "").unwrap_or(0.0) > bytes as f64);

    // A group reads all 50 and commits: delivered counts them, its lag is 0.
    let mut consumer = ConsumerBuilder::new(config.clone(), "metering")
        .subscribe("metered")
        .start_position(StartPosition::Earliest)
        .start_pull()
        .await
        .unwrap();
    let mut got = 0;
    while got < 50 {
        got += consumer
            .poll(64, Duration::from_secs(5))
            .await
            .unwrap()
            .len();
    }
    consumer.commit().await.unwrap();
    let group = r#"group="metering",topic="metered""#;
    let lag_of = |text: &str| {
        (0..2)
            .map(|q| {
                let l = format!(r#"group="metering",topic="metered",queue="{q}""#);
                value(text, "sluice_consumer_lag_messages", &l).unwrap_or(-1.0)
            })
            .sum::<f64>()
    };
    let text = tokio::task::block_in_place(|| scrape(&metrics));
    assert!(value(&text, "sluice_delivered_messages_total", group).unwrap_or(0.0) >= 50.0);
    assert_eq!(lag_of(&text), 0.0, "{text}");

    // Ten more sent and not consumed: the counter moves on, the lag shows them.
    for i in 0..10 {
        producer
            .send(Message::new("metered", format!("later {i}")))
            .await
            .unwrap();
    }
    wait_until(Duration::from_secs(10), "the lag of ten", || async {
        lag_of(&tokio::task::block_in_place(|| scrape(&metrics))) == 10.0
    })
    .await
    .unwrap();
    let text = tokio::task::block_in_place(|| scrape(&metrics));
    assert_eq!(
        value(&text, "sluice_stored_messages_total", topic),
        Some(60.0)
    );
    consumer.shutdown().await;

    // The machinery: a delayed message's delivery is timed, the flusher's fsyncs are counted,
    // this test's gRPC connection is open, the commit log has a segment.
    producer
        .send(Message::new("metered", "later").with_delay(Duration::from_millis(100)))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "a timed delivery and a flush",
        || async {
            let text = tokio::task::block_in_place(|| scrape(&metrics));
            value(&text, "sluice_timer_lateness_seconds_count", "").unwrap_or(0.0) >= 1.0
                && value(&text, "sluice_flushes_total", "").unwrap_or(0.0) >= 1.0
        },
    )
    .await
    .unwrap();
    // A filter nothing matches: its pulls look at every message and deliver none.
    let mut filtering = ConsumerBuilder::new(config.clone(), "filtering")
        .subscribe_with("metered", Selector::tag("no-such-tag"))
        .start_position(StartPosition::Earliest)
        .start_pull()
        .await
        .unwrap();
    let filtered = r#"group="filtering",topic="metered""#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = filtering
            .poll(64, Duration::from_millis(200))
            .await
            .unwrap();
        assert!(got.is_empty());
        let text = tokio::task::block_in_place(|| scrape(&metrics));
        let scanned = value(&text, "sluice_filter_scanned_messages_total", filtered);
        if scanned.unwrap_or(0.0) >= 61.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "filter scan not counted: {scanned:?}"
        );
    }
    filtering.shutdown().await;
    let text = tokio::task::block_in_place(|| scrape(&metrics));
    assert_eq!(
        value(&text, "sluice_filter_matched_messages_total", filtered),
        Some(0.0)
    );
    assert!(
        value(&text, "sluice_grpc_connections", "").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        value(&text, "sluice_commit_log_segments", "").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        value(&text, "sluice_flush_seconds_total", "").unwrap_or(0.0) > 0.0,
        "{text}"
    );
    dashboard_names_exist(&text);
}

/// Every broker metric the Grafana dashboard queries is one the broker serves (nameserver
/// metrics are checked against the operations guide, which lists them).
fn dashboard_names_exist(scraped: &str) {
    let root = sluice_integration_tests::repo_root();
    let dash = std::fs::read_to_string(root.join("docs/grafana/sluice.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dash).unwrap();
    let guide = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let mut names: Vec<&str> = dash
        .match_indices("sluice_")
        .map(|(i, _)| {
            let rest = &dash[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() > 10, "{names:?}");
    for n in names {
        if n.starts_with("sluice_nameserver_") {
            assert!(guide.contains(n), "{n} is not in docs/operations.md");
            continue;
        }
        let family = n
            .strip_suffix("_bucket")
            .or_else(|| n.strip_suffix("_total"))
            .unwrap_or(n);
        assert!(
            scraped.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {n}, which the broker does not serve"
        );
    }
}
