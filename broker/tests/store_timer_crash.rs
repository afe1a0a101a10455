//! Crash tests of the timer index: the writer dies in the middle of writing scheduled records
//! (delayed sends, consumer send-backs) or fired records (timers firing), or the dispatcher
//! dies in the middle of a checkpoint; the store is dropped without shutdown and reopened. The
//! index must then say exactly what the surviving log says: a timer is fired if and only if
//! its fired record is in the log, and every scheduled record in the log has its timer.
//! Run with `--features failpoints`.
#![cfg(feature = "failpoints")]

#[path = "store_util.rs"]
mod util;

use std::collections::{BTreeMap, BTreeSet};

use fail::FailScenario;
use sluice_broker::store::timer::TimerState;
use sluice_broker::store::{AppendMessage, MessageStore, StoreConfig};
use sluice_proto::props;
use sluice_proto::record::{SYS_FLAG_SCHEDULED, SYS_FLAG_TIMER_FIRED};
use util::*;

fn scheduled(id: &str, due: i64) -> AppendMessage {
    let mut m = msg(id, id.as_bytes());
    m.sys_flag = SYS_FLAG_SCHEDULED;
    m.properties
        .push((props::DELIVER_AT.into(), due.to_string()));
    m.properties.push((props::REAL_TOPIC.into(), "t".into()));
    m.properties.push((props::REAL_QUEUE.into(), "0".into()));
    m
}

fn fired(id: &str, due: i64, of: u64) -> AppendMessage {
    let mut m = msg(id, id.as_bytes());
    m.sys_flag = SYS_FLAG_TIMER_FIRED;
    m.properties
        .push((props::DELIVER_AT.into(), due.to_string()));
    m.properties.push((props::TIMER_OF.into(), of.to_string()));
    m
}

/// Schedules until the writer stops answering (or `limit`); returns the acked timers.
async fn schedule(store: &MessageStore, from: usize, limit: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for i in (from..from + limit).step_by(5) {
        let msgs = (i..i + 5)
            .map(|j| scheduled(&format!("s{j}"), 1_000 + j as i64))
            .collect();
        match store.append(batch("%TIMER%", 0, msgs)).await {
            Ok(r) => out.extend(
                r.entries
                    .iter()
                    .zip(i..)
                    .map(|(a, j)| (a.commit_log_offset, format!("s{j}"))),
            ),
            Err(_) => break,
        }
    }
    out
}

/// Fires `timers` in batches of 5 until the writer stops answering; returns those acked.
async fn fire(store: &MessageStore, timers: &[(u64, String)]) -> BTreeSet<u64> {
    let mut done = BTreeSet::new();
    for chunk in timers.chunks(5) {
        let msgs = chunk.iter().map(|(p, id)| fired(id, 1, *p)).collect();
        match store.append(batch("t", 0, msgs)).await {
            Ok(_) => done.extend(chunk.iter().map(|(p, _)| *p)),
            Err(_) => break,
        }
    }
    done
}

/// The index against the log: timers fired by a record in `t`/0 are fired, every other
/// scheduled record's timer pending; returns the fired ones.
fn check_index(store: &MessageStore, scheduled: &[(u64, String)]) -> BTreeSet<u64> {
    let mut fired_in_log: BTreeMap<u64, usize> = BTreeMap::new();
    for r in read_all(store, "t", 0) {
        let of: u64 = props::get(&r.properties, props::TIMER_OF)
            .and_then(|v| v.parse().ok())
            .expect("fired record names its timer");
        *fired_in_log.entry(of).or_default() += 1;
    }
    assert!(
        fired_in_log.values().all(|n| *n == 1),
        "a timer fired twice"
    );
    let mut pending = 0;
    for (phy, id) in scheduled {
        let Some(e) = store.timer_entry(*phy).unwrap() else {
            // Files whose timers all fired below a checkpoint are let go.
            assert!(
                fired_in_log.contains_key(phy),
                "timer {id} at {phy} missing from the index"
            );
            continue;
        };
        let want = if fired_in_log.contains_key(phy) {
            TimerState::Fired
        } else {
            pending += 1;
            TimerState::Pending
        };
        assert_eq!(e.state, want, "timer {id} at {phy}");
    }
    assert_eq!(store.timers_pending(), pending);
    fired_in_log.into_keys().collect()
}

