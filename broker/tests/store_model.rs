//! Property test: random interleavings of appends, restarts (clean or dropped) and
//! truncations agree with a simple in-memory model of the queues.

#[path = "store_util.rs"]
mod util;

use proptest::prelude::*;
use sluice_broker::store::{MessageStore, StoreConfig};
use util::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        queue: u32,
        count: usize,
        size: usize,
    },
    /// Shut down cleanly (or just drop) and reopen.
    Restart { clean: bool },
    /// Cut the log before the `pick`-th record (modulo the record count).
    Truncate { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3u32, 1..4usize, 0..2000usize).prop_map(|(queue, count, size)| Op::Append { queue, count, size }),
        1 => any::<bool>().prop_map(|clean| Op::Restart { clean }),
        1 => any::<usize>().prop_map(|pick| Op::Truncate { pick }),
    ]
}

/// A record as the model sees it.
#[derive(Debug, Clone)]
struct ModelRecord {
    queue: u32,
    id: String,
    commit_log_offset: u64,
    body_len: usize,
}

fn cfg(dir: &std::path::Path) -> StoreConfig {
    let mut c = config(dir);
    // Tiny segments and queue files so rolls and file boundaries happen often.
    c.segment_size = 8 * 1024;
    c.max_message_size = 4 * 1024;
    c.cq_entries_per_file = 8;
    c.index_entries_per_file = 16;
    c
}

async fn check(store: &MessageStore, log: &[ModelRecord]) {
    wait_all_dispatched(store).await;
    for q in 0..3u32 {
        let want: Vec<&ModelRecord> = log.iter().filter(|r| r.queue == q).collect();
        assert_eq!(
            store.queue_offsets("model", q),
            (0, want.len() as u64),
            "queue {q}"
        );
        let got = read_all(store, "model", q);
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.queue_offset, i as u64);
            assert_eq!(g.message_id, w.id);
            assert_eq!(g.commit_log_offset, w.commit_log_offset);
            assert_eq!(g.body.len(), w.body_len);
        }
    }
    if let Some(last) = log.last() {
        assert_eq!(
            store
                .get_by_id(&last.id)
                .unwrap()
                .unwrap()
                .commit_log_offset,
            last.commit_log_offset
        );
    }
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Some(MessageStore::open(cfg(dir.path())).await.unwrap());
    let mut log: Vec<ModelRecord> = Vec::new();
    let mut next_id = 0;
    for op in ops {
        let s = store.as_ref().unwrap();
        match op {
            Op::Append { queue, count, size } => {
                let msgs: Vec<_> = (0..count)
                    .map(|i| {
                        next_id += 1;
                        msg(&format!("m{next_id}"), &vec![(i % 251) as u8; size])
                    })
                    .collect();
                let ids: Vec<String> = msgs.iter().map(|m| m.message_id.clone()).collect();
                let r = s.append(batch("model", queue, msgs)).await.unwrap();
                let before = log.iter().filter(|r| r.queue == queue).count() as u64;
                for (i, (e, id)) in r.entries.iter().zip(ids).enumerate() {
                    assert_eq!(e.queue_offset, before + i as u64);
                    log.push(ModelRecord {
                        queue,
                        id,
                        commit_log_offset: e.commit_log_offset,
                        body_len: size,
                    });
                }
            }
            Op::Restart { clean } => {
                let s = store.take().unwrap();
                if clean {
                    s.shutdown().await.unwrap();
                }
                drop(s);
                store = Some(MessageStore::open(cfg(dir.path())).await.unwrap());
            }
            Op::Truncate { pick } => {
                let k = pick % (log.len() + 1);
                let offset = match log.get(k) {
                    Some(r) => r.commit_log_offset,
                    None => s.commit_log_range().1,
                };
                s.truncate_to(offset).await.unwrap();
                log.truncate(k);
            }
        }
        check(store.as_ref().unwrap(), &log).await;
    }
    store.unwrap().shutdown().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_the_model(ops in prop::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
