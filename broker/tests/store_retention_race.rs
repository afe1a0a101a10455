//! A queue read that meets segments retention just deleted, before the queue's head is trimmed
//! (a failpoint holds the dispatcher there), answers in the queue's offsets: a consumer moves
//! to the first message the log still holds, not to a commit-log position. Run with
//! `--features failpoints`.
#![cfg(feature = "failpoints")]

#[path = "store_util.rs"]
mod util;

use std::time::Duration;

use fail::FailScenario;
use sluice_broker::store::{MessageStore, QueueFilter, StoreError};
use sluice_proto::record::DispatchView;
use util::*;

/// Lets the dispatcher go on when dropped.
struct Release;

impl Drop for Release {
    fn drop(&mut self) {
        fail::remove(HOLD);
    }
}

const HOLD: &str = "store::dispatcher::before_trim";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_racing_retention_answers_in_queue_offsets() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 16 * 1024;
    cfg.retention = Duration::from_secs(3600);
    cfg.retention_check_interval = Duration::from_millis(20);
    let store = MessageStore::open(cfg.clone()).await.unwrap();
    let acked = produce_until_error(store.clone(), "race", 0, "a", 200).await;
    assert_eq!(acked.len(), 200);
    wait_all_dispatched(&store).await;
    store.shutdown().await.unwrap();
    drop(store);

    // Everything but the active segment is now too old; the queue's head stays untrimmed.
    fail::cfg(HOLD, "pause").unwrap();
    cfg.retention = Duration::ZERO;
    let store = MessageStore::open(cfg).await.unwrap();
    // Dropped before the store, also on a failed assertion (a held dispatcher would hang it).
    let _release = Release;
    wait_for("retention", || store.commit_log_range().0 > 0).await;
    let (log_min, _) = store.commit_log_range();
    assert_eq!(
        store.queue_offsets("race", 0),
        (0, 200),
        "head not trimmed yet"
    );
    let first_kept = acked
        .iter()
        .find(|a| a.commit_log_offset >= log_min)
        .unwrap()
        .queue_offset;
    assert!(first_kept > 0);

    let plain = store.read_queue("race", 0, 0, 8, usize::MAX);
    let keep = |_: &DispatchView<'_>| true;
    let filter = QueueFilter {
        tag_hashes: None,
        keep: &keep,
        scan_limit: 64,
    };
    let filtered = store.read_queue_where("race", 0, 0, 8, usize::MAX, Some(&filter));
    for (what, r) in [("plain", plain), ("filtered", filtered)] {
        match r {
            Err(StoreError::OffsetOutOfRange { offset, min, max }) => {
                assert_eq!((offset, min, max), (0, first_kept, 200), "{what} read");
            }
            other => panic!("{what} read: expected OFFSET_OUT_OF_RANGE, got {other:?}"),
        }
    }
    // What the log still holds reads as before.
    let r = store
        .read_queue("race", 0, first_kept, 8, usize::MAX)
        .unwrap();
    assert_eq!(r.records.first().map(|m| m.queue_offset), Some(first_kept));

    fail::remove(HOLD);
    wait_for("queue trim", || {
        store.queue_offsets("race", 0).0 == first_kept
    })
    .await;
    store.shutdown().await.unwrap();
    scenario.teardown();
}
