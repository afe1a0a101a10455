use std::sync::Arc;

use proptest::prelude::*;
use sluice_proto::v1::{TxHalfOp, TxResolveOp};
use tokio::sync::Notify;

use super::*;
use crate::meta::MemMeta;
use crate::state::transactions::{self as table, COMMITTED, OPEN, ROLLED_BACK};
use crate::state::{StateMachine, StateOp};

const IDS: &[&str] = &["a", "b", "c", "d", "e", "f"];

fn machine(meta: Arc<MemMeta>) -> StateMachine {
    StateMachine::open(meta, Arc::new(Notify::new())).unwrap()
}

fn half(id: &str, at: i64) -> StateOp {
    table::half_op(TxHalfOp {
        transaction_id: id.into(),
        producer_group: "g".into(),
        topic: "t".into(),
        queue_id: 1,
        locator: at as u64,
        count: 1,
        bytes: 10,
        at_ms: at,
        first_message_id: format!("m{at}"),
    })
}

fn end(id: &str, resolution: i32, at: i64) -> TxResolveOp {
    TxResolveOp {
        transaction_id: id.into(),
        resolution,
        at_ms: at,
        expired: false,
    }
}

/// What the state must answer, kept the plain way: chunks by 10 ms of resolution time.
#[derive(Default)]
struct Model {
    open: Vec<String>,
    chunks: std::collections::BTreeMap<i64, (Vec<(String, i32)>, i64)>,
}

impl Model {
    fn resolved(&self, id: &str) -> Option<i32> {
        self.chunks
            .values()
            .flat_map(|(c, _)| c.iter())
            .find(|(i, _)| i == id)
            .map(|(_, r)| *r)
    }

    fn apply(&mut self, op: &StateOp) {
        use sluice_proto::v1::meta_op::Op;
        match &op.op {
            Some(Op::TxHalf(h)) => {
                let id = h.transaction_id.clone();
                if self.resolved(&id).is_none() && !self.open.contains(&id) {
                    self.open.push(id);
                }
            }
            Some(Op::TxResolve(r)) => self.ends(std::slice::from_ref(r)),
            Some(Op::TxEnds(e)) => self.ends(&e.ends),
            Some(Op::TxForget(f)) => {
                self.chunks
                    .retain(|_, (_, newest)| *newest >= f.resolved_before_ms);
                if f.keep_at_most > 0 {
                    while self
                        .chunks
                        .values()
                        .map(|(c, _)| c.len() as u64)
                        .sum::<u64>()
                        > f.keep_at_most
                    {
                        self.chunks.pop_first();
                    }
                }
            }
            _ => {}
        }
    }

    fn ends(&mut self, ends: &[TxResolveOp]) {
        for e in ends {
            let id = e.transaction_id.clone();
            if !self.open.contains(&id) && self.resolved(&id).is_some() {
                continue;
            }
            self.open.retain(|o| *o != id);
            let c = self
                .chunks
                .entry(e.at_ms.max(0) / 10)
                .or_insert_with(|| (Vec::new(), i64::MIN));
            c.0.push((id, e.resolution));
            c.1 = c.1.max(e.at_ms);
        }
    }
}

fn op_strategy() -> impl Strategy<Value = StateOp> {
    let id = prop::sample::select(IDS.to_vec());
    let resolution = prop::sample::select(vec![COMMITTED, ROLLED_BACK]);
    prop_oneof![
        3 => (id.clone(), 0i64..100).prop_map(|(i, at)| half(i, at)),
        // A clock before the epoch too: it must not change what a forget keeps.
        2 => (id.clone(), resolution.clone(), -20i64..100)
            .prop_map(|(i, r, at)| table::resolve_op(i, r, at)),
        2 => (prop::collection::vec((id, resolution), 0..4), -20i64..100).prop_map(|(e, at)| {
            table::ends_op(e.into_iter().map(|(i, r)| end(i, r, at)).collect())
        }),
        1 => (-20i64..100, 0u64..4).prop_map(|(at, keep)| table::forget_op(at, keep)),
    ]
}

