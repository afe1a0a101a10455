//! Transactions on a standalone store, at the messaging layer: half messages join their
//! transaction from their own write, a commit makes them visible in their real queues in one
//! write (and the retention floor follows the oldest unresolved half message), ends are
//! idempotent, limits refuse with LIMIT_EXCEEDED, and a restart that lost the metadata
//! store's latest writes finds both the transaction and its resolution in the log.

#[path = "store_util.rs"]
mod util;

use std::sync::Arc;

use sluice_broker::messaging::standalone;
use sluice_broker::messaging::txn::{Transactions, TxSend, TxSettings};
use sluice_broker::messaging::WritePath;
use sluice_broker::meta::{MemMeta, MetaStore};
use sluice_broker::state::transactions::{self as table, COMMITTED, ROLLED_BACK};
use sluice_broker::state::{producers, StateMachine};
use sluice_broker::store::{AppendBatch, MessageStore};
use sluice_proto::ErrorCode;
use tokio::sync::{watch, Notify};
use util::*;

fn state() -> Arc<StateMachine> {
    let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
    let s = Arc::new(StateMachine::open(meta, Arc::new(Notify::new())).unwrap());
    s.apply(None, &[producers::rescan_point_op(0)], true)
        .unwrap();
    s
}

fn tx(id: &str) -> TxSend {
    TxSend {
        id: id.into(),
        group: "orders-service".into(),
    }
}

async fn half(write: &WritePath, t: &TxSend, topic: &str, queue: u32, ids: &[&str]) -> u64 {
    let msgs = ids.iter().map(|i| msg(i, i.as_bytes())).collect();
    let batch = Transactions::half_batch(topic, queue, t, msgs);
    let entries = write.append_announced(&batch, 5).await.unwrap();
    entries[0].commit_log_offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_writes_every_half_message_to_its_queue_in_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let st = state();
    let write = WritePath::standalone(store.clone(), st.clone());
    let txs = Transactions::new(write.clone(), store.clone(), TxSettings::default());
    let (stop_tx, stop) = watch::channel(false);
    let floor_task = tokio::spawn(txs.clone().run_floor(stop));

    // Something before it, so the floor at the first half message is not the log's start.
    let before = AppendBatch {
        topic: "orders".into(),
        queue_id: 3,
        messages: vec![msg("plain", b"plain")],
    };
    write.append_announced(&before, 4).await.unwrap();
    let a = tx("tx-a");
    let first = half(&write, &a, "orders", 0, &["a1", "a2"]).await;
    assert!(first > 0);
    half(&write, &a, "audit", 1, &["a3"]).await;
    let r = table::get(st.meta().as_ref(), &st.tx_ended, "tx-a")
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.halves.len(), r.producer_group.as_str()),
        (2, "orders-service")
    );
    assert_eq!(st.tx_open.get("orders-service"), 1);
    wait_for("the floor at the first half message", || {
        store.transaction_floor() == first
    })
    .await;
    assert_eq!(store.queue_offsets("orders", 0), (0, 0));

    let ended = txs.end("tx-a", COMMITTED, 6).await.unwrap();
    let ids: Vec<&str> = ended.committed.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a1", "a2", "a3"]);
    wait_visible(&store, "orders", 0, 2).await;
    wait_visible(&store, "audit", 1, 1).await;
    let copies = read_all(&store, "orders", 0);
    assert_eq!(copies[0].message_id, "a1");
    assert!(sluice_proto::props::get(&copies[0].properties, "__TX_ID") == Some("tx-a"));
    assert!(sluice_proto::props::get(&copies[0].properties, "__REAL_TOPIC").is_none());
    // Resolved: the floor holds nothing but writes not applied yet (none now).
    wait_for("the floor at the write position once resolved", || {
        store.transaction_floor() == store.write_position()
    })
    .await;
    // Again the same way: the same answer, nothing written; the other way: refused.
    assert_eq!(
        txs.end("tx-a", COMMITTED, 7).await.unwrap().resolution,
        COMMITTED
    );
    let other = txs.end("tx-a", ROLLED_BACK, 7).await.unwrap_err();
    assert_eq!(other.code, ErrorCode::TransactionResolved);
    let unknown = txs.end("tx-none", COMMITTED, 7).await.unwrap_err();
    assert_eq!(unknown.code, ErrorCode::TransactionNotFound);
    assert_eq!(store.queue_offsets("orders", 0), (0, 2));
    let refused = txs.check_send(&a, 1, 10, 8).unwrap_err();
    assert_eq!(refused.code, ErrorCode::TransactionResolved);

    // A rollback: nothing becomes visible.
    let b = tx("tx-b");
    half(&write, &b, "orders", 0, &["b1"]).await;
    txs.end("tx-b", ROLLED_BACK, 9).await.unwrap();
    // (A commit after it shows what the queue holds once both are done.)
    let c = tx("tx-c");
    half(&write, &c, "orders", 0, &["c1"]).await;
    txs.end("tx-c", COMMITTED, 9).await.unwrap();
    wait_visible(&store, "orders", 0, 3).await;
    let ids: Vec<String> = read_all(&store, "orders", 0)
        .into_iter()
        .map(|r| r.message_id)
        .collect();
    assert_eq!(ids, ["a1", "a2", "c1"]);

    // A restart that lost every metadata write since the start: the log has it all.
    let fresh = state();
    standalone::recover(&store, &fresh).unwrap();
    let ra = table::get(fresh.meta().as_ref(), &fresh.tx_ended, "tx-a")
        .unwrap()
        .unwrap();
    let rb = table::get(fresh.meta().as_ref(), &fresh.tx_ended, "tx-b")
        .unwrap()
        .unwrap();
    assert_eq!((ra.resolution, ra.halves.len()), (COMMITTED, 2));
    assert_eq!(rb.resolution, ROLLED_BACK);
    assert_eq!(fresh.tx_open.get("orders-service"), 0);
    let _ = stop_tx.send(true);
    floor_task.await.unwrap();
}

