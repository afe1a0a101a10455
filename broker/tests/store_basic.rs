//! Store API end to end: append, read, offsets, restart, rolls, lookups, truncation, modes.

#[path = "store_util.rs"]
mod util;

use std::time::Duration;

use sluice_broker::store::{ConfirmMode, FlushMode, MessageStore, StoreError};
use util::*;

#[tokio::test]
async fn append_assigns_offsets_per_queue_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let r = store
        .append(batch("t1", 0, vec![msg("a", b"one"), msg("b", b"two")]))
        .await
        .unwrap();
    assert_eq!(
        r.entries.iter().map(|e| e.queue_offset).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert_eq!(
        r.entries[1].commit_log_offset,
        r.entries[0].commit_log_offset + u64::from(r.entries[0].size)
    );
    let r2 = store
        .append(batch("t1", 1, vec![msg("c", b"three")]))
        .await
        .unwrap();
    assert_eq!(r2.entries[0].queue_offset, 0);
    let r3 = store
        .append(batch("t1", 0, vec![msg("d", b"four")]))
        .await
        .unwrap();
    assert_eq!(r3.entries[0].queue_offset, 2);
    wait_visible(&store, "t1", 0, 3).await;
    wait_visible(&store, "t1", 1, 1).await;

    let read = store.read_queue("t1", 0, 0, 10, usize::MAX).unwrap();
    assert_eq!(read.records.len(), 3);
    assert_eq!(
        (read.next_offset, read.min_offset, read.max_offset),
        (3, 0, 3)
    );
    let bodies: Vec<&[u8]> = read.records.iter().map(|r| &r.body[..]).collect();
    assert_eq!(bodies, vec![&b"one"[..], b"two", b"four"]);
    let rec = &read.records[0];
    assert_eq!(rec.topic, "t1");
    assert_eq!(rec.message_id, "a");
    assert_eq!(rec.tag, "tagA");
    assert_eq!(rec.keys, vec!["key-a"]);
    assert_eq!(rec.properties, vec![("p".to_string(), "a".to_string())]);
    assert_eq!(rec.born_host, "10.0.0.1:1234");
    assert_eq!(rec.store_host, "127.0.0.1:10911");
    assert_eq!(rec.store_timestamp_ms, r.store_timestamp_ms);
    assert_eq!(rec.body_crc, crc32c::crc32c(b"one"));
    assert_eq!(store.read_at(rec.commit_log_offset).unwrap(), *rec);

    // Bounds: count, bytes (at least one), offsets.
    assert_eq!(
        store
            .read_queue("t1", 0, 1, 1, usize::MAX)
            .unwrap()
            .records
            .len(),
        1
    );
    assert_eq!(
        store.read_queue("t1", 0, 0, 10, 1).unwrap().records.len(),
        1
    );
    let end = store.read_queue("t1", 0, 3, 10, usize::MAX).unwrap();
    assert!(end.records.is_empty());
    assert_eq!(end.next_offset, 3);
    assert!(matches!(
        store.read_queue("t1", 0, 4, 10, usize::MAX),
        Err(StoreError::OffsetOutOfRange {
            offset: 4,
            min: 0,
            max: 3
        })
    ));
    assert_eq!(store.queue_offsets("nope", 0), (0, 0));
    assert!(store
        .read_queue("nope", 0, 0, 10, 100)
        .unwrap()
        .records
        .is_empty());
    assert!(store.read_at(rec.commit_log_offset + 1).is_err());
    store.shutdown().await.unwrap();
    assert!(matches!(
        store.append(batch("t1", 0, vec![msg("x", b"x")])).await,
        Err(StoreError::Closed)
    ));
}

