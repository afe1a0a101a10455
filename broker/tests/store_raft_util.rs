//! Helpers shared by the raft-mode store tests (included with `#[path]`; no tests of its own).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft::prelude::{Entry, EntryType};
use raft::{GetEntriesContext, Storage};
use sluice_broker::store::{
    encode_for_proposal, encode_meta_for_proposal, AppendBatch, AppendMessage, CommitLogRaft,
    ConfirmMode, MessageStore, StoreConfig,
};

#[path = "store_util.rs"]
mod util;
pub use util::*;

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Small files, raft mode.
pub fn raft_config(dir: &Path) -> StoreConfig {
    let mut c = config(dir);
    c.raft = true;
    c.confirm = ConfirmMode::External;
    c
}

pub fn open(rt: &tokio::runtime::Runtime, cfg: StoreConfig) -> (MessageStore, CommitLogRaft) {
    let store = rt.block_on(MessageStore::open(cfg)).unwrap();
    let log = store.raft_log().unwrap();
    (store, log)
}

/// Entry data for a send of `n` messages to `topic`/`queue`, ids prefixed by `id`.
pub fn send_data(topic: &str, queue: u32, id: &str, n: usize, body_len: usize) -> Bytes {
    let batch = AppendBatch {
        topic: topic.into(),
        queue_id: queue,
        messages: (0..n)
            .map(|i| AppendMessage {
                message_id: format!("{id}-{i}"),
                body: Bytes::from(vec![b'a' + (i % 26) as u8; body_len]),
                tag: "tag".into(),
                keys: vec![format!("key-{id}-{i}")],
                born_timestamp_ms: 1,
                born_host: "10.0.0.1:1".into(),
                ..Default::default()
            })
            .collect(),
    };
    encode_for_proposal(&batch, "10.0.0.9:10911", 1_000 + queue as i64).unwrap()
}

pub fn entry(index: u64, term: u64, data: Bytes) -> Entry {
    Entry {
        index,
        term,
        data,
        ..Default::default()
    }
}

/// A deterministic mix of entries `from..=to`: sends to four queues of two topics (some with
/// several messages), leader no-ops, metadata operations and a membership change.
pub fn mixed_entries(from: u64, to: u64, term: u64, tag: &str) -> Vec<Entry> {
    (from..=to)
        .map(|i| {
            let id = format!("{tag}{i}");
            match i % 7 {
                0 => entry(i, term, Bytes::new()),
                3 => entry(i, term, encode_meta_for_proposal(id.as_bytes(), "h", 5)),
                5 => {
                    let mut e = entry(i, term, Bytes::from_static(b"\x08\x02\x10\x04"));
                    e.set_entry_type(EntryType::EntryConfChange);
                    e
                }
                k => {
                    let topic = if i % 2 == 0 { "orders" } else { "events" };
                    let n = 1 + (k as usize % 3);
                    let body = 300 + (i as usize * 37) % 900;
                    entry(i, term, send_data(topic, (i % 3) as u32, &id, n, body))
                }
            }
        })
        .collect()
}

pub fn all_entries(log: &CommitLogRaft) -> Vec<Entry> {
    let (first, last) = (log.first_index().unwrap(), log.last_index().unwrap());
    log.entries(first, last + 1, None, GetEntriesContext::empty(false))
        .unwrap()
}

/// Index, term, type and data of entries, for comparisons.
pub fn summary(es: &[Entry]) -> Vec<(u64, u64, i32, Bytes)> {
    es.iter()
        .map(|e| (e.index, e.term, e.get_entry_type() as i32, e.data.clone()))
        .collect()
}

/// Makes entries up to `index` visible, as the broker's applier does.
pub fn confirm_through(store: &MessageStore, index: u64) {
    store.set_confirmed_offset(store.entry_end_offset(index).unwrap());
}

/// `(file name, bytes)` of every commit-log segment.
pub fn log_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let d: PathBuf = dir.join("commitlog");
    // Retention may delete a segment between the listing and the read: skip it then.
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            match std::fs::read(e.path()) {
                Ok(bytes) => Some((e.file_name().to_string_lossy().into_owned(), bytes)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(err) => panic!("reading {}: {err}", e.path().display()),
            }
        })
        .collect();
    out.sort();
    out
}