/// A transaction's sends carry no producer sequence: a retry after an unknown outcome may store
/// the send a second time, and the commit copies it once (the first copy), also after a
/// restart rebuilt the state from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_stored_twice_by_a_retry_is_committed_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let st = state();
    let write = WritePath::standalone(store.clone(), st.clone());
    let txs = Transactions::new(write.clone(), store.clone(), TxSettings::default());

    let d = tx("tx-d");
    let first = half(&write, &d, "orders", 0, &["d1", "d2"]).await;
    let again = half(&write, &d, "orders", 0, &["d1", "d2"]).await;
    half(&write, &d, "orders", 0, &["d3"]).await;
    assert_ne!(first, again, "the retry is a second copy in the log");
    let r = table::get(st.meta().as_ref(), &st.tx_ended, "tx-d")
        .unwrap()
        .unwrap();
    let locators: Vec<u64> = r.halves.iter().map(|h| h.locator).collect();
    assert_eq!(locators.len(), 2, "the copy does not join: {locators:?}");
    assert_eq!(locators[0], first);

    let ended = txs.end("tx-d", COMMITTED, 6).await.unwrap();
    let ids: Vec<&str> = ended.committed.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["d1", "d2", "d3"]);
    wait_visible(&store, "orders", 0, 3).await;
    let visible: Vec<String> = read_all(&store, "orders", 0)
        .into_iter()
        .map(|r| r.message_id)
        .collect();
    assert_eq!(visible, ["d1", "d2", "d3"]);

    let fresh = state();
    standalone::recover(&store, &fresh).unwrap();
    let rd = table::get(fresh.meta().as_ref(), &fresh.tx_ended, "tx-d")
        .unwrap()
        .unwrap();
    // A resolved transaction keeps its sends' sizes (not where they were): the copy is not one.
    let rebuilt: Vec<u32> = rd.halves.iter().map(|h| h.count).collect();
    assert_eq!((rd.resolution, rebuilt), (COMMITTED, vec![2, 1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_a_send_with_limit_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let st = state();
    let write = WritePath::standalone(store.clone(), st.clone());
    let settings = TxSettings {
        max_messages: 3,
        max_bytes: 1_000,
        max_open: 1,
        ..TxSettings::default()
    };
    let txs = Transactions::new(write.clone(), store.clone(), settings);
    let a = tx("a");
    txs.check_send(&a, 2, 10, 5).unwrap();
    half(&write, &a, "t", 0, &["1", "2"]).await;
    assert_eq!(
        txs.check_send(&a, 2, 10, 6).unwrap_err().code,
        ErrorCode::LimitExceeded
    );
    assert_eq!(
        txs.check_send(&a, 1, 2_000, 6).unwrap_err().code,
        ErrorCode::LimitExceeded
    );
    txs.check_send(&a, 1, 10, 6).unwrap();
    // One open transaction per group here: a second one waits for the first to end.
    let e = txs.check_send(&tx("b"), 1, 10, 6).unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitExceeded);
    assert!(e.message.contains("max_open_transactions"), "{e}");
    txs.end("a", ROLLED_BACK, 7).await.unwrap();
    txs.check_send(&tx("b"), 1, 10, 8).unwrap();
    assert_eq!(
        txs.check_send(
            &TxSend {
                id: "bad id".into(),
                group: "g".into()
            },
            1,
            1,
            8
        )
        .unwrap_err()
        .code,
        ErrorCode::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_past_its_timeout_is_rolled_back_and_never_visible() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let st = state();
    let write = WritePath::standalone(store.clone(), st.clone());
    let settings = TxSettings {
        timeout: std::time::Duration::from_millis(1_000),
        ..TxSettings::default()
    };
    let txs = Transactions::new(write.clone(), store.clone(), settings);
    // Its producer commits too late: refused, and the transaction is rolled back.
    half(&write, &tx("late"), "orders", 0, &["l1"]).await;
    let e = txs.end("late", COMMITTED, 5 + 1_001).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TransactionResolved);
    assert!(e.message.contains("expired"), "{e}");
    let r = table::get(st.meta().as_ref(), &st.tx_ended, "late")
        .unwrap()
        .unwrap();
    assert_eq!((r.resolution, r.expired), (ROLLED_BACK, true));
    // A rollback of an expired one is answered as asked; within the timeout a commit works.
    half(&write, &tx("in-time"), "orders", 0, &["i1"]).await;
    txs.end("in-time", COMMITTED, 5 + 1_000).await.unwrap();
    // Nobody ends this one: the master's task rolls it back (its clock is far past the
    // transaction's creation time, 5 ms after the epoch).
    half(&write, &tx("forgotten"), "orders", 0, &["f1"]).await;
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(txs.clone().run_checks(stop));
    wait_for("the forgotten transaction expired", || {
        table::get(st.meta().as_ref(), &st.tx_ended, "forgotten")
            .unwrap()
            .is_some_and(|r| r.resolution == ROLLED_BACK && r.expired)
    })
    .await;
    let e = txs
        .end("forgotten", COMMITTED, crate_now())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::TransactionResolved);
    assert_eq!(st.tx_open.get("orders-service"), 0);
    let _ = stop_tx.send(true);
    task.await.unwrap();
    // Only the one committed in time is visible.
    wait_visible(&store, "orders", 0, 1).await;
    let ids: Vec<String> = read_all(&store, "orders", 0)
        .into_iter()
        .map(|r| r.message_id)
        .collect();
    assert_eq!(ids, ["i1"]);
}

fn crate_now() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_millis() as i64
}
