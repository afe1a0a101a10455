//! Transactional messages with real brokers: a commit makes every message of a transaction
//! visible together (any topics and queues of one broker group), a rollback none; a
//! transaction its producer abandoned is resolved by another producer's checker; one whose
//! checker never answers is parked, listed and resolved by hand; a producer process killed
//! (kill -9) between its half messages and the commit has its transactions resolved by the
//! checks with another producer of its group; a transaction survives a
//! kill -9 of its group's master (the commit retried on the new master lands once, and checks
//! resume there).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sluice_client::{
    Admin, CheckedTransaction, ClientConfig, Message, Producer, Resolution, TransactionChecker,
};
use sluice_integration_tests::cli_child::CliChild;
use sluice_integration_tests::replica::{read_all, ReplicaCluster, ReplicaOptions};
use sluice_integration_tests::{create_topic_request, wait_until, Cluster, ClusterOptions};
use sluice_proto::ErrorCode;

const FAST_CHECKS: &str = "transaction_check_after = \"1s\"\n\
     transaction_check_max_interval = \"1s\"\n\
     transaction_max_checks = 3\n";

fn config(ns: &str) -> ClientConfig {
    ClientConfig::new([ns.to_string()])
        .request_timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_millis(500))
}

fn producer(ns: &str, checker: Option<Arc<dyn TransactionChecker>>) -> Producer {
    let mut b = Producer::builder(config(ns))
        .producer_group("orders-service")
        .retries(8);
    if let Some(c) = checker {
        b = b.transaction_checker(c);
    }
    b.build().unwrap()
}

/// Message ids visible in `topic` queues `0..queues` of the broker at `addr`.
async fn visible(addr: &str, topic: &str, queues: u32) -> Vec<String> {
    let mut ids = Vec::new();
    for q in 0..queues {
        ids.extend(
            read_all(addr, topic, q)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.message_id),
        );
    }
    ids.sort();
    ids
}

/// Waits until the nameserver routes every one of `topics` (a new topic reaches it with the
/// broker's next registration).
async fn routed(ns: &str, topics: &[&str]) {
    let admin = Admin::new(config(ns)).unwrap();
    for t in topics {
        let (admin, t) = (admin.clone(), t.to_string());
        wait_until(Duration::from_secs(20), "the topic's route", || {
            let (admin, t) = (admin.clone(), t.clone());
            async move { admin.topic_route(&t).await.is_ok() }
        })
        .await
        .unwrap();
    }
}

