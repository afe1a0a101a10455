use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use super::*;
use crate::messaging::txn::{TxSend, TxSettings};
use crate::messaging::WritePath;
use crate::meta::MemMeta;
use crate::state::transactions::COMMITTED;
use crate::state::{producers, StateMachine};
use crate::store::{AppendMessage, MessageStore, StoreConfig};

pub(in crate::messaging::txn) fn msg(id: &str) -> AppendMessage {
    AppendMessage {
        message_id: id.to_owned(),
        body: Bytes::copy_from_slice(id.as_bytes()),
        born_timestamp_ms: 1,
        born_host: "10.0.0.1:1234".into(),
        ..Default::default()
    }
}

pub(in crate::messaging::txn) struct Setup {
    _dir: tempfile::TempDir,
    pub store: MessageStore,
    pub st: Arc<StateMachine>,
    pub write: WritePath,
    pub txs: Arc<Transactions>,
}

/// A standalone broker's store, state and transactions in a temp dir.
pub(in crate::messaging::txn) async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.segment_size = 1 << 20;
    cfg.cq_entries_per_file = 1024;
    cfg.index_slots = 64;
    cfg.index_entries_per_file = 1024;
    cfg.flush_interval = Duration::from_millis(20);
    cfg.checkpoint_interval = Duration::from_millis(50);
    cfg.store_host = "127.0.0.1:10911".into();
    cfg.disk_budget_bytes = Some(1 << 30);
    let store = MessageStore::open(cfg).await.unwrap();
    let st = Arc::new(
        StateMachine::open(Arc::new(MemMeta::default()), Arc::new(Notify::new())).unwrap(),
    );
    st.apply(None, &[producers::rescan_point_op(0)], true)
        .unwrap();
    let write = WritePath::standalone(store.clone(), st.clone());
    let txs = Transactions::new(write.clone(), store.clone(), TxSettings::default());
    Setup {
        _dir: dir,
        store,
        st,
        write,
        txs,
    }
}

/// Both writers busy: ends queue until the test starts a writer.
fn hold_writers(txs: &Transactions) {
    txs.end_queue.lock().writers = MAX_WRITERS;
}

/// Starts a writer in place of one of the busy ones.
fn start_writer(txs: &Arc<Transactions>) {
    let slot = Slot {
        this: txs.clone(),
        held: true,
    };
    tokio::spawn(txs.clone().drain(slot));
}

async fn queued(txs: &Transactions, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while txs.end_queue.lock().jobs.len() < n {
        assert!(Instant::now() < deadline, "the ends did not queue");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Ends queued while both writers are busy go down in one write, and each caller gets the
/// positions of its own messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_ends_share_one_write_and_each_gets_its_own_positions() {
    let Setup {
        store,
        st,
        write,
        txs,
        ..
    } = setup().await;
    let n = 20;
    let mut sent = Vec::new();
    for i in 0..n {
        let t = TxSend {
            id: format!("tx-{i}"),
            group: "g".into(),
        };
        let ids: Vec<String> = (0..=i % 3).map(|k| format!("m{i}-{k}")).collect();
        let batch = Transactions::half_batch(
            "orders",
            (i % 2) as u32,
            &t,
            ids.iter().map(|id| msg(id)).collect(),
        );
        write.append_announced(&batch, 5).await.unwrap();
        sent.push((t.id, ids));
    }
    hold_writers(&txs);
    let ends: Vec<_> = sent
        .iter()
        .map(|(id, _)| {
            let (txs, id) = (txs.clone(), id.clone());
            tokio::spawn(async move { txs.end(&id, COMMITTED, 6).await })
        })
        .collect();
    queued(&txs, n).await;
    start_writer(&txs);
    for ((_, ids), end) in sent.iter().zip(ends) {
        let ended = end.await.unwrap().unwrap();
        let got: Vec<&String> = ended.committed.iter().map(|(id, _)| id).collect();
        assert_eq!(got, ids.iter().collect::<Vec<_>>());
        for (id, at) in &ended.committed {
            let r = store.read_at(at.commit_log_offset).unwrap();
            assert_eq!((&r.message_id, r.queue_offset), (id, at.queue_offset));
        }
    }
    assert_eq!(txs.end_writes(), (1, n as u64));
    assert_eq!(st.tx_ended.len(), n as u64);
}

/// A commit cancelled while its write is queued, then retried: the retry waits for the queued
/// write (the first attempt's slot holds until it is decided) and the messages are copied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cancelled_while_queued_and_retried_is_copied_once() {
    let Setup { write, txs, .. } = setup().await;
    let t = TxSend {
        id: "tx-c".into(),
        group: "g".into(),
    };
    let batch = Transactions::half_batch("orders", 0, &t, vec![msg("c1"), msg("c2")]);
    write.append_announced(&batch, 5).await.unwrap();
    hold_writers(&txs);
    let first = {
        let txs = txs.clone();
        tokio::spawn(async move { txs.end("tx-c", COMMITTED, 6).await })
    };
    queued(&txs, 1).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let retry = {
        let txs = txs.clone();
        tokio::spawn(async move { txs.end("tx-c", COMMITTED, 7).await })
    };
    // The retry must not queue a second copy while the first is still unwritten.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(txs.end_queue.lock().jobs.len(), 1);
    start_writer(&txs);
    let retried = match retry.await.unwrap() {
        Ok(e) => e.resolution,
        // The cancelled attempt's guard tells the waiting retry to try again.
        Err(e) => {
            assert_eq!(e.code, sluice_proto::ErrorCode::Unavailable, "{e}");
            txs.end("tx-c", COMMITTED, 8).await.unwrap().resolution
        }
    };
    assert_eq!(retried, COMMITTED);
    // One end was written, with the copies of both messages: the retry wrote none.
    assert_eq!(txs.end_writes(), (1, 1));
    let r = txs.write.state().transaction("tx-c").unwrap().unwrap();
    assert_eq!(r.resolution, COMMITTED);
}

/// A commit copies the sends this master kept (and the store's records are the same), and
/// a rollback drops what was kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_takes_the_kept_sends_and_a_rollback_drops_them() {
    let Setup {
        store, write, txs, ..
    } = setup().await;
    let mut locators = Vec::new();
    for id in ["keep-c", "keep-r"] {
        let t = TxSend {
            id: id.into(),
            group: "g".into(),
        };
        let batch = Transactions::half_batch("orders", 1, &t, vec![msg(&format!("{id}-m"))]);
        let acked = write.append_announced_acked(&batch, 5).await.unwrap();
        let locator = acked.entries[0].commit_log_offset;
        write.then_applied(acked.clone()).await.unwrap();
        assert!(write.acks_committed());
        txs.keep_sent(&acked, &batch);
        assert!(txs.sent.inner_has(locator));
        locators.push(locator);
    }
    let ended = txs.end("keep-c", COMMITTED, 6).await.unwrap();
    assert!(!txs.sent.inner_has(locators[0]), "the commit took it");
    let (id, at) = &ended.committed[0];
    let copy = store.read_at(at.commit_log_offset).unwrap();
    assert_eq!(
        (copy.message_id.as_str(), copy.topic.as_str()),
        (id.as_str(), "orders")
    );
    assert_eq!(&copy.body[..], b"keep-c-m");
    txs.end("keep-r", crate::state::transactions::ROLLED_BACK, 6)
        .await
        .unwrap();
    assert!(!txs.sent.inner_has(locators[1]), "the rollback dropped it");
}
