//! Mixed batches: state operations and messages of several queues written as one unit. On a
//! standalone store every message takes the next offset of its own queue and the state
//! records none; the write path applies the state, and a restart that lost the metadata
//! store's latest writes applies it again from the log. In a replica group's entry form the
//! state records come first, so the applier finds them.

#[path = "store_util.rs"]
mod util;

use std::sync::Arc;

use prost::Message as _;
use sluice_broker::messaging::standalone;
use sluice_broker::messaging::WritePath;
use sluice_broker::meta::{MemMeta, MetaStore};
use sluice_broker::state::{self, StateMachine};
use sluice_broker::store::{decode_entry, is_meta_entry, LogState, MessageStore, MixedBatch};
use sluice_proto::v1::TopicConfig;
use tokio::sync::Notify;
use util::*;

fn state() -> Arc<StateMachine> {
    let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
    Arc::new(StateMachine::open(meta, Arc::new(Notify::new())).unwrap())
}

fn topic_op(name: &str) -> bytes::Bytes {
    state::upsert_topic_op(TopicConfig {
        name: name.into(),
        read_queues: 2,
        write_queues: 2,
        perm: sluice_proto::perm::READ_WRITE,
    })
    .encode_to_vec()
    .into()
}

fn mixed(tag: &str) -> MixedBatch {
    MixedBatch {
        state: vec![topic_op(&format!("made-by-{tag}"))],
        parts: vec![
            batch(
                "t",
                0,
                vec![
                    msg(&format!("{tag}-a"), b"a"),
                    msg(&format!("{tag}-b"), b"b"),
                ],
            ),
            batch("t", 1, vec![msg(&format!("{tag}-c"), b"c")]),
            batch("u", 0, vec![msg(&format!("{tag}-d"), b"d")]),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_applies_its_state_and_fills_each_queue_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let st = state();
    standalone::recover(&store, &st).unwrap();
    let write = WritePath::standalone(store.clone(), st.clone());
    store
        .append(batch("t", 1, vec![msg("before", b"x")]))
        .await
        .unwrap();
    let entries = write.append_mixed(&mixed("m1"), 5).await.unwrap();
    let qoffs: Vec<u64> = entries.iter().map(|a| a.queue_offset).collect();
    assert_eq!(
        qoffs,
        [0, 1, 1, 0],
        "each queue continues from its own next offset"
    );
    assert!(st.topics.get("made-by-m1").is_some());
    wait_visible(&store, "t", 0, 2).await;
    wait_visible(&store, "t", 1, 2).await;
    wait_visible(&store, "u", 0, 1).await;
    let ids = |q: Vec<sluice_broker::store::StoredRecord>| -> Vec<String> {
        q.into_iter().map(|r| r.message_id).collect()
    };
    assert_eq!(ids(read_all(&store, "t", 0)), ["m1-a", "m1-b"]);
    assert_eq!(ids(read_all(&store, "t", 1)), ["before", "m1-c"]);
    assert_eq!(ids(read_all(&store, "u", 0)), ["m1-d"]);
    for a in &entries {
        assert!(store.read_at(a.commit_log_offset).is_ok());
    }
    // The log carries the state record for a restart.
    let found = store.log_state(0).unwrap();
    assert!(matches!(found.as_slice(), [LogState::Meta(_)]), "{found:?}");
    // A store no build with state in its log opened: nothing to read, the point recorded.
    let new = state();
    assert_eq!(standalone::recover(&store, &new).unwrap(), 0);
    assert!(new.topics.get("made-by-m1").is_none());

    // A restart whose metadata store lost everything since the start (the point recorded at
    // start survived): the state comes back from the log.
    let fresh = state();
    fresh
        .apply(None, &[state::producers::rescan_point_op(0)], true)
        .unwrap();
    assert_eq!(standalone::recover(&store, &fresh).unwrap(), 1);
    assert!(fresh.topics.get("made-by-m1").is_some());
    let write2 = WritePath::standalone(store.clone(), fresh.clone());
    write2.append_mixed(&mixed("m2"), 6).await.unwrap();
    assert!(fresh.topics.get("made-by-m2").is_some());
    // That write moved the recorded point past itself (it was applied): nothing to read again.
    assert_eq!(standalone::recover(&store, &fresh).unwrap(), 0);
}

#[test]
fn the_entry_form_puts_state_records_first() {
    let data = sluice_broker::store::encode_mixed_for_proposal(&mixed("e"), "h:1", 9).unwrap();
    assert!(is_meta_entry(&data));
    let recs = decode_entry(&data).unwrap();
    let topics: Vec<&str> = recs.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(topics, ["%SYS%META", "t", "t", "t", "u"]);
    assert_eq!(
        state::decode_op(&recs[0].body),
        Some(state::StateOp::decode(topic_op("made-by-e").as_ref()).unwrap())
    );
    assert!(
        sluice_broker::store::encode_mixed_for_proposal(&MixedBatch::default(), "h", 0).is_err()
    );
}