fn answers(m: &StateMachine) -> Vec<(String, Option<i32>)> {
    IDS.iter()
        .map(|id| {
            let r = table::get(m.meta().as_ref(), &m.tx_ended, id).unwrap();
            (id.to_string(), r.map(|r| r.resolution))
        })
        .collect()
}

proptest! {
    /// Whatever the ops and however they are grouped into apply calls (and whether ids
    /// collide in memory), the state answers as the model does, and so does an index loaded
    /// afresh from the table or a replica restored from a snapshot.
    #[test]
    fn resolved_transactions_are_found_until_forgotten(
        ops in prop::collection::vec(op_strategy(), 0..40),
        per_call in 1usize..4,
        collide in prop::bool::ANY,
    ) {
        let meta = Arc::new(MemMeta::default());
        let mut m = machine(meta.clone());
        if collide {
            m.tx_ended = EndedIndex::colliding(meta.as_ref()).unwrap();
        }
        let mut model = Model::default();
        for (n, call) in ops.chunks(per_call).enumerate() {
            m.apply(Some(n as u64 + 1), call, false).unwrap();
            call.iter().for_each(|op| model.apply(op));
            let want: Vec<(String, Option<i32>)> = IDS
                .iter()
                .map(|id| {
                    let r = match model.open.iter().any(|o| o == id) {
                        true => Some(OPEN),
                        false => model.resolved(id),
                    };
                    (id.to_string(), r)
                })
                .collect();
            prop_assert_eq!(answers(&m), want);
            let kept: u64 = model.chunks.values().map(|(c, _)| c.len() as u64).sum();
            prop_assert_eq!(m.tx_ended.len(), kept);
        }
        let fresh = machine(meta.clone());
        prop_assert_eq!(answers(&fresh), answers(&m));
        let twin = machine(Arc::new(MemMeta::default()));
        twin.restore(&m.dump().unwrap()).unwrap();
        prop_assert_eq!(answers(&twin), answers(&m));
        let mut listed: Vec<String> = m
            .tx_ended
            .list(m.meta().as_ref())
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        listed.sort();
        let mut want: Vec<String> = model
            .chunks
            .values()
            .flat_map(|(c, _)| c.iter().map(|(i, _)| i.clone()))
            .collect();
        want.sort();
        prop_assert_eq!(listed, want);
    }
}

#[test]
fn ends_of_one_bucket_are_one_key_and_keep_topics_and_sizes() {
    let m = machine(Arc::new(MemMeta::default()));
    m.apply(Some(1), &[half("a", 1), half("b", 2)], false)
        .unwrap();
    let ends = table::ends_op(vec![
        end("a", COMMITTED, 5),
        end("b", ROLLED_BACK, 5),
        end("a", ROLLED_BACK, 5),
    ]);
    m.apply(Some(2), &[ends], false).unwrap();
    // Another entry resolving in the same 10 ms adds to the same key.
    m.apply(Some(3), &[table::resolve_op("c", ROLLED_BACK, 9)], false)
        .unwrap();
    let keys = m.meta().scan_prefix(TREE, &table_key(TABLE, b"")).unwrap();
    assert_eq!(keys.len(), 1, "one chunk for 10 ms");
    assert_eq!(decode_chunk(&keys[0].1).unwrap().ends.len(), 3);
    let a = table::get(m.meta().as_ref(), &m.tx_ended, "a")
        .unwrap()
        .unwrap();
    assert_eq!((a.resolution, a.resolved_ms), (COMMITTED, 5));
    let h = &a.halves[0];
    assert_eq!(
        (h.topic.as_str(), h.queue_id, h.count, h.bytes),
        ("t", 1, 1, 10)
    );
    assert_eq!(
        h.locator, 0,
        "where a resolved one's halves were is not kept"
    );
    assert!(m.tx_open.is_empty());
}

