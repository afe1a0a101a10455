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

fn msg(id: &str) -> AppendMessage {
    AppendMessage {
        message_id: id.to_owned(),
        body: Bytes::copy_from_slice(id.as_bytes()),
        born_timestamp_ms: 1,
        born_host: "10.0.0.1:1234".into(),
        ..Default::default()
    }
}

/// Ends queued while both write slots are busy go down in one write, and each caller gets the
/// positions of its own messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_ends_share_one_write_and_each_gets_its_own_positions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.disk_budget_bytes = Some(1 << 30);
    let store = MessageStore::open(cfg).await.unwrap();
    let st = Arc::new(
        StateMachine::open(Arc::new(MemMeta::default()), Arc::new(Notify::new())).unwrap(),
    );
    st.apply(None, &[producers::rescan_point_op(0)], true)
        .unwrap();
    let write = WritePath::standalone(store.clone(), st.clone());
    let txs = Transactions::new(write.clone(), store.clone(), TxSettings::default());
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
    txs.end_queue.lock().writers = MAX_WRITERS;
    let ends: Vec<_> = sent
        .iter()
        .map(|(id, _)| {
            let (txs, id) = (txs.clone(), id.clone());
            tokio::spawn(async move { txs.end(&id, COMMITTED, 6).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while txs.end_queue.lock().jobs.len() < n {
        assert!(Instant::now() < deadline, "the ends did not queue");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // One slot frees: its holder hands everything queued to one write.
    drop(Slot { this: txs.clone() });
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
