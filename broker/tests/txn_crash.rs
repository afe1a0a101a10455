//! Transactions across failures between a write and its acknowledgement, on a standalone
//! store: a half message whose write succeeded but whose state was not applied joins its
//! transaction once (the retry waits for the restart, then gets the first positions); a commit
//! whose entry was written but not applied becomes visible once, and after the restart the
//! transaction reads as committed (a retried commit is answered, a rollback refused). Run with
//! `--features failpoints`.
#![cfg(feature = "failpoints")]

#[path = "store_util.rs"]
mod util;

use std::sync::Arc;
use std::time::Duration;

use sluice_broker::messaging::idempotence::{Idempotence, Sequence};
use sluice_broker::messaging::standalone;
use sluice_broker::messaging::txn::{Transactions, TxSend, TxSettings};
use sluice_broker::messaging::WritePath;
use sluice_broker::meta::{MemMeta, MetaStore};
use sluice_broker::state::transactions::{self as table, COMMITTED, OPEN, ROLLED_BACK};
use sluice_broker::state::StateMachine;
use sluice_broker::store::MessageStore;
use sluice_proto::ErrorCode;
use tokio::sync::Notify;
use util::*;

fn state() -> Arc<StateMachine> {
    let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
    Arc::new(StateMachine::open(meta, Arc::new(Notify::new())).unwrap())
}

fn tx() -> TxSend {
    TxSend {
        id: "tx-1".into(),
        group: "orders-service".into(),
    }
}

/// The broker's pieces over one store and state, as a start builds them.
struct Broker {
    idem: Arc<Idempotence>,
    txs: Arc<Transactions>,
}

fn start(store: &MessageStore, state: &Arc<StateMachine>) -> Broker {
    standalone::recover(store, state).unwrap();
    let write = WritePath::standalone(store.clone(), state.clone());
    Broker {
        idem: Idempotence::new(write.clone(), store.clone(), Duration::from_secs(5)),
        txs: Transactions::new(write, store.clone(), TxSettings::default()),
    }
}

fn seq(pid: u64) -> Sequence {
    Sequence {
        producer_id: pid,
        epoch: 0,
        base_sequence: 0,
    }
}

fn half(ids: &[&str]) -> sluice_broker::store::AppendBatch {
    let msgs = ids.iter().map(|i| msg(i, i.as_bytes())).collect();
    Transactions::half_batch("orders", 0, &tx(), msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_message_written_but_not_acknowledged_joins_its_transaction_once() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let st = state();
    let b = start(&store, &st);
    let pid = b.idem.register("orders-service", 1).await.unwrap();

    fail::cfg("messaging::write_path::before_announced_state", "return").unwrap();
    let first = b.idem.append(seq(pid), "orders", 0, half(&["a1"]), 5).await;
    assert_eq!(first.unwrap_err().code, ErrorCode::Unavailable);
    fail::cfg("messaging::write_path::before_announced_state", "off").unwrap();
    // Retries wait for the restart rather than add the half message again.
    let retry = b.idem.append(seq(pid), "orders", 0, half(&["a1"]), 5).await;
    assert_eq!(retry.unwrap_err().code, ErrorCode::Unavailable);
    assert!(table::get(st.meta().as_ref(), &st.tx_ended, "tx-1")
        .unwrap()
        .is_none());

    // The restart reads the half message back into its transaction.
    let b = start(&store, &st);
    let r = table::get(st.meta().as_ref(), &st.tx_ended, "tx-1")
        .unwrap()
        .unwrap();
    assert_eq!((r.resolution, r.halves.len()), (OPEN, 1));
    let again = b
        .idem
        .append(seq(pid), "orders", 0, half(&["a1"]), 5)
        .await
        .unwrap();
    assert!(again.duplicate);
    let r = table::get(st.meta().as_ref(), &st.tx_ended, "tx-1")
        .unwrap()
        .unwrap();
    assert_eq!(r.halves.len(), 1, "the retry is not a second half message");

    let ended = b.txs.end("tx-1", COMMITTED, 6).await.unwrap();
    assert_eq!(ended.committed.len(), 1);
    wait_visible(&store, "orders", 0, 1).await;
    assert_eq!(store.queue_offsets("orders", 0), (0, 1));
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_written_but_not_acknowledged_becomes_visible_once() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let st = state();
    let b = start(&store, &st);
    let pid = b.idem.register("orders-service", 1).await.unwrap();
    b.idem
        .append(seq(pid), "orders", 0, half(&["a1", "a2"]), 5)
        .await
        .unwrap();

    fail::cfg("messaging::write_path::before_mixed_state", "return").unwrap();
    let first = b.txs.end("tx-1", COMMITTED, 6).await;
    assert_eq!(first.unwrap_err().code, ErrorCode::Unavailable);
    fail::cfg("messaging::write_path::before_mixed_state", "off").unwrap();
    // The copies are in the log (visible), but the end is not applied: a retry waits for the
    // restart rather than commit again.
    wait_visible(&store, "orders", 0, 2).await;
    let retry = b.txs.end("tx-1", COMMITTED, 7).await;
    assert_eq!(retry.unwrap_err().code, ErrorCode::Unavailable);

    // The restart reads the resolution back from the log.
    let b = start(&store, &st);
    let r = table::get(st.meta().as_ref(), &st.tx_ended, "tx-1")
        .unwrap()
        .unwrap();
    assert_eq!(r.resolution, COMMITTED);
    assert_eq!(st.tx_open.get("orders-service"), 0);
    let again = b.txs.end("tx-1", COMMITTED, 8).await.unwrap();
    assert_eq!(
        (again.resolution, again.committed.len()),
        (COMMITTED, 0),
        "answered as committed, nothing written"
    );
    let other = b.txs.end("tx-1", ROLLED_BACK, 8).await.unwrap_err();
    assert_eq!(other.code, ErrorCode::TransactionResolved);
    assert_eq!(store.queue_offsets("orders", 0), (0, 2));
    scenario.teardown();
}
