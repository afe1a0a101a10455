//! Helpers shared by the store test files (included with `#[path]`; no tests of its own).
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use sluice_broker::store::{AppendBatch, AppendMessage, MessageStore, StoreConfig};

/// A config with small files and short intervals, so tests exercise rolls and run fast.
pub fn config(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.segment_size = 64 * 1024;
    c.max_message_size = 16 * 1024;
    c.cq_entries_per_file = 64;
    c.index_slots = 64;
    c.index_entries_per_file = 256;
    c.flush_interval = Duration::from_millis(20);
    c.checkpoint_interval = Duration::from_millis(50);
    c.retention_check_interval = Duration::from_secs(3600);
    c.store_host = "127.0.0.1:10911".into();
    // Independent of how full the machine's disk is.
    c.disk_budget_bytes = Some(1 << 30);
    c
}

pub fn msg(id: &str, body: &[u8]) -> AppendMessage {
    AppendMessage {
        message_id: id.to_owned(),
        body: Bytes::copy_from_slice(body),
        tag: "tagA".into(),
        keys: vec![format!("key-{id}")],
        properties: vec![("p".into(), id.to_owned())],
        born_timestamp_ms: 1,
        born_host: "10.0.0.1:1234".into(),
        ..Default::default()
    }
}

pub fn batch(topic: &str, queue_id: u32, msgs: Vec<AppendMessage>) -> AppendBatch {
    AppendBatch {
        topic: topic.to_owned(),
        queue_id,
        messages: msgs,
    }
}

/// Waits (bounded) until the queue's max offset reaches `n`.
pub async fn wait_visible(store: &MessageStore, topic: &str, queue_id: u32, n: u64) {
    let mut rx = store.subscribe_dispatched();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if store.queue_offsets(topic, queue_id).1 >= n {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "queue {topic}/{queue_id} did not reach {n}: {:?}",
            store.queue_offsets(topic, queue_id)
        );
        let _ = tokio::time::timeout(left, rx.changed()).await;
    }
}

/// Reads a whole queue from its min offset.
pub fn read_all(
    store: &MessageStore,
    topic: &str,
    queue_id: u32,
) -> Vec<sluice_broker::store::StoredRecord> {
    let (min, max) = store.queue_offsets(topic, queue_id);
    let mut out = Vec::new();
    let mut at = min;
    while at < max {
        let r = store
            .read_queue(topic, queue_id, at, 1000, usize::MAX)
            .unwrap();
        assert!(!r.records.is_empty());
        at = r.next_offset;
        out.extend(r.records);
    }
    out
}

/// What a producer was told about one message.
#[derive(Debug, Clone)]
pub struct Acked {
    pub id: String,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub commit_log_offset: u64,
    pub size: u32,
    pub body: Vec<u8>,
}

/// Appends one message per call until the store fails; returns what was acknowledged.
pub async fn produce_until_error(
    store: MessageStore,
    topic: &str,
    queue_id: u32,
    prefix: &str,
    limit: usize,
) -> Vec<Acked> {
    let mut acked = Vec::new();
    for i in 0..limit {
        let id = format!("{prefix}-{i}");
        let body = format!("body of {id} ").repeat(1 + i % 7).into_bytes();
        match store
            .append(batch(topic, queue_id, vec![msg(&id, &body)]))
            .await
        {
            Ok(r) => acked.push(Acked {
                id,
                topic: topic.to_owned(),
                queue_id,
                queue_offset: r.entries[0].queue_offset,
                commit_log_offset: r.entries[0].commit_log_offset,
                size: r.entries[0].size,
                body,
            }),
            Err(_) => break,
        }
    }
    acked
}

/// Every acknowledged message is readable by queue offset and by id, intact.
pub fn assert_acked_present(store: &MessageStore, acked: &[Acked]) {
    for a in acked {
        let r = store
            .read_queue(&a.topic, a.queue_id, a.queue_offset, 1, usize::MAX)
            .unwrap_or_else(|e| panic!("acked {} unreadable: {e}", a.id));
        assert_eq!(r.records.len(), 1, "acked {} missing", a.id);
        let rec = &r.records[0];
        assert_eq!(rec.message_id, a.id);
        assert_eq!(&rec.body[..], &a.body[..]);
        assert_eq!(rec.commit_log_offset, a.commit_log_offset);
        let by_id = store
            .get_by_id(&a.id)
            .unwrap()
            .expect("acked message not in the index");
        assert_eq!(by_id.commit_log_offset, a.commit_log_offset);
    }
}

/// Consume queues match the commit log: each queue is contiguous, every entry resolves to an
/// intact record of that queue and offset. Returns the records per queue.
pub fn assert_queues_consistent(
    store: &MessageStore,
    topic: &str,
    queues: u32,
) -> Vec<Vec<sluice_broker::store::StoredRecord>> {
    let mut all = Vec::new();
    for q in 0..queues {
        let (min, max) = store.queue_offsets(topic, q);
        let recs = read_all(store, topic, q);
        assert_eq!(recs.len() as u64, max - min, "queue {q} has holes");
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.queue_offset, min + i as u64);
            assert_eq!((r.topic.as_str(), r.queue_id), (topic, q));
            assert_eq!(crc32c::crc32c(&r.body), r.body_crc);
            assert_eq!(store.read_at(r.commit_log_offset).unwrap(), *r);
        }
        all.push(recs);
    }
    all
}

/// Waits (bounded) for a condition that the store reaches on its own.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (bounded) until everything written is dispatched.
pub async fn wait_all_dispatched(store: &MessageStore) {
    let mut rx = store.subscribe_dispatched();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let end = store.commit_log_range().1;
        if *rx.borrow_and_update() >= end {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "dispatch did not reach {end}");
        let _ = tokio::time::timeout(left, rx.changed()).await;
    }
}

/// Files in a directory tree.
pub fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += count_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}
