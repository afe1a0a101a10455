use sluice_proto::v1::{BrokerStatus, ReplicaProgress, Role};

use super::*;

/// The value of the sample `name{labels}` in `text` (labels as rendered, "" for none).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn names_follow_the_conventions_and_counters_only_go_up() {
    let m = Metrics::new();
    m.sent("orders", 3, 300);
    m.sent("orders", 2, 200);
    m.served("billing", "orders", 4, 400);
    m.served("billing", "orders", 0, 0);
    m.send_seconds.observe(0.002);
    let text = m.render();
    assert_eq!(
        sample(&text, "sluice_stored_messages_total", r#"topic="orders""#),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, "sluice_stored_bytes_total", r#"topic="orders""#),
        Some(500.0)
    );
    let billing = r#"group="billing",topic="orders""#;
    assert_eq!(
        sample(&text, "sluice_delivered_messages_total", billing),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, "sluice_delivered_bytes_total", billing),
        Some(400.0)
    );
    assert_eq!(sample(&text, "sluice_send_seconds_count", ""), Some(1.0));
    assert!(
        text.contains("# TYPE sluice_send_seconds histogram"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"));
    // Every metric is ours and every counter says so in its name.
    for l in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let parts: Vec<&str> = l.split_whitespace().collect();
        assert!(parts[2].starts_with("sluice_"), "{l}");
    }
    m.sent("orders", 1, 10);
    let again = m.render();
    assert_eq!(
        sample(&again, "sluice_stored_messages_total", r#"topic="orders""#),
        Some(6.0)
    );
}

#[test]
fn status_gauges_follow_each_scrape_and_forget_what_is_gone() {
    let m = Metrics::new();
    let status = BrokerStatus {
        role: Role::Master as i32,
        max_offset: 4096,
        confirmed_offset: 4000,
        dispatched_offset: 3000,
        disk_usage_ratio: 0.25,
        term: 7,
        commit_index: 90,
        applied_index: 88,
        replicas: vec![ReplicaProgress {
            replica_id: 2,
            lag: 5,
            ..Default::default()
        }],
        ..Default::default()
    };
    m.observe(&status, &[("g".into(), "t".into(), 1, 42)]);
    let text = m.render();
    assert_eq!(sample(&text, "sluice_master", ""), Some(1.0));
    assert_eq!(sample(&text, "sluice_dispatch_lag_bytes", ""), Some(1000.0));
    assert_eq!(sample(&text, "sluice_disk_used_ratio", ""), Some(0.25));
    assert_eq!(sample(&text, "sluice_raft_term", ""), Some(7.0));
    assert_eq!(
        sample(&text, "sluice_raft_replica_lag_entries", r#"replica="2""#),
        Some(5.0)
    );
    let q = r#"group="g",topic="t",queue="1""#;
    assert_eq!(sample(&text, "sluice_consumer_lag_messages", q), Some(42.0));
    // The group went away: its lag is no longer reported.
    m.observe(&BrokerStatus::default(), &[]);
    let text = m.render();
    assert_eq!(sample(&text, "sluice_consumer_lag_messages", q), None);
    assert_eq!(sample(&text, "sluice_master", ""), Some(0.0));
}

#[test]
fn send_backs_and_transactions_are_counted() {
    let m = Metrics::new();
    m.count_sent_back("g", false);
    m.count_sent_back("g", false);
    m.count_sent_back("g", true);
    m.observe_transactions(3, 1);
    let text = m.render();
    let retry = r#"group="g",outcome="retry""#;
    let dead = r#"group="g",outcome="dead_letter""#;
    assert_eq!(sample(&text, "sluice_sent_back_total", retry), Some(2.0));
    assert_eq!(sample(&text, "sluice_sent_back_total", dead), Some(1.0));
    assert_eq!(sample(&text, "sluice_transactions_open", ""), Some(3.0));
    assert_eq!(sample(&text, "sluice_transactions_parked", ""), Some(1.0));
}

#[tokio::test]
async fn each_new_leader_is_counted_once() {
    use crate::replication::MasterState;
    let state = |term, leader| MasterState {
        is_master: false,
        term,
        leader_id: leader,
    };
    let (tx, rx) = tokio::sync::watch::channel(state(1, Some(1)));
    let m = std::sync::Arc::new(Metrics::new());
    let task = tokio::spawn(count_leader_changes(rx, m.clone()));
    // Let it read the first state before anything changes.
    tokio::task::yield_now().await;
    // An election in progress (no leader), the old leader again, then a new one, twice seen.
    for s in [
        state(2, None),
        state(2, Some(2)),
        state(2, Some(2)),
        state(3, Some(1)),
    ] {
        tx.send_replace(s);
        tokio::task::yield_now().await;
    }
    drop(tx);
    task.await.unwrap();
    assert_eq!(m.leader_changes.get(), 2);
    // Only the leaderless stretch that ended with a new leader is an election.
    let text = m.render();
    assert_eq!(
        sample(&text, "sluice_raft_election_seconds_count", ""),
        Some(1.0)
    );

    // A restarted replica hearing the leader of the term it restarted with: no election.
    let (tx, rx) = tokio::sync::watch::channel(state(5, None));
    let m = std::sync::Arc::new(Metrics::new());
    let task = tokio::spawn(count_leader_changes(rx, m.clone()));
    tokio::task::yield_now().await;
    tx.send_replace(state(5, Some(1)));
    tokio::task::yield_now().await;
    drop(tx);
    task.await.unwrap();
    assert_eq!(m.leader_changes.get(), 1);
    let text = m.render();
    assert_eq!(
        sample(&text, "sluice_raft_election_seconds_count", ""),
        Some(0.0)
    );
}

#[test]
fn store_figures_become_counters_that_only_count_what_is_new() {
    let m = Metrics::new();
    let ms = std::time::Duration::from_millis;
    m.ops.observe_store(10, ms(50), ms(9), 3);
    m.ops.observe_store(14, ms(70), ms(4), 4);
    m.ops.filtered("eu", "orders", 100, 7);
    m.ops.timer_lateness_seconds.observe(0.02);
    m.ops.grpc_connections.inc();
    let text = m.render();
    assert_eq!(sample(&text, "sluice_flushes_total", ""), Some(14.0));
    let secs = sample(&text, "sluice_flush_seconds_total", "").unwrap();
    assert!((secs - 0.07).abs() < 1e-9, "{secs}");
    assert_eq!(sample(&text, "sluice_flush_max_seconds", ""), Some(0.004));
    assert_eq!(sample(&text, "sluice_commit_log_segments", ""), Some(4.0));
    let eu = r#"group="eu",topic="orders""#;
    assert_eq!(
        sample(&text, "sluice_filter_scanned_messages_total", eu),
        Some(100.0)
    );
    assert_eq!(
        sample(&text, "sluice_filter_matched_messages_total", eu),
        Some(7.0)
    );
    assert_eq!(
        sample(&text, "sluice_timer_lateness_seconds_count", ""),
        Some(1.0)
    );
    assert_eq!(sample(&text, "sluice_grpc_connections", ""), Some(1.0));
}
