//! Broker-side filters as a user runs them: `sluice consume --tag` and `--sql` get exactly the
//! messages their expression takes, the group's offsets move past the others (no lag left),
//! and a bad expression is refused at subscribe time with its position.

use std::collections::HashMap;

use sluice_integration_tests::{Cluster, ClusterOptions};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The consumed messages' tags and regions, counted.
fn consume(cluster: &Cluster, group: &str, filter: &[&str]) -> HashMap<(String, String), usize> {
    let mut args = vec![
        "consume",
        "orders",
        "--group",
        group,
        "--from",
        "earliest",
        "--idle-timeout",
        "3",
        "--json",
    ];
    args.extend_from_slice(filter);
    let out = json(&cluster.cli(&args).unwrap());
    let messages = out
        .as_array()
        .cloned()
        .or_else(|| out["messages"].as_array().cloned())
        .unwrap_or_else(|| panic!("messages in {out}"));
    let mut seen = HashMap::new();
    for m in messages {
        let tag = m["tag"].as_str().unwrap_or_default().to_string();
        let region = m["properties"]["region"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *seen.entry((tag, region)).or_default() += 1;
    }
    seen
}

#[test]
fn tag_and_sql_subscriptions_get_what_they_select_and_leave_no_lag() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    cluster
        .cli(&["topic", "create", "orders", "--queues", "2"])
        .unwrap();
    for (n, tag, region, amount) in [
        ("30", "paid", "eu", "150"),
        ("40", "shipped", "us", "50"),
        ("20", "paid", "us", "500"),
        ("10", "cancelled", "eu", "90"),
    ] {
        let region = format!("region={region}");
        let amount = format!("amount={amount}");
        cluster
            .cli(&[
                "produce",
                "orders",
                "--count",
                n,
                "--tag",
                tag,
                "--property",
                &region,
                "--property",
                &amount,
            ])
            .unwrap();
    }
    let key = |t: &str, r: &str| (t.to_string(), r.to_string());

    let paid = consume(&cluster, "by-tag", &["--tag", "paid || cancelled"]);
    assert_eq!(
        paid,
        HashMap::from([
            (key("paid", "eu"), 30),
            (key("paid", "us"), 20),
            (key("cancelled", "eu"), 10)
        ])
    );
    assert_eq!(
        cluster.group_lag_total("by-tag").unwrap(),
        0,
        "offsets moved past the skipped"
    );

    let eu = consume(
        &cluster,
        "by-sql",
        &[
            "--sql",
            "region = 'eu' AND amount > 100 OR TAGS = 'shipped'",
        ],
    );
    assert_eq!(
        eu,
        HashMap::from([(key("paid", "eu"), 30), (key("shipped", "us"), 40)])
    );
    assert_eq!(cluster.group_lag_total("by-sql").unwrap(), 0);

    let none = consume(&cluster, "by-nothing", &["--tag", "refunded"]);
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(cluster.group_lag_total("by-nothing").unwrap(), 0);

    let bad = cluster
        .cli(&[
            "consume",
            "orders",
            "--group",
            "bad",
            "--sql",
            "amount > AND region = 'eu'",
        ])
        .unwrap_err()
        .to_string();
    assert!(
        bad.contains("column 10") && bad.contains("expected"),
        "the error names the position and what was expected: {bad}"
    );
}