#[tokio::test]
async fn bad_input_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let err = |r: Result<_, StoreError>| r.err().unwrap();
    assert!(matches!(
        err(store.append(batch("", 0, vec![msg("a", b"x")])).await),
        StoreError::Invalid(_)
    ));
    assert!(matches!(
        err(store.append(batch("a/b", 0, vec![msg("a", b"x")])).await),
        StoreError::Invalid(_)
    ));
    assert!(matches!(
        err(store.append(batch("t", 0, vec![])).await),
        StoreError::Invalid(_)
    ));
    assert!(matches!(
        err(store.append(batch("t", 0, vec![msg("", b"x")])).await),
        StoreError::Invalid(_)
    ));
    let big = vec![0u8; 16 * 1024 + 1];
    assert!(matches!(
        err(store.append(batch("t", 0, vec![msg("a", &big)])).await),
        StoreError::MessageTooLarge { .. }
    ));
    // Properties count too.
    let mut m = msg("a", &vec![0u8; 16 * 1024 - 10]);
    m.properties.push(("k".into(), "v".repeat(100)));
    assert!(matches!(
        err(store.append(batch("t", 0, vec![m])).await),
        StoreError::MessageTooLarge { .. }
    ));
    // A batch larger than a segment cannot be stored contiguously.
    let many = (0..8)
        .map(|i| msg(&format!("m{i}"), &vec![1u8; 12 * 1024]))
        .collect();
    assert!(matches!(
        err(store.append(batch("t", 0, many)).await),
        StoreError::MessageTooLarge { .. }
    ));
    // Nothing was stored.
    assert_eq!(store.commit_log_range(), (0, 0));
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn restart_keeps_data_and_offsets_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let body = vec![7u8; 3000];
    {
        let store = MessageStore::open(config(dir.path())).await.unwrap();
        for i in 0..100 {
            store
                .append(batch("roll", i % 3, vec![msg(&format!("m{i}"), &body)]))
                .await
                .unwrap();
        }
        wait_visible(&store, "roll", 0, 34).await;
        let (min, max) = store.commit_log_range();
        assert_eq!(min, 0);
        assert!(
            max > 4 * 64 * 1024,
            "expected several segments, log ends at {max}"
        );
        store.shutdown().await.unwrap();
    }
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    assert_eq!(store.queue_offsets("roll", 0), (0, 34));
    assert_eq!(store.queue_offsets("roll", 1), (0, 33));
    let recs = read_all(&store, "roll", 2);
    assert_eq!(recs.len(), 33);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.queue_offset, i as u64);
        assert_eq!(r.message_id, format!("m{}", i * 3 + 2));
        assert_eq!(&r.body[..], &body[..]);
    }
    let r = store
        .append(batch("roll", 1, vec![msg("new", b"x")]))
        .await
        .unwrap();
    assert_eq!(r.entries[0].queue_offset, 33);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn lookups_by_id_key_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let t0 = store
        .append(batch("idx", 0, vec![msg("first", b"1")]))
        .await
        .unwrap()
        .store_timestamp_ms;
    // Enough entries to fill several index files (256 entries each, 2 per message).
    for i in 0..400 {
        let mut m = msg(&format!("id{i}"), b"body");
        m.keys = vec![format!("k{}", i % 10), "common".into()];
        store.append(batch("idx", i % 2, vec![m])).await.unwrap();
    }
    wait_visible(&store, "idx", 1, 200).await;
    let got = store.get_by_id("id123").unwrap().unwrap();
    assert_eq!(got.message_id, "id123");
    assert_eq!(got.queue_id, 1);
    assert!(store.get_by_id("missing").unwrap().is_none());
    let k3 = store.find_by_key("idx", "k3", 100).unwrap();
    assert_eq!(k3.len(), 40);
    assert!(
        k3.windows(2)
            .all(|w| w[0].commit_log_offset > w[1].commit_log_offset),
        "newest first"
    );
    assert!(k3.iter().all(|r| r.keys.contains(&"k3".to_string())));
    assert_eq!(store.find_by_key("idx", "common", 5).unwrap().len(), 5);
    assert_eq!(store.find_by_key("other", "k3", 100).unwrap().len(), 0);
    let all = store.find_by_time("idx", t0, i64::MAX, 1000).unwrap();
    assert_eq!(all.len(), 401);
    assert_eq!(all[0].message_id, "first");
    assert!(all
        .windows(2)
        .all(|w| w[0].store_timestamp_ms <= w[1].store_timestamp_ms));
    assert_eq!(store.find_by_time("idx", t0, i64::MAX, 7).unwrap().len(), 7);
    assert!(store.find_by_time("idx", 0, t0 - 1, 10).unwrap().is_empty());
    assert_eq!(store.offset_for_timestamp("idx", 0, t0), 0);
    assert_eq!(store.offset_for_timestamp("idx", 0, i64::MAX), 201);
    assert!(store.last_store_timestamp("idx", 0).unwrap() >= t0);
    assert_eq!(store.last_store_timestamp("none", 0), None);
    store.shutdown().await.unwrap();
    // The index survives a restart.
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    assert_eq!(store.get_by_id("id7").unwrap().unwrap().message_id, "id7");
    assert_eq!(store.find_by_key("idx", "k3", 100).unwrap().len(), 40);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn truncation_drops_records_entries_and_resets_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let mut offsets = Vec::new();
    for i in 0..60 {
        let r = store
            .append(batch(
                "tr",
                i % 2,
                vec![msg(&format!("m{i}"), &[i as u8; 2000])],
            ))
            .await
            .unwrap();
        offsets.push(r.entries[0].commit_log_offset);
    }
    wait_visible(&store, "tr", 1, 30).await;
    // Cut at message 41 (queue 1, offset 20).
    store.truncate_to(offsets[41]).await.unwrap();
    assert_eq!(store.queue_offsets("tr", 0), (0, 21));
    assert_eq!(store.queue_offsets("tr", 1), (0, 20));
    assert_eq!(store.commit_log_range().1, offsets[41]);
    assert!(store.get_by_id("m50").unwrap().is_none());
    assert!(store.get_by_id("m40").unwrap().is_some());
    assert!(store.find_by_key("tr", "key-m45", 10).unwrap().is_empty());
    assert!(matches!(
        store.truncate_to(offsets[10] + 1).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(store.truncate_to(offsets[41] + 1).await.is_err());
    let r = store
        .append(batch("tr", 1, vec![msg("again", b"z")]))
        .await
        .unwrap();
    assert_eq!(r.entries[0].queue_offset, 20);
    assert_eq!(r.entries[0].commit_log_offset, offsets[41]);
    wait_visible(&store, "tr", 1, 21).await;
    assert_eq!(
        store
            .read_queue("tr", 1, 20, 1, usize::MAX)
            .unwrap()
            .records[0]
            .message_id,
        "again"
    );
    store.shutdown().await.unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    assert_eq!(store.queue_offsets("tr", 1), (0, 21));
    assert_eq!(store.queue_offsets("tr", 0), (0, 21));
    assert_eq!(read_all(&store, "tr", 0).len(), 21);
    // Truncating everything.
    store.truncate_to(0).await.unwrap();
    assert_eq!(store.queue_offsets("tr", 0), (0, 0));
    assert_eq!(
        store
            .append(batch("tr", 0, vec![msg("z", b"z")]))
            .await
            .unwrap()
            .entries[0]
            .queue_offset,
        0
    );
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn sync_mode_acks_after_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.flush = FlushMode::Sync;
    let store = MessageStore::open(cfg.clone()).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..8u32 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                s.append(batch("sync", w, vec![msg(&format!("{w}-{i}"), b"data")]))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, end) = store.commit_log_range();
    assert_eq!(store.confirmed_offset(), end);
    wait_visible(&store, "sync", 7, 20).await;
    drop(store);
    let store = MessageStore::open(cfg).await.unwrap();
    for w in 0..8 {
        assert_eq!(store.queue_offsets("sync", w), (0, 20));
    }
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn external_confirmation_gates_visibility() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.confirm = ConfirmMode::External;
    let store = MessageStore::open(cfg.clone()).await.unwrap();
    let a = store
        .append(batch("c", 0, vec![msg("a", b"1"), msg("b", b"2")]))
        .await
        .unwrap();
    let b = store
        .append(batch("c", 0, vec![msg("c", b"3")]))
        .await
        .unwrap();
    assert_eq!(store.confirmed_offset(), 0);
    assert_eq!(store.queue_offsets("c", 0), (0, 0));
    assert!(store.read_at(a.entries[0].commit_log_offset).is_err());
    let end_a = a.entries[1].commit_log_offset + u64::from(a.entries[1].size);
    store.set_confirmed_offset(end_a);
    wait_visible(&store, "c", 0, 2).await;
    assert_eq!(store.queue_offsets("c", 0), (0, 2));
    // It never moves backwards.
    store.set_confirmed_offset(1);
    assert_eq!(store.confirmed_offset(), end_a);
    // A restart keeps unconfirmed records but does not show them; offsets continue.
    store.shutdown().await.unwrap();
    drop(store);
    let store = MessageStore::open(cfg).await.unwrap();
    assert_eq!(store.queue_offsets("c", 0), (0, 2));
    let d = store
        .append(batch("c", 0, vec![msg("d", b"4")]))
        .await
        .unwrap();
    assert_eq!(d.entries[0].queue_offset, 3);
    assert!(b.entries[0].commit_log_offset < d.entries[0].commit_log_offset);
    // Past the write position it is clamped.
    store.set_confirmed_offset(u64::MAX);
    assert_eq!(store.confirmed_offset(), store.commit_log_range().1);
    wait_visible(&store, "c", 0, 4).await;
    assert_eq!(
        read_all(&store, "c", 0)
            .iter()
            .map(|r| r.message_id.clone())
            .collect::<Vec<_>>(),
        ["a", "b", "c", "d"]
    );
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn dispatched_watch_and_directory_lock() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let mut rx = store.subscribe_dispatched();
    let before = *rx.borrow_and_update();
    store
        .append(batch("w", 0, vec![msg("a", b"1")]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(*rx.borrow() > before);
    assert!(
        MessageStore::open(config(dir.path())).await.is_err(),
        "second store on the same dir"
    );
    store.shutdown().await.unwrap();
    drop(store);
    MessageStore::open(config(dir.path()))
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
}

#[tokio::test]
async fn raw_reads_hand_out_the_stored_records_and_refuse_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let bodies: [&[u8]; 3] = [b"raw-one", b"raw-two", b"raw-three"];
    let msgs = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| msg(&format!("id-{i}"), b))
        .collect();
    store.append(batch("t1", 0, msgs)).await.unwrap();
    // Another queue in between, so the queue's records are not one run of the log.
    store
        .append(batch("t1", 1, vec![msg("other", b"x")]))
        .await
        .unwrap();
    store
        .append(batch("t1", 0, vec![msg("id-3", b"raw-four")]))
        .await
        .unwrap();
    wait_visible(&store, "t1", 0, 4).await;

    let decoded = store.read_queue("t1", 0, 0, 10, usize::MAX).unwrap();
    let raw = store.read_queue_raw("t1", 0, 0, 10, usize::MAX).unwrap();
    assert_eq!(
        (raw.next_offset, raw.min_offset, raw.max_offset),
        (decoded.next_offset, decoded.min_offset, decoded.max_offset)
    );
    assert_eq!(raw.records.len(), 4);
    for (r, d) in raw.records.iter().zip(&decoded.records) {
        assert_eq!(r.commit_log_offset, d.commit_log_offset);
        assert_eq!(r.bytes.len() as u32, d.store_size);
        let m = sluice_proto::record::message_of(&r.bytes).unwrap();
        assert_eq!(
            (m.message_id.as_str(), &m.body),
            (d.message_id.as_str(), &d.body)
        );
        assert_eq!((m.queue_id, m.queue_offset), (0, d.queue_offset));
        assert_eq!((m.tag.as_str(), &m.keys), (d.tag.as_str(), &d.keys));
    }
    // The same bounds as a decoded read: at least one record, then by count and bytes.
    assert_eq!(
        store
            .read_queue_raw("t1", 0, 1, 2, usize::MAX)
            .unwrap()
            .records
            .len(),
        2
    );
    assert_eq!(
        store
            .read_queue_raw("t1", 0, 0, 10, 1)
            .unwrap()
            .records
            .len(),
        1
    );
    assert!(matches!(
        store.read_queue_raw("t1", 0, 5, 1, usize::MAX),
        Err(StoreError::OffsetOutOfRange {
            offset: 5,
            min: 0,
            max: 4
        })
    ));

    // Flip a byte of the second record's body on disk: both reads refuse it, the first
    // record still reads.
    let seg = std::fs::read_dir(dir.path().join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read(p).is_ok_and(|b| b.windows(7).any(|w| w == b"raw-two")))
        .expect("segment holding the record");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.windows(7).position(|w| w == b"raw-two").unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    assert!(matches!(
        store.read_queue_raw("t1", 0, 1, 1, usize::MAX),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.read_queue("t1", 0, 1, 1, usize::MAX),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(
        store
            .read_queue_raw("t1", 0, 0, 1, usize::MAX)
            .unwrap()
            .records
            .len(),
        1
    );
}