async fn reopen(cfg: &StoreConfig) -> MessageStore {
    let store = MessageStore::open(cfg.clone()).await.unwrap();
    wait_all_dispatched(&store).await;
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_timers_are_scheduled_or_fire_leaves_the_index_equal_to_the_log() {
    let scenario = FailScenario::setup();
    for (fp, at_fire) in [
        ("store::writer::partial_write", false),
        ("store::writer::partial_write", true),
        ("store::writer::after_write", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.timer_entries_per_file = 64;
        let store = MessageStore::open(cfg.clone()).await.unwrap();
        let mut timers = schedule(&store, 0, 200).await;
        assert_eq!(timers.len(), 200);
        if !at_fire {
            // The writer dies while more timers are scheduled.
            fail::cfg(fp, "7*off->return").unwrap();
            timers.extend(schedule(&store, 200, 200).await);
        } else {
            wait_all_dispatched(&store).await;
            // The writer dies while timers fire.
            fail::cfg(fp, "9*off->return").unwrap();
            let acked = fire(&store, &timers[..150]).await;
            assert!(
                !acked.is_empty() && acked.len() < 150,
                "{fp}: {} fired",
                acked.len()
            );
        }
        drop(store);
        fail::remove(fp);

        let store = reopen(&cfg).await;
        // Acked scheduled records survive; unacked ones may, and then have their timer too.
        let in_log: Vec<(u64, String)> = read_all(&store, "%TIMER%", 0)
            .into_iter()
            .map(|r| (r.commit_log_offset, r.message_id))
            .collect();
        assert!(
            timers.iter().all(|t| in_log.contains(t)),
            "{fp}: an acked timer is gone"
        );
        let fired_before = check_index(&store, &in_log);
        // Firing goes on after the restart; each timer ends fired once.
        let rest: Vec<(u64, String)> = in_log
            .iter()
            .filter(|(p, _)| !fired_before.contains(p))
            .cloned()
            .collect();
        assert_eq!(fire(&store, &rest).await.len(), rest.len());
        wait_all_dispatched(&store).await;
        assert_eq!(check_index(&store, &in_log).len(), in_log.len());
        assert_eq!(store.timers_pending(), 0);
        assert_eq!(store.timer_floor(), u64::MAX);
        store.shutdown().await.unwrap();
        // And again after a clean restart.
        let store = reopen(&cfg).await;
        assert_eq!(check_index(&store, &in_log).len(), in_log.len());
        store.shutdown().await.unwrap();
    }
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_checkpoint_with_timers_rebuilds_them_from_the_log() {
    let scenario = FailScenario::setup();
    for fp in [
        "store::checkpoint::partial",
        "store::checkpoint::before_rename",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.timer_entries_per_file = 64;
        let store = MessageStore::open(cfg.clone()).await.unwrap();
        let timers = schedule(&store, 0, 150).await;
        wait_all_dispatched(&store).await;
        let ckpt = dir.path().join("checkpoint");
        wait_for("a first checkpoint", || ckpt.exists()).await;
        fail::cfg(fp, "return").unwrap();
        let fired_acked = fire(&store, &timers[..100]).await;
        assert_eq!(fired_acked.len(), 100);
        let tmp = dir.path().join("checkpoint.tmp");
        wait_for("the checkpoint crash", || tmp.exists()).await;
        drop(store);
        fail::remove(fp);
        let store = reopen(&cfg).await;
        let fired = check_index(&store, &timers);
        assert_eq!(fired, fired_acked, "{fp}");
        store.shutdown().await.unwrap();
    }
    scenario.teardown();
}