/// One broker with fast checks and a routed topic `orders` of 2 queues: the cluster, the
/// broker's address and the nameservers.
async fn checked_broker() -> (Cluster, String, String) {
    let cluster = Cluster::start(
        1,
        ClusterOptions {
            extra_broker_toml: FAST_CHECKS.into(),
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let mut c = cluster.broker_client(0).await.unwrap();
    c.create_topic(create_topic_request("orders", 2))
        .await
        .unwrap();
    let broker = cluster.brokers[0].addr.clone();
    let ns = cluster.nameservers();
    routed(&ns, &["orders"]).await;
    (cluster, broker, ns)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_shows_every_message_together_and_a_rollback_none() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let mut c = cluster.broker_client(0).await.unwrap();
    c.create_topic(create_topic_request("orders", 2))
        .await
        .unwrap();
    c.create_topic(create_topic_request("audit", 1))
        .await
        .unwrap();
    let broker = cluster.brokers[0].addr.clone();
    let ns = cluster.nameservers();
    routed(&ns, &["orders", "audit"]).await;
    let p = producer(&ns, None);

    let mut tx = p.begin_transaction().unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = tx
            .send_with_key(
                Message::new("orders", format!("order-{i}")),
                &format!("k{i}"),
            )
            .await
            .unwrap();
        ids.push(r.message_id);
    }
    ids.push(
        tx.send(Message::new("audit", "created 3"))
            .await
            .unwrap()
            .message_id,
    );
    let id = tx.id().to_string();
    // Nothing is visible before the commit; the transaction is listed open.
    assert!(visible(&broker, "orders", 2).await.is_empty());
    assert!(visible(&broker, "audit", 1).await.is_empty());
    let list: serde_json::Value =
        serde_json::from_str(&cluster.cli(&["tx", "list", "--json"]).unwrap()).unwrap();
    assert_eq!(list[0]["transaction_id"], id.as_str());
    assert_eq!(list[0]["state"], "open");
    assert_eq!(list[0]["messages"], 4);
    assert_eq!(list[0]["topics"], serde_json::json!(["audit", "orders"]));

    let receipts = tx.commit().await.unwrap();
    assert_eq!(
        sorted(receipts.iter().map(|r| r.message_id.clone()).collect()),
        sorted(ids.clone())
    );
    wait_until(Duration::from_secs(10), "the commit visible", || {
        let broker = broker.clone();
        async move { visible(&broker, "orders", 2).await.len() == 3 }
    })
    .await
    .unwrap();
    let mut seen = visible(&broker, "orders", 2).await;
    seen.extend(visible(&broker, "audit", 1).await);
    assert_eq!(sorted(seen), sorted(ids));
    // Ending it the same way again is answered as before; the other way is refused.
    let admin = Admin::new(config(&ns)).unwrap();
    admin.end_transaction(&id, true).await.unwrap();
    let err = admin.end_transaction(&id, false).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TransactionResolved), "{err}");
    // A send to a committed transaction is refused too (a new send needs a new transaction).

    let mut rolled = p.begin_transaction().unwrap();
    let never = rolled.send(Message::new("orders", "never")).await.unwrap();
    let rolled_id = rolled.id().to_string();
    rolled.rollback().await.unwrap();
    // Its half message cannot be sent back into a group's retry topic, where it would be
    // delivered.
    let back = sluice_proto::v1::SendBackRequest {
        group: "g".into(),
        commit_log_offset: never.commit_log_offset,
        message_id: never.message_id.clone(),
        ..Default::default()
    };
    let status = c.send_back(back).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("record of the broker's"),
        "{status:?}"
    );
    let all: serde_json::Value =
        serde_json::from_str(&cluster.cli(&["tx", "list", "--all", "--json"]).unwrap()).unwrap();
    let state_of = |tx: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|r| r["transaction_id"] == tx)
            .map(|r| r["state"].as_str().unwrap().to_string())
    };
    assert_eq!(state_of(&rolled_id).as_deref(), Some("rolled back"));
    assert_eq!(state_of(&id).as_deref(), Some("committed"));
    let open: serde_json::Value =
        serde_json::from_str(&cluster.cli(&["tx", "list", "--json"]).unwrap()).unwrap();
    assert_eq!(open, serde_json::json!([]));
    assert_eq!(visible(&broker, "orders", 2).await.len(), 3);
    p.shutdown().await;
}

/// Commits the transactions whose first message says "commit", rolls back the others.
struct ByBody;

