//! Recovery from damaged files: random corruption and truncation of the tail segment, torn
//! consume queues, a lost checkpoint, an unfinished segment roll.

#[path = "store_util.rs"]
mod util;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use sluice_broker::store::{MessageStore, StoreConfig};
use util::*;

/// Checkpoints only at shutdown, so a dropped store leaves a log to scan from the start.
fn no_checkpoint_config(dir: &Path) -> StoreConfig {
    let mut c = small_segments(dir);
    c.checkpoint_interval = Duration::from_secs(3600);
    c
}

/// 16 KiB segments: the fills below span several.
fn small_segments(dir: &Path) -> StoreConfig {
    let mut c = config(dir);
    c.segment_size = 16 * 1024;
    c
}

fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_str().unwrap().parse().unwrap(), e.path())
        })
        .collect();
    v.sort();
    v
}

async fn fill(store: &MessageStore, topic: &str, n: usize) -> Vec<Acked> {
    let mut acked = Vec::new();
    for q in 0..2u32 {
        acked.extend(produce_until_error(store.clone(), topic, q, &format!("q{q}"), n).await);
    }
    acked.sort_by_key(|a| a.commit_log_offset);
    acked
}

#[tokio::test]
async fn random_tail_damage_is_cut_and_never_served() {
    for seed in 0..24u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let cfg = no_checkpoint_config(dir.path());
        let store = MessageStore::open(cfg.clone()).await.unwrap();
        let acked = fill(&store, "dmg", 150).await;
        drop(store);

        let segs = segments(dir.path());
        let (base, path) = segs.last().unwrap().clone();
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(
            segs.len() > 2 && len > 0,
            "seed {seed}: want a multi-segment log"
        );
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let first_bad = match seed % 3 {
            0 => {
                // Flip a few random bytes in the tail segment.
                let mut min = u64::MAX;
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..len);
                    let mut b = [0u8; 1];
                    std::os::unix::fs::FileExt::read_at(
                        &std::fs::File::open(&path).unwrap(),
                        &mut b,
                        at,
                    )
                    .unwrap();
                    b[0] ^= rng.gen_range(1..=255u8);
                    file.write_at(&b, at).unwrap();
                    min = min.min(at);
                }
                base + min
            }
            1 => {
                let cut = rng.gen_range(0..len);
                file.set_len(cut).unwrap();
                base + cut
            }
            _ => {
                // Garbage after the last record (a torn append).
                let junk: Vec<u8> = (0..rng.gen_range(1..300)).map(|_| rng.gen()).collect();
                file.write_at(&junk, len).unwrap();
                base + len
            }
        };
        drop(file);

        let store = MessageStore::open(cfg).await.unwrap();
        let survivors: Vec<&Acked> = acked
            .iter()
            .filter(|a| a.commit_log_offset + u64::from(a.size) <= first_bad)
            .collect();
        assert!(
            store.commit_log_range().1 <= first_bad,
            "seed {seed}: damaged bytes kept"
        );
        let recs = assert_queues_consistent(&store, "dmg", 2);
        for q in 0..2u32 {
            let want: Vec<&str> = survivors
                .iter()
                .filter(|a| a.queue_id == q)
                .map(|a| a.id.as_str())
                .collect();
            let got: Vec<&str> = recs[q as usize]
                .iter()
                .map(|r| r.message_id.as_str())
                .collect();
            assert_eq!(got, want, "seed {seed} queue {q}");
        }
        let lost = acked
            .iter()
            .find(|a| a.commit_log_offset + u64::from(a.size) > first_bad);
        if let Some(lost) = lost {
            assert!(
                store.get_by_id(&lost.id).unwrap().is_none(),
                "seed {seed}: index serves a cut record"
            );
        }
        let r = store
            .append(batch("dmg", 1, vec![msg("after", b"x")]))
            .await
            .unwrap();
        assert_eq!(
            r.entries[0].queue_offset,
            recs[1].len() as u64,
            "seed {seed}"
        );
        store.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn torn_consume_queues_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let store = MessageStore::open(cfg.clone()).await.unwrap();
    let acked = fill(&store, "cq", 200).await;
    store.shutdown().await.unwrap();
    drop(store);

    // Queue 0: a torn tail: the newest file ends in the middle of an entry and the page
    // before it never made it to disk (zeros).
    let q0 = dir.path().join("consumequeue/cq/0");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&q0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let last = files.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    let f = OpenOptions::new().write(true).open(last).unwrap();
    f.set_len(len - 45).unwrap();
    f.write_at(&[0u8; 96], len - 45 - 96 - 13).unwrap();
    drop(f);
    // Queue 1: its files are gone altogether.
    std::fs::remove_dir_all(dir.path().join("consumequeue/cq/1")).unwrap();

    let store = MessageStore::open(cfg).await.unwrap();
    assert_eq!(store.queue_offsets("cq", 0), (0, 200));
    assert_eq!(store.queue_offsets("cq", 1), (0, 200));
    assert_acked_present(&store, &acked);
    assert_queues_consistent(&store, "cq", 2);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn lost_checkpoint_and_index_rebuild_everything() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_segments(dir.path());
    let store = MessageStore::open(cfg.clone()).await.unwrap();
    let acked = fill(&store, "ck", 120).await;
    store.shutdown().await.unwrap();
    drop(store);
    std::fs::write(dir.path().join("checkpoint"), b"garbage").unwrap();
    let idx = dir.path().join("index");
    for e in std::fs::read_dir(&idx).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let store = MessageStore::open(cfg).await.unwrap();
    assert_acked_present(&store, &acked);
    assert_queues_consistent(&store, "ck", 2);
    assert_eq!(store.find_by_key("ck", "key-q1-7", 10).unwrap().len(), 1);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn unfinished_segment_roll_is_completed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = no_checkpoint_config(dir.path());
    let store = MessageStore::open(cfg.clone()).await.unwrap();
    let acked = fill(&store, "roll", 100).await;
    drop(store);
    // As if the crash hit after the filler was written but before the new segment existed.
    let segs = segments(dir.path());
    let (base, path) = segs.last().unwrap().clone();
    std::fs::remove_file(path).unwrap();
    let store = MessageStore::open(cfg).await.unwrap();
    let survivors: Vec<&Acked> = acked
        .iter()
        .filter(|a| a.commit_log_offset < base)
        .collect();
    let recs = assert_queues_consistent(&store, "roll", 2);
    assert_eq!(recs[0].len() + recs[1].len(), survivors.len());
    assert!(
        store.commit_log_range().1 < base,
        "the dangling filler is cut"
    );
    // New writes roll into a fresh segment at the same base.
    for i in 0..40 {
        store
            .append(batch("roll", 0, vec![msg(&format!("n{i}"), &[3u8; 2000])]))
            .await
            .unwrap();
    }
    wait_all_dispatched(&store).await;
    assert!(store.commit_log_range().1 > base);
    assert_queues_consistent(&store, "roll", 2);
    store.shutdown().await.unwrap();
}
