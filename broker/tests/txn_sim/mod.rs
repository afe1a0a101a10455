//! The transaction simulation's model: entries (a half send, an end with its copies, a check
//! round) encoded around the broker's real state ops, and a replica's real state machine fed
//! from what it applied.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use sluice_broker::meta::MemMeta;
use sluice_broker::state::transactions::{self as table, checked_op, half_op, resolve_op, OPEN};
use sluice_broker::state::{decode_op, Applied, StateMachine};
use sluice_proto::v1::TxHalfOp;
use tokio::sync::Notify;

use super::raft_sim::Cluster;

pub const GROUP: &str = "orders-service";

/// A half send: its id and transaction, then the op (`attempt` tells a retry's copy apart, as
/// its store time does in the broker). An end: the copies' half ids, then the op.
pub fn half_entry(half: u64, tx: &str, attempt: u64) -> Bytes {
    let op = half_op(TxHalfOp {
        transaction_id: tx.into(),
        producer_group: GROUP.into(),
        topic: "orders".into(),
        queue_id: 0,
        locator: 0,
        count: 1,
        bytes: 10,
        at_ms: 1 + attempt as i64,
        first_message_id: format!("h{half}"),
    });
    let mut b = BytesMut::new();
    b.put_u8(b'H');
    b.put_u64(half);
    b.put_slice(&op.encode_to_vec());
    b.freeze()
}

pub fn end_entry(tx: &str, resolution: i32, copies: &[u64]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'E');
    b.put_u32(copies.len() as u32);
    for c in copies {
        b.put_u64(*c);
    }
    b.put_slice(&resolve_op(tx, resolution, 2).encode_to_vec());
    b.freeze()
}

pub fn checked_entry(ids: Vec<String>, at: i64) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'K');
    b.put_slice(&checked_op(ids, at, 1_000).encode_to_vec());
    b.freeze()
}

pub enum Entry {
    Half(u64, sluice_broker::state::StateOp),
    End(Vec<u64>, sluice_broker::state::StateOp),
    Checked(sluice_broker::state::StateOp),
}

pub fn decode(d: &[u8]) -> Option<Entry> {
    let (&kind, rest) = d.split_first()?;
    let u64_at = |b: &[u8], i: usize| -> Option<u64> {
        Some(u64::from_be_bytes(b.get(i..i + 8)?.try_into().ok()?))
    };
    match kind {
        b'H' => Some(Entry::Half(u64_at(rest, 0)?, decode_op(rest.get(8..)?)?)),
        b'E' => {
            let n = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let copies = (0..n)
                .map(|i| u64_at(rest, 4 + 8 * i))
                .collect::<Option<Vec<u64>>>()?;
            Some(Entry::End(copies, decode_op(rest.get(4 + 8 * n..)?)?))
        }
        b'K' => Some(Entry::Checked(decode_op(rest)?)),
        _ => None,
    }
}

pub fn tx_of(op: &sluice_broker::state::StateOp) -> Option<(String, i32)> {
    use sluice_proto::v1::meta_op::Op;
    match &op.op {
        Some(Op::TxHalf(h)) => Some((h.transaction_id.clone(), OPEN)),
        Some(Op::TxResolve(r)) => Some((r.transaction_id.clone(), r.resolution)),
        _ => None,
    }
}

/// A replica's real state machine, fed from what it applied.
pub struct Replica {
    pub sm: StateMachine,
    cursor: usize,
    /// Half ids each transaction took while open (from the apply results).
    pub halves: HashMap<String, Vec<u64>>,
}

impl Replica {
    pub fn new() -> Replica {
        Replica {
            sm: StateMachine::open(Arc::new(MemMeta::default()), Arc::new(Notify::new()))
                .expect("a fresh state machine"),
            cursor: 0,
            halves: HashMap::new(),
        }
    }

    pub fn catch_up(&mut self, c: &Cluster, id: u64) -> Result<(), String> {
        let entries = &c.recorder(id).entries;
        while let Some(e) = entries.get(self.cursor) {
            self.cursor += 1;
            let Some(entry) = decode(&e.data) else {
                continue;
            };
            let (op, half) = match entry {
                Entry::Half(h, mut op) => {
                    // The applier sets the locator from the entry, as the broker's does.
                    if let Some(sluice_proto::v1::meta_op::Op::TxHalf(x)) = op.op.as_mut() {
                        x.locator = e.index;
                    }
                    (op, Some(h))
                }
                Entry::End(_, op) | Entry::Checked(op) => (op, None),
            };
            let r = self
                .sm
                .apply(Some(e.index), std::slice::from_ref(&op), false)
                .map_err(|err| format!("replica {id} failed to apply {}: {err}", e.index))?;
            if let (Some(h), Some((tx, _)), Some(Applied::Changed)) = (half, tx_of(&op), r.first())
            {
                self.halves.entry(tx).or_default().push(h);
            }
        }
        Ok(())
    }

    pub fn record(&self, tx: &str) -> Option<sluice_proto::v1::TxRecord> {
        table::get(self.sm.meta().as_ref(), &self.sm.tx_ended, tx)
            .ok()
            .flatten()
    }

    pub fn tables(&self) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = table::list(self.sm.meta().as_ref(), &self.sm.tx_ended)
            .unwrap_or_default()
            .into_iter()
            .map(|(id, r)| (id, r.encode_to_vec()))
            .collect();
        v.sort();
        v
    }
}
