//! A stand-in [`LogBackend`] until the commit log has its Raft mode: the Raft log lives in
//! memory ([`MemLogStore`]) and committed sends are appended to a standalone store. Not
//! durable across restarts (the Raft log is lost); only `ack = quorum` is supported.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;

use super::backend::{EntryCodec, LogBackend};
use super::io::{CommittedEntry, EntryKind};
use super::mem_store::MemLogStore;
use crate::store::record;
use crate::store::{AppendBatch, AppendMessage, Appended, MessageStore, StoreError};

const SEND: u8 = 0;
const META: u8 = 1;

#[derive(Clone)]
pub struct InterimBackend {
    store: MessageStore,
    host: String,
    rt: tokio::runtime::Handle,
    /// Results of applied sends, taken by the proposer.
    results: Arc<Mutex<HashMap<u64, Vec<Appended>>>>,
}

impl InterimBackend {
    pub fn new(store: MessageStore, host: &str) -> Self {
        InterimBackend {
            store,
            host: host.to_string(),
            rt: tokio::runtime::Handle::current(),
            results: Arc::default(),
        }
    }
}

fn corrupt(m: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        offset: 0,
        reason: m.into(),
    }
}

impl EntryCodec for InterimBackend {
    fn encode_send(&self, batch: &AppendBatch, _now_ms: i64) -> Result<Bytes, StoreError> {
        let mut buf = vec![SEND];
        for m in &batch.messages {
            record::encode(&mut buf, &batch.topic, batch.queue_id, m, &self.host)?;
        }
        Ok(buf.into())
    }

    fn encode_meta(&self, body: &[u8], _now_ms: i64) -> Bytes {
        let mut b = BytesMut::with_capacity(body.len() + 1);
        b.put_u8(META);
        b.put_slice(body);
        b.freeze()
    }

    fn entry_results(&self, index: u64) -> Result<Vec<Appended>, StoreError> {
        self.results
            .lock()
            .remove(&index)
            .ok_or_else(|| corrupt(format!("no results for entry {index}")))
    }
}

impl LogBackend for InterimBackend {
    type Log = MemLogStore;

    fn raft_log(&self) -> Result<MemLogStore, StoreError> {
        Ok(MemLogStore::new())
    }

    fn meta_bodies(&self, data: &[u8]) -> Result<Vec<Bytes>, StoreError> {
        match data.first() {
            Some(&META) => Ok(vec![Bytes::copy_from_slice(&data[1..])]),
            _ => Ok(Vec::new()),
        }
    }

    fn resume(&self, _applied: u64) -> Result<(), StoreError> {
        // The standalone store confirms its own writes.
        Ok(())
    }

    fn commit(&self, entries: &[CommittedEntry]) -> Result<(), StoreError> {
        for e in entries {
            if e.kind != EntryKind::Normal || e.data.first() != Some(&SEND) {
                continue;
            }
            let owner = e.data.slice(1..);
            let mut at = 0;
            let mut batch = AppendBatch::default();
            while at < owner.len() {
                let total = owner
                    .get(at..at + 4)
                    .map(|b| record::u32_at(b, 0) as usize)
                    .ok_or_else(|| corrupt("truncated record"))?;
                let raw = owner
                    .get(at..at + total)
                    .ok_or_else(|| corrupt("truncated record"))?;
                let view = record::parse(raw).map_err(corrupt)?;
                let r = view.to_stored(&owner, at);
                batch.topic = r.topic;
                batch.queue_id = r.queue_id;
                batch.messages.push(AppendMessage {
                    message_id: r.message_id,
                    body: r.body,
                    tag: r.tag,
                    keys: r.keys,
                    properties: r.properties,
                    flag: r.flag,
                    sys_flag: r.sys_flag,
                    born_timestamp_ms: r.born_timestamp_ms,
                    born_host: r.born_host,
                    reconsume_times: r.reconsume_times,
                    prepared_transaction_offset: r.prepared_transaction_offset,
                });
                at += total.max(1);
            }
            let appended = self.rt.block_on(self.store.append(batch))?;
            self.results.lock().insert(e.index, appended.entries);
        }
        // The store runs with an external confirmed offset (replicated mode): what was
        // appended here is committed.
        self.store
            .set_confirmed_offset(self.store.commit_log_range().1);
        Ok(())
    }

    fn commit_snapshot(&self, _index: u64) -> Result<(), StoreError> {
        Err(corrupt("the in-memory Raft log cannot install snapshots"))
    }
}
