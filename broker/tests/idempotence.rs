//! Idempotent sends on a standalone store: retries racing the first attempt are answered with
//! its positions and stored once, and a restart that lost the state's latest writes (what a
//! kill -9 does to the metadata store's buffer) finds the sequences again in the commit log.

#[path = "store_util.rs"]
mod util;

use std::sync::Arc;
use std::time::Duration;

use sluice_broker::messaging::idempotence::{Idempotence, Sequence};
use sluice_broker::messaging::standalone::recover as recover_standalone;
use sluice_broker::messaging::WritePath;
use sluice_broker::meta::{MemMeta, MetaStore};
use sluice_broker::state::producers::{self, Verdict};
use sluice_broker::state::StateMachine;
use sluice_broker::store::MessageStore;
use sluice_proto::props::SequenceMark;
use sluice_proto::ErrorCode;
use tokio::sync::Notify;
use util::*;

fn state() -> Arc<StateMachine> {
    let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
    Arc::new(StateMachine::open(meta, Arc::new(Notify::new())).unwrap())
}

/// What the broker does at start: reads the log written since the recorded point (and
/// records the first point on a new store).
fn started(store: &MessageStore, state: &Arc<StateMachine>) {
    recover_standalone(store, state).unwrap();
}

fn idempotence(store: &MessageStore, state: &Arc<StateMachine>) -> Arc<Idempotence> {
    let write = WritePath::standalone(store.clone(), state.clone());
    Idempotence::new(write, store.clone(), Duration::from_secs(5))
}

/// Every test of this binary holds the failpoint lock: one of them turns a failpoint on, which
/// would fail the others' writes.
#[cfg(feature = "failpoints")]
fn serial() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}

#[cfg(not(feature = "failpoints"))]
fn serial() {}

fn seq(pid: u64, base: u64) -> Sequence {
    Sequence {
        producer_id: pid,
        epoch: 0,
        base_sequence: base,
    }
}

fn messages(tag: &str, n: usize) -> Vec<sluice_broker::store::AppendMessage> {
    (0..n).map(|i| msg(&format!("{tag}-{i}"), b"x")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_are_answered_with_the_first_positions_and_stored_once() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let state = state();
    started(&store, &state);
    let idem = idempotence(&store, &state);
    let pid = idem.register("pg", 1).await.unwrap();
    for round in 0..20u64 {
        let tag = format!("b{round}");
        let tries: Vec<_> = (0..6)
            .map(|_| {
                let idem = idem.clone();
                let b = batch("t", 0, messages(&tag, 3));
                tokio::spawn(async move { idem.append(seq(pid, round * 3), "t", 0, b, 5).await })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tries {
            match t.await.unwrap() {
                Ok(s) => answers.push(s.entries),
                // A retry that found the first attempt in flight with other messages cannot
                // happen here: every try is the same batch.
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "round {round}: {answers:?}"
        );
    }
    wait_visible(&store, "t", 0, 60).await;
    assert_eq!(store.queue_offsets("t", 0), (0, 60));
    // A gap and an unknown producer are refused, nothing stored.
    let gap = idem
        .append(seq(pid, 99), "t", 0, batch("t", 0, messages("g", 1)), 5)
        .await;
    assert_eq!(gap.unwrap_err().code, ErrorCode::OutOfOrderSequence);
    let unknown = idem
        .append(seq(pid ^ 1, 0), "t", 0, batch("t", 0, messages("u", 1)), 5)
        .await;
    assert_eq!(unknown.unwrap_err().code, ErrorCode::UnknownProducer);
    assert_eq!(store.queue_offsets("t", 0), (0, 60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_lost_recent_sequences_reads_them_back_from_the_log() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let first = state();
    started(&store, &first);
    let idem = idempotence(&store, &first);
    let pid = idem.register("pg", 1).await.unwrap();
    let mut stored = Vec::new();
    for q in 0..4u32 {
        for i in 0..5u64 {
            let b = batch("t", q, messages(&format!("q{q}-{i}"), 2));
            stored.push((
                q,
                i,
                idem.append(seq(pid, i * 2), "t", q, b, 5).await.unwrap(),
            ));
        }
    }
    // The lost state: only what was flushed survived (the point recorded at start and the
    // registration).
    let second = state();
    second
        .apply(
            None,
            &[
                producers::rescan_point_op(0),
                producers::register_op(pid, "pg", 1),
            ],
            true,
        )
        .unwrap();
    let found = recover_standalone(&store, &second).unwrap();
    assert_eq!(found, 20);
    for (q, i, s) in &stored {
        let mark = SequenceMark {
            producer_id: pid,
            epoch: 0,
            base_sequence: i * 2,
            count: 2,
        };
        let v = producers::judge(
            second.meta().as_ref(),
            &mark,
            "t",
            *q,
            &format!("q{q}-{i}-0"),
        )
        .unwrap();
        match v {
            Verdict::Duplicate(b) => assert_eq!(b.locator, s.entries[0].commit_log_offset),
            other => panic!("queue {q} batch {i}: {other:?}"),
        }
    }
    // A second start rescans from where the first one ended: nothing left.
    assert_eq!(recover_standalone(&store, &second).unwrap(), 0);
    // The retry through the recovered state gets the first positions.
    let idem2 = idempotence(&store, &second);
    let again = idem2
        .append(seq(pid, 8), "t", 3, batch("t", 3, messages("q3-4", 2)), 5)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.entries, stored.last().unwrap().2.entries);
}

/// The broker fails between the batch's write and recording its sequence (and so before the
/// ack): the batch is in the log, a retry must not store it again, and a restart finds it.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_between_the_write_and_the_ack_never_stores_a_retry_twice() {
    let scenario = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).await.unwrap();
    let state = state();
    started(&store, &state);
    let idem = idempotence(&store, &state);
    let pid = idem.register("pg", 1).await.unwrap();
    fail::cfg("messaging::write_path::before_announced_state", "return").unwrap();
    let first = idem
        .append(seq(pid, 0), "t", 0, batch("t", 0, messages("a", 2)), 5)
        .await;
    assert_eq!(first.unwrap_err().code, ErrorCode::Unavailable);
    fail::cfg("messaging::write_path::before_announced_state", "off").unwrap();
    // Retries wait for a restart rather than store the batch again.
    for _ in 0..3 {
        let retry = idem
            .append(seq(pid, 0), "t", 0, batch("t", 0, messages("a", 2)), 5)
            .await;
        assert_eq!(retry.unwrap_err().code, ErrorCode::Unavailable);
    }
    wait_visible(&store, "t", 0, 2).await;
    assert_eq!(store.queue_offsets("t", 0), (0, 2));
    // The restart reads the sequence back; the retry then gets the first positions.
    let restarted = idempotence(&store, &state);
    assert_eq!(recover_standalone(&store, &state).unwrap(), 1);
    let again = restarted
        .append(seq(pid, 0), "t", 0, batch("t", 0, messages("a", 2)), 5)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(store.queue_offsets("t", 0), (0, 2));
    scenario.teardown();
}
