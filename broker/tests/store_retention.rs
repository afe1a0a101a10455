//! Retention by age and by disk use, and DISK_FULL above the hard ratio.

#[path = "store_util.rs"]
mod util;

use std::time::Duration;

use sluice_broker::store::{MessageStore, StoreError};
use util::*;

#[tokio::test]
async fn old_segments_are_deleted_with_their_queue_and_index_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 16 * 1024;
    cfg.retention = Duration::from_secs(3600);
    cfg.retention_check_interval = Duration::from_millis(20);
    let store = MessageStore::open(cfg.clone()).await.unwrap();
    let acked = produce_until_error(store.clone(), "ret", 0, "a", 200).await;
    wait_all_dispatched(&store).await;
    let cq_files = count_files(&dir.path().join("consumequeue"));
    assert_eq!(store.commit_log_range().0, 0, "young segments are kept");
    store.shutdown().await.unwrap();
    drop(store);

    // Everything but the active segment is now too old.
    cfg.retention = Duration::ZERO;
    let store = MessageStore::open(cfg).await.unwrap();
    wait_for("retention", || store.commit_log_range().0 > 0).await;
    let (log_min, log_max) = store.commit_log_range();
    assert!(
        log_max - log_min <= 16 * 1024,
        "only the active segment is left: {log_min}..{log_max}"
    );
    let (min, max) = store.queue_offsets("ret", 0);
    wait_for("queue trim", || store.queue_offsets("ret", 0).0 > 0).await;
    let (min2, _) = store.queue_offsets("ret", 0);
    assert!(min2 > min || min > 0);
    assert_eq!(max, 200);
    let first_kept = acked
        .iter()
        .find(|a| a.commit_log_offset >= log_min)
        .unwrap();
    assert_eq!(min2, first_kept.queue_offset);
    assert!(matches!(
        store.read_queue("ret", 0, min2 - 1, 1, usize::MAX),
        Err(StoreError::OffsetOutOfRange { .. })
    ));
    let kept: Vec<&Acked> = acked
        .iter()
        .filter(|a| a.commit_log_offset >= log_min)
        .collect();
    assert_acked_present(&store, &kept.into_iter().cloned().collect::<Vec<_>>());
    assert!(store.get_by_id(&acked[0].id).unwrap().is_none());
    assert!(store.find_by_time("ret", 0, i64::MAX, 1000).unwrap().len() < 200);
    wait_for("consume-queue files deleted", || {
        count_files(&dir.path().join("consumequeue")) < cq_files
    })
    .await;
    // Reading and writing go on.
    let r = store
        .append(batch("ret", 0, vec![msg("new", b"x")]))
        .await
        .unwrap();
    assert_eq!(r.entries[0].queue_offset, 200);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_store_held_for_the_transaction_floor_deletes_nothing_until_it_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 16 * 1024;
    cfg.retention = Duration::from_secs(3600);
    let store = MessageStore::open(cfg.clone()).await.unwrap();
    produce_until_error(store.clone(), "held", 0, "a", 200).await;
    wait_all_dispatched(&store).await;
    store.shutdown().await.unwrap();
    drop(store);

    // Everything but the active segment is too old, but a broker's transactions have not
    // said yet which segments their unresolved messages are in.
    cfg.retention = Duration::ZERO;
    cfg.retention_check_interval = Duration::from_millis(20);
    cfg.hold_until_transaction_floor = true;
    let store = MessageStore::open(cfg).await.unwrap();
    wait_for("retention checks", || store.retention_checks() >= 3).await;
    assert_eq!(store.commit_log_range().0, 0, "nothing deleted while held");
    store.set_transaction_floor(u64::MAX);
    wait_for("retention", || store.commit_log_range().0 > 0).await;
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn disk_use_above_the_high_ratio_deletes_the_oldest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 16 * 1024;
    // Far apart, so that a retention thread starved by a busy machine still keeps up.
    cfg.disk_budget_bytes = Some(512 * 1024);
    cfg.disk_high_ratio = 0.25;
    cfg.disk_hard_ratio = 0.9;
    cfg.retention_check_interval = Duration::from_millis(10);
    let store = MessageStore::open(cfg).await.unwrap();
    let mut max_ratio = 0f64;
    for i in 0..1500 {
        store
            .append(batch("hw", 0, vec![msg(&format!("m{i}"), &[5u8; 1000])]))
            .await
            .unwrap();
        max_ratio = max_ratio.max(store.disk_usage_ratio());
    }
    wait_all_dispatched(&store).await;
    // ~1.7 MB went through a 512 KB budget without ever reaching the hard limit.
    assert!(max_ratio < 0.9, "ratio peaked at {max_ratio}");
    assert!(store.commit_log_range().0 > 0);
    wait_for("usage back under the high ratio", || {
        store.disk_usage_ratio() <= 0.25
    })
    .await;
    // The dispatcher trims consume queues after the log: wait until the queue's head is a
    // record the log still holds, so the read below does not race the trimming.
    wait_for("the queue trimmed with the log", || {
        let (min, _) = store.queue_offsets("hw", 0);
        store
            .read_queue("hw", 0, min, 1, usize::MAX)
            .is_ok_and(|r| !r.records.is_empty())
    })
    .await;
    let (min, max) = store.queue_offsets("hw", 0);
    assert_eq!(max, 1500);
    assert!(min > 0);
    assert_eq!(read_all(&store, "hw", 0).len() as u64, max - min);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn appends_fail_with_disk_full_above_the_hard_ratio_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // One big active segment: nothing retention may delete.
    cfg.segment_size = 1 << 20;
    cfg.disk_budget_bytes = Some(128 * 1024);
    cfg.retention_check_interval = Duration::from_millis(10);
    let store = MessageStore::open(cfg.clone()).await.unwrap();
    let mut acked = Vec::new();
    let mut full = None;
    for i in 0..400 {
        let body = vec![9u8; 1000];
        match store
            .append(batch("full", 0, vec![msg(&format!("m{i}"), &body)]))
            .await
        {
            Ok(r) => acked.push(r.entries[0]),
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    match full {
        Some(StoreError::DiskFull { ratio, limit }) => assert!(ratio >= limit && limit == 0.9),
        other => panic!("expected DiskFull, got {other:?}"),
    }
    assert!(store.disk_usage_ratio() >= 0.9);
    assert!(acked.len() > 50);
    wait_visible(&store, "full", 0, acked.len() as u64).await;
    let recs = read_all(&store, "full", 0);
    assert_eq!(recs.len(), acked.len());
    assert!(recs
        .iter()
        .zip(&acked)
        .all(|(r, a)| r.commit_log_offset == a.commit_log_offset));
    // Still full after a restart, and nothing acked was damaged.
    store.shutdown().await.unwrap();
    drop(store);
    let store = MessageStore::open(cfg.clone()).await.unwrap();
    assert!(matches!(
        store.append(batch("full", 0, vec![msg("x", b"x")])).await,
        Err(StoreError::DiskFull { .. })
    ));
    assert_eq!(read_all(&store, "full", 0).len(), acked.len());
    store.shutdown().await.unwrap();
    drop(store);
    // More room: writes resume where they stopped.
    cfg.disk_budget_bytes = Some(1 << 30);
    let store = MessageStore::open(cfg).await.unwrap();
    let r = store
        .append(batch("full", 0, vec![msg("x", b"x")]))
        .await
        .unwrap();
    assert_eq!(r.entries[0].queue_offset, acked.len() as u64);
    store.shutdown().await.unwrap();
}