impl TransactionChecker for ByBody {
    fn check(&self, tx: &CheckedTransaction) -> Resolution {
        match tx.messages.first().map(|m| m.body.starts_with(b"commit")) {
            Some(true) => Resolution::Commit,
            Some(false) => Resolution::Rollback,
            None => Resolution::Unknown,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_transactions_are_resolved_by_the_checker_or_parked() {
    let (cluster, broker, ns) = checked_broker().await;

    // A producer sends three transactions' half messages and dies without ending them.
    let dying = producer(&ns, None);
    let mut open = Vec::new();
    for body in ["commit-a", "rollback-b", "unknown-c"] {
        let mut tx = dying.begin_transaction().unwrap();
        let id = tx
            .send(Message::new("orders", body))
            .await
            .unwrap()
            .message_id;
        open.push((tx.id().to_string(), id));
        drop(tx);
    }
    drop(dying);
    // Another producer of the group answers the checks: "commit" commits, "rollback" rolls
    // back, and "unknown-c" has no answer ever.
    let checker: Arc<dyn TransactionChecker> =
        Arc::new(
            |tx: &CheckedTransaction| match tx.messages.first().map(|m| m.body.to_vec()) {
                Some(b) if b.starts_with(b"unknown") => Resolution::Unknown,
                _ => ByBody.check(tx),
            },
        );
    let live = producer(&ns, Some(checker));
    let admin = Admin::new(config(&ns)).unwrap();
    wait_until(
        Duration::from_secs(30),
        "the checks resolved or parked all three",
        || {
            let admin = admin.clone();
            async move {
                let rows = admin.transactions().await.unwrap_or_default();
                rows.len() == 3 && rows.iter().all(|r| r.state != "open")
            }
        },
    )
    .await
    .unwrap();
    let rows = admin.transactions().await.unwrap();
    let state = |tx: &str| {
        rows.iter()
            .find(|r| r.transaction_id == tx)
            .unwrap()
            .clone()
    };
    assert_eq!(state(&open[0].0).state, "committed");
    assert_eq!(state(&open[1].0).state, "rolled back");
    let parked = state(&open[2].0);
    assert_eq!((parked.state.as_str(), parked.checks), ("parked", 3));
    // Applied (the state says so) comes before dispatched (the queue shows it).
    wait_until(
        Duration::from_secs(10),
        "the checked commit visible",
        || {
            let broker = broker.clone();
            async move { !visible(&broker, "orders", 2).await.is_empty() }
        },
    )
    .await
    .unwrap();
    assert_eq!(visible(&broker, "orders", 2).await, vec![open[0].1.clone()]);
    // An operator resolves the parked one.
    let out = cluster.cli(&["tx", "commit", &open[2].0]).unwrap();
    assert!(out.contains("committed"), "{out}");
    wait_until(Duration::from_secs(10), "the hand commit visible", || {
        let broker = broker.clone();
        async move { visible(&broker, "orders", 2).await.len() >= 2 }
    })
    .await
    .unwrap();
    // Exactly the two commits: the rolled-back one never shows, whenever it was dispatched.
    assert_eq!(
        visible(&broker, "orders", 2).await,
        sorted(vec![open[0].1.clone(), open[2].1.clone()])
    );
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_survives_a_kill_9_of_the_master() {
    let mut cluster = ReplicaCluster::start(ReplicaOptions {
        extra_broker_toml: FAST_CHECKS.into(),
        ..ReplicaOptions::default()
    })
    .unwrap();
    let bound = Duration::from_secs(20);
    let master = cluster
        .create_topic_on_master("orders", 2, bound)
        .await
        .unwrap();
    let ns = cluster.nameserver.addr.clone();
    let p = producer(&ns, None);
    let mut tx = p.begin_transaction().unwrap();
    let mut ids = HashSet::new();
    for i in 0..4 {
        ids.insert(
            tx.send_with_key(Message::new("orders", format!("m{i}")), &format!("k{i}"))
                .await
                .unwrap()
                .message_id,
        );
    }
    // And one its producer abandons: the new master's checks resolve it.
    let mut abandoned = p.begin_transaction().unwrap();
    let abandoned_id = abandoned
        .send(Message::new("orders", "commit-abandoned"))
        .await
        .unwrap()
        .message_id;
    drop(abandoned);
    let others: Vec<u64> = cluster
        .peers
        .keys()
        .copied()
        .filter(|&i| i != master)
        .collect();
    cluster
        .await_caught_up(master, &others, bound)
        .await
        .unwrap();
    cluster.node(master).kill9();
    let new_master = cluster
        .await_master(bound, Some(master), Some("orders"))
        .await
        .unwrap();
    // The commit goes to the new master (the client follows the route), once.
    let receipts = tx.commit().await.unwrap();
    assert_eq!(receipts.len(), 4);
    let live = producer(&ns, Some(Arc::new(ByBody)));
    let addr = cluster.address(new_master).to_string();
    wait_until(
        Duration::from_secs(30),
        "the commit and the checked one visible",
        || {
            let addr = addr.clone();
            async move { visible(&addr, "orders", 2).await.len() == 5 }
        },
    )
    .await
    .unwrap();
    let mut want: Vec<String> = ids.into_iter().collect();
    want.push(abandoned_id);
    assert_eq!(visible(&addr, "orders", 2).await, sorted(want.clone()));
    // The old master comes back as a follower with the same queues.
    cluster.node(master).restart().unwrap();
    cluster
        .await_caught_up(new_master, &[master], bound)
        .await
        .unwrap();
    // Applied is not yet dispatched: its queues show the entries once its dispatcher has
    // built them.
    let (old, want) = (cluster.address(master).to_string(), sorted(want));
    let seen = wait_until(bound, "the old master's queues caught up", || {
        let (old, want) = (old.clone(), want.clone());
        async move { visible(&old, "orders", 2).await == want }
    })
    .await;
    assert!(
        seen.is_ok(),
        "{:?} against {want:?}",
        visible(&old, "orders", 2).await
    );
    live.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_process_killed_before_its_commit_is_resolved_by_the_checks() {
    // The cluster lives until the test ends (dropping it kills its processes).
    let (_cluster, broker, ns) = checked_broker().await;
    let admin = Admin::new(config(&ns)).unwrap();

    // Two producer processes send half messages and hold their transactions open (between
    // the half messages and the commit, where an order service writes its database row).
    let mut children = Vec::new();
    let mut txs = Vec::new();
    let mut halves = Vec::new();
    for bodies in [["commit-1", "commit-2"], ["rollback-1", "rollback-2"]] {
        let mut args = vec!["tx", "send", "orders"];
        args.extend(bodies);
        args.extend(["--group", "orders-service", "--then", "hold"]);
        let mut child = CliChild::spawn(&ns, &args).unwrap();
        let line = child
            .read_until("transaction ", Duration::from_secs(30))
            .unwrap();
        txs.push(line.trim_start_matches("transaction ").trim().to_string());
        child
            .read_until("holding", Duration::from_secs(30))
            .unwrap();
        let ids: Vec<String> = child
            .seen
            .iter()
            .filter(|l| l.ends_with("(half)"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        assert_eq!(ids.len(), 2, "{:?}", child.seen);
        halves.push(ids);
        children.push(child);
    }
    let rows = admin.transactions().await.unwrap();
    for tx in &txs {
        let row = rows.iter().find(|r| &r.transaction_id == tx).unwrap();
        assert_eq!((row.state.as_str(), row.messages), ("open", 2), "{row:?}");
    }
    assert!(visible(&broker, "orders", 2).await.is_empty());

    // kill -9: no rollback, no goodbye.
    for child in &mut children {
        child.kill9();
    }
    // Another instance of the service answers the checks from its own records.
    let live = producer(&ns, Some(Arc::new(ByBody)));
    wait_until(
        Duration::from_secs(30),
        "both transactions resolved by the checks",
        || {
            let (admin, txs) = (admin.clone(), txs.clone());
            async move {
                let rows = admin.transactions().await.unwrap_or_default();
                txs.iter().all(|tx| {
                    rows.iter()
                        .any(|r| &r.transaction_id == tx && r.state != "open")
                })
            }
        },
    )
    .await
    .unwrap();
    let rows = admin.transactions().await.unwrap();
    let state = |tx: &String| {
        rows.iter()
            .find(|r| &r.transaction_id == tx)
            .map(|r| r.state.clone())
    };
    assert_eq!(state(&txs[0]).as_deref(), Some("committed"));
    assert_eq!(state(&txs[1]).as_deref(), Some("rolled back"));
    // The state says committed once the commit is applied; its copies reach the consume
    // queues when the dispatcher gets to them.
    wait_until(
        Duration::from_secs(10),
        "the commit's messages visible",
        || {
            let broker = broker.clone();
            async move { visible(&broker, "orders", 2).await.len() >= 2 }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        visible(&broker, "orders", 2).await,
        sorted(halves[0].clone())
    );
    live.shutdown().await;
}
