//! Crash tests: failpoints stop the writer or the dispatcher in the middle of their work, the
//! store is dropped without shutdown and reopened. Run with `--features failpoints`.
#![cfg(feature = "failpoints")]

#[path = "store_util.rs"]
mod util;

use fail::FailScenario;
use sluice_broker::store::{FlushMode, MessageStore, StoreError};
use util::*;

const QUEUES: u32 = 4;

/// Runs `QUEUES` concurrent producers until the store stops answering.
async fn produce(store: &MessageStore, topic: &str, prefix: &str) -> Vec<Acked> {
    let mut tasks = Vec::new();
    for q in 0..QUEUES {
        let s = store.clone();
        let (topic, prefix) = (topic.to_owned(), format!("{prefix}{q}"));
        tasks.push(tokio::spawn(async move {
            produce_until_error(s, &topic, q, &prefix, 400).await
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked
}

async fn reopen_and_check(cfg: sluice_broker::store::StoreConfig, acked: &[Acked], topic: &str) {
    let store = MessageStore::open(cfg).await.unwrap();
    assert_acked_present(&store, acked);
    let recs = assert_queues_consistent(&store, topic, QUEUES);
    // Writing continues where each queue ends.
    for q in 0..QUEUES {
        let r = store
            .append(batch(topic, q, vec![msg(&format!("after-{q}"), b"x")]))
            .await
            .unwrap();
        assert_eq!(r.entries[0].queue_offset, recs[q as usize].len() as u64);
    }
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_crash_between_write_and_fsync_loses_no_acked_message() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.flush = FlushMode::Sync;
    let store = MessageStore::open(cfg.clone()).await.unwrap();
    // Some groups go through, then the writer dies after a write, before its fsync.
    fail::cfg("store::writer::after_write", "60*off->return").unwrap();
    let acked = produce(&store, "crash", "w").await;
    assert!(acked.len() >= 60, "only {} acked", acked.len());
    assert!(matches!(
        store
            .append(batch("crash", 0, vec![msg("late", b"x")]))
            .await,
        Err(StoreError::Closed)
    ));
    drop(store);
    fail::remove("store::writer::after_write");
    reopen_and_check(cfg, &acked, "crash").await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_crash_mid_record_truncates_the_torn_tail() {
    let scenario = FailScenario::setup();
    for mode in [FlushMode::Sync, FlushMode::Async] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.flush = mode;
        let store = MessageStore::open(cfg.clone()).await.unwrap();
        fail::cfg("store::writer::partial_write", "50*off->return").unwrap();
        let acked = produce(&store, "torn", "p").await;
        assert!(acked.len() >= 50);
        drop(store);
        fail::remove("store::writer::partial_write");
        reopen_and_check(cfg, &acked, "torn").await;
    }
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_checkpoint_keeps_the_old_one_and_rebuilds() {
    let scenario = FailScenario::setup();
    for fp in [
        "store::checkpoint::partial",
        "store::checkpoint::before_rename",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let store = MessageStore::open(cfg.clone()).await.unwrap();
        let mut acked = produce_until_error(store.clone(), "ck", 0, "a", 100).await;
        wait_visible(&store, "ck", 0, 100).await;
        let ckpt = dir.path().join("checkpoint");
        wait_for("a first checkpoint", || ckpt.exists()).await;
        let before = std::fs::read(&ckpt).unwrap();
        // The next checkpoint dies half way; the dispatcher stops with it.
        fail::cfg(fp, "return").unwrap();
        acked.extend(produce_until_error(store.clone(), "ck", 1, "b", 100).await);
        let tmp = dir.path().join("checkpoint.tmp");
        wait_for("the checkpoint crash", || tmp.exists()).await;
        acked.extend(produce_until_error(store.clone(), "ck", 2, "c", 50).await);
        assert_eq!(acked.len(), 250);
        drop(store);
        fail::remove(fp);
        assert_eq!(
            std::fs::read(&ckpt).unwrap(),
            before,
            "{fp}: old checkpoint replaced"
        );
        let store = MessageStore::open(cfg).await.unwrap();
        assert_acked_present(&store, &acked);
        assert_queues_consistent(&store, "ck", 3);
        store.shutdown().await.unwrap();
    }
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_error_is_reported_and_leaves_the_log_intact() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let mut acked = produce_until_error(store.clone(), "nospc", 0, "a", 20).await;
    // The disk fills up half way through the next write.
    fail::cfg("store::writer::enospc", "1*return").unwrap();
    let err = store
        .append(batch("nospc", 0, vec![msg("failed", &[1u8; 3000])]))
        .await
        .unwrap_err();
    match err {
        StoreError::Io(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    // The next append takes the failed one's place: same queue offset, same position.
    let next = store
        .append(batch("nospc", 0, vec![msg("ok", b"fine")]))
        .await
        .unwrap();
    assert_eq!(next.entries[0].queue_offset, 20);
    assert_eq!(
        next.entries[0].commit_log_offset,
        acked.last().map(|a| a.commit_log_offset).unwrap() + {
            let r = store
                .read_at(acked.last().unwrap().commit_log_offset)
                .unwrap();
            u64::from(r.store_size)
        }
    );
    acked.extend(produce_until_error(store.clone(), "nospc", 0, "b", 20).await);
    wait_visible(&store, "nospc", 0, 41).await;
    assert!(store.get_by_id("failed").unwrap().is_none());
    drop(store);
    fail::remove("store::writer::enospc");
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    assert_acked_present(&store, &acked);
    assert_eq!(assert_queues_consistent(&store, "nospc", 1)[0].len(), 41);
    store.shutdown().await.unwrap();
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_fsync_times_out_sync_appends() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.flush = FlushMode::Sync;
    cfg.sync_flush_timeout = std::time::Duration::from_millis(50);
    let store = MessageStore::open(cfg).await.unwrap();
    store
        .append(batch("slow", 0, vec![msg("a", b"1")]))
        .await
        .unwrap();
    fail::cfg("store::flusher::before_sync", "sleep(400)").unwrap();
    let err = store
        .append(batch("slow", 0, vec![msg("b", b"2")]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Timeout(_)), "{err:?}");
    fail::remove("store::flusher::before_sync");
    // The timed-out message was still written (as RocketMQ's FLUSH_DISK_TIMEOUT): it shows
    // up once flushed, and later appends work normally.
    let r = store
        .append(batch("slow", 0, vec![msg("c", b"3")]))
        .await
        .unwrap();
    assert_eq!(r.entries[0].queue_offset, 2);
    wait_visible(&store, "slow", 0, 3).await;
    store.shutdown().await.unwrap();
    scenario.teardown();
}