#[test]
fn records_of_earlier_builds_are_found_and_forgotten_by_time() {
    let meta = Arc::new(MemMeta::default());
    let old = sluice_proto::v1::TxRecord {
        producer_group: "g".into(),
        resolution: COMMITTED,
        resolved_ms: 50,
        ..Default::default()
    };
    meta.put(TREE, &legacy_key("old"), &old.encode_to_vec())
        .unwrap();
    let m = machine(meta);
    let got = |m: &StateMachine| table::get(m.meta().as_ref(), &m.tx_ended, "old").unwrap();
    assert_eq!(got(&m).map(|r| r.resolution), Some(COMMITTED));
    // A late half of it is ignored, as for any resolved one.
    m.apply(Some(1), &[half("old", 60)], false).unwrap();
    assert!(m.tx_open.is_empty());
    m.apply(Some(2), &[table::forget_op(50, 0)], false).unwrap();
    assert!(got(&m).is_some(), "not before the cutoff yet");
    m.apply(Some(3), &[table::forget_op(51, 0)], false).unwrap();
    assert!(got(&m).is_none());
    assert!(m.tx_ended.is_empty());
}

/// Three chunks of 3, 2 and 4 resolved transactions (`t{chunk}-{k}`), at entries 1 to 3.
fn three_chunks() -> StateMachine {
    let m = machine(Arc::new(MemMeta::default()));
    for (i, n) in [3usize, 2, 4].into_iter().enumerate() {
        let ends = (0..n)
            .map(|k| end(&format!("t{i}-{k}"), COMMITTED, 10 + 10 * i as i64))
            .collect();
        m.apply(Some(i as u64 + 1), &[table::ends_op(ends)], false)
            .unwrap();
    }
    m
}

#[test]
fn the_count_limit_forgets_whole_chunks_oldest_first() {
    let m = three_chunks();
    assert_eq!(m.tx_ended.len(), 9);
    m.apply(Some(4), &[table::forget_op(0, 6)], false).unwrap();
    assert_eq!(m.tx_ended.len(), 6, "the first chunk (3) went");
    let found = |id: &str| {
        table::get(m.meta().as_ref(), &m.tx_ended, id)
            .unwrap()
            .is_some()
    };
    assert!(!found("t0-0") && found("t1-0") && found("t2-3"));
    assert!(!m.tx_ended.would_forget(0, 6));
    assert!(
        m.tx_ended.would_forget(21, 0),
        "the second chunk is older than 21"
    );
}

#[test]
fn forgetting_a_burst_gives_the_index_memory_back() {
    let m = machine(Arc::new(MemMeta::default()));
    let ends = (0..4096)
        .map(|k| end(&format!("b{k}"), COMMITTED, 10))
        .collect();
    m.apply(Some(1), &[table::ends_op(ends)], false).unwrap();
    m.apply(
        Some(2),
        &[table::ends_op(vec![end("late", COMMITTED, 100)])],
        false,
    )
    .unwrap();
    let grown = m.tx_ended.inner.lock().places.capacity();
    assert!(grown >= 4097);
    m.apply(Some(3), &[table::forget_op(50, 0)], false).unwrap();
    assert_eq!(m.tx_ended.len(), 1);
    assert!(m.tx_ended.inner.lock().places.capacity() < grown / 4);
}

#[test]
fn a_listing_of_the_newest_reads_the_newest_chunks_only() {
    let m = three_chunks();
    let ids = |limit| -> Vec<String> {
        m.tx_ended
            .newest(m.meta().as_ref(), limit)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    };
    assert_eq!(ids(2), ["t2-3", "t2-2"]);
    assert_eq!(ids(5), ["t2-3", "t2-2", "t2-1", "t2-0", "t1-1"]);
    assert_eq!(ids(100).len(), 9);
    assert!(ids(0).is_empty());
}
