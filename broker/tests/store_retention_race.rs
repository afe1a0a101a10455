//! A queue read that meets segments retention just deleted, before the queue's head is trimmed
//! (failpoints hold the dispatcher before the trim, then in it), answers in the queue's offsets:
//! a consumer moves to the first message the log still holds, not to a commit-log position.
//! Run with `--features failpoints`.
#![cfg(feature = "failpoints")]

#[path = "store_util.rs"]
mod util;

use std::sync::Mutex;
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
        fail::remove(TRIMMING);
    }
}

const HOLD: &str = "store::dispatcher::before_trim";
const TRIMMING: &str = "store::cq::trim_head_files_removed";

fn assert_moved(r: Result<sluice_broker::store::QueueRead, StoreError>, want: (u64, u64, u64)) {
    match r {
        Err(StoreError::OffsetOutOfRange { offset, min, max }) => {
            assert_eq!((offset, min, max), want);
        }
        other => panic!("expected OFFSET_OUT_OF_RANGE {want:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_racing_retention_answers_in_queue_offsets() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 16 * 1024;
    cfg.retention = Duration::from_secs(3600);
    cfg.retention_check_interval = Duration::from_millis(20);
    // Several consume-queue files, so that trimming the head removes some.
    cfg.cq_entries_per_file = 20;
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
    assert_moved(plain, (0, first_kept, 200));
    assert_moved(filtered, (0, first_kept, 200));
    // What the log still holds reads as before.
    let r = store
        .read_queue("race", 0, first_kept, 8, usize::MAX)
        .unwrap();
    assert_eq!(r.records.first().map(|m| m.queue_offset), Some(first_kept));

    // The trim under way: the head's files are removed, the queue's min has not moved. A read
    // in the first file left still answers in queue offsets, though a search of the queue
    // meets removed files. The failpoint tells each time a trim gets there and waits for a go
    // (a dropped sender lets it go, also on a failed assertion).
    let cq_dir = dir.path().join("consumequeue").join("race").join("0");
    let (hit_tx, hit_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (hit_tx, go_rx) = (Mutex::new(hit_tx), Mutex::new(go_rx));
    fail::cfg_callback(TRIMMING, move || {
        let _ = hit_tx.lock().map(|t| t.send(()));
        let _ = go_rx.lock().map(|r| r.recv());
    })
    .unwrap();
    fail::remove(HOLD);
    let left = first_kept - first_kept % 20;
    // Files of 20 entries: those before `left` go once the trim has the final log start.
    let kept_files = (200 - left).div_ceil(20) as usize;
    // Retention deleted every old segment in one go: the first trim has the final log start.
    hit_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a trim reached the failpoint");
    assert_eq!(count_files(&cq_dir), kept_files, "the head's files removed");
    assert_eq!(
        store.queue_offsets("race", 0),
        (0, 200),
        "min not moved yet"
    );
    assert!(
        (101..first_kept).contains(&left),
        "the first file left starts below the first message kept ({left}, {first_kept}), and \
         removed files lie where a search of the queue looks first"
    );
    assert_moved(
        store.read_queue("race", 0, left, 8, usize::MAX),
        (left, first_kept, 200),
    );
    // Time lookups in the same window start at the first entry left, and find what the log
    // still holds.
    assert_eq!(store.offset_for_timestamp("race", 0, 0), left);
    let found = store.find_by_time("race", 0, i64::MAX, 1000).unwrap();
    assert_eq!(found.len() as u64, 200 - first_kept);
    fail::remove(TRIMMING);
    go_tx.send(()).unwrap();
    wait_for("queue trim", || {
        store.queue_offsets("race", 0).0 == first_kept
    })
    .await;
    store.shutdown().await.unwrap();
    scenario.teardown();
}
