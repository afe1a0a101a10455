use std::time::Instant;
use bytes::Bytes;
use raft::prelude::*;
use raft::Storage;
use sluice_broker::replication::RaftLogStore;
use sluice_broker::store::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lat() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.confirm = ConfirmMode::External;
    c.raft = true;
    let store = MessageStore::open(c).await.unwrap();
    let mut log = store.raft_log().unwrap();
    let batch = AppendBatch { topic: "t".into(), queue_id: 0, messages: vec![AppendMessage { message_id: "x".into(), body: Bytes::from_static(b"hello"), ..Default::default() }] };
    let h = tokio::task::spawn_blocking(move || {
        let mut cs = ConfState::default(); cs.voters = vec![1,2,3];
        log.set_conf_state(&cs).unwrap();
        let (mut ta, mut th, mut ts) = (0u128,0u128,0u128);
        for i in 1..=200u64 {
            let data = encode_for_proposal(&batch, "h", 1).unwrap();
            let e = Entry { index: i, term: 1, data, ..Default::default() };
            let t = Instant::now(); log.append(&[e]).unwrap(); ta += t.elapsed().as_micros();
            let hs = HardState { term: 1, vote: 1, commit: i - 1, ..Default::default() };
            let t = Instant::now(); log.set_hard_state(&hs).unwrap(); th += t.elapsed().as_micros();
            let t = Instant::now(); log.sync().unwrap(); ts += t.elapsed().as_micros();
        }
        println!("append {}us hardstate {}us sync {}us per entry", ta/200, th/200, ts/200);
        let _ = log.last_index();
    });
    h.await.unwrap();
}
