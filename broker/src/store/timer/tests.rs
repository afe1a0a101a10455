use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn open(dir: &std::path::Path, per_file: u64, keep_below: u64) -> (TimerIndex, Option<u64>) {
    TimerIndex::open(dir.join("timer"), per_file, keep_below).unwrap()
}

/// Every pending timer due up to `slot`, in firing order (due, then arrival).
fn due(ix: &mut TimerIndex, slot: i64) -> Vec<(i64, u64)> {
    let mut out = Vec::new();
    for (_, head) in ix.slots_upto(slot) {
        for e in ix.chain(head, 0).unwrap() {
            out.push((e.due_ms, e.sched_phy));
        }
    }
    out.sort();
    out
}

#[test]
fn schedules_chains_by_slot_and_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ix, rebuild) = open(dir.path(), 64, u64::MAX);
    assert_eq!(rebuild, None);
    // Offsets grow with the log; due times in two slots, out of order.
    ix.schedule(100, 5_500, 10).unwrap();
    ix.schedule(200, 5_100, 10).unwrap();
    ix.schedule(300, 7_000, 10).unwrap();
    ix.schedule(400, 5_100, 10).unwrap();
    ix.schedule(400, 5_100, 10).unwrap(); // re-dispatch: ignored
    assert_eq!(ix.pending(), 4);
    assert_eq!(ix.first_slot(), Some(5));
    assert_eq!(
        due(&mut ix, 5),
        vec![(5_100, 200), (5_100, 400), (5_500, 100)]
    );
    assert_eq!(ix.floor().unwrap(), 100);
    assert_eq!(
        ix.resolve(100, 900, TimerState::Fired).unwrap(),
        Resolved::Now
    );
    assert_eq!(
        ix.resolve(100, 900, TimerState::Fired).unwrap(),
        Resolved::Again
    );
    assert_eq!(
        ix.resolve(100, 950, TimerState::Cancelled).unwrap(),
        Resolved::Before(Some(TimerState::Fired))
    );
    assert_eq!(
        ix.resolve(150, 950, TimerState::Fired).unwrap(),
        Resolved::Before(None)
    );
    assert_eq!(ix.floor().unwrap(), 200);
    assert_eq!(ix.find(100).unwrap().unwrap().state, TimerState::Fired);
    assert_eq!(ix.find(300).unwrap().unwrap().due_ms, 7_000);
    assert!(ix.find(301).unwrap().is_none());
    for p in [200, 400] {
        ix.resolve(p, 1_000 + p, TimerState::Cancelled).unwrap();
    }
    assert_eq!(ix.first_slot(), Some(7));
    assert_eq!(due(&mut ix, 6), vec![]);
    ix.resolve(300, 2_000, TimerState::Fired).unwrap();
    assert_eq!(ix.floor().unwrap(), u64::MAX);
    assert_eq!(ix.pending(), 0);
}

#[test]
fn lookups_and_chains_cross_files_smaller_than_a_cache_block() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ix, _) = open(dir.path(), 64, u64::MAX);
    for i in 0..300u64 {
        ix.schedule(10 + i, 5_000, 1).unwrap();
    }
    ix.flush().unwrap();
    for i in 0..300u64 {
        assert_eq!(ix.find(10 + i).unwrap().map(|e| e.no), Some(i));
    }
    assert_eq!(due(&mut ix, 5).len(), 300);
}

#[test]
fn chains_see_entries_written_after_their_block_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ix, _) = open(dir.path(), 4096, u64::MAX);
    for round in 0..3u64 {
        for i in 0..10u64 {
            ix.schedule(round * 100 + i + 1, 5_000, 1).unwrap();
        }
        ix.flush().unwrap();
        assert_eq!(due(&mut ix, 5).len() as u64, (round + 1) * 10);
    }
}

#[test]
fn reopening_keeps_what_the_checkpoint_covers_and_undoes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut ix, _) = open(dir.path(), 64, u64::MAX);
        for i in 0..100u64 {
            ix.schedule(i * 10, 1_000 + (i as i64 % 7) * 1_000, 1)
                .unwrap();
        }
        // Resolved below the checkpoint (500) and above it.
        ix.resolve(10, 400, TimerState::Fired).unwrap();
        ix.resolve(20, 600, TimerState::Cancelled).unwrap();
        ix.flush().unwrap();
    }
    // The checkpoint vouches for records below 500: entries of records at 500+ go, the
    // resolution by the record at 600 is undone.
    let (mut ix, rebuild) = open(dir.path(), 64, 500);
    assert_eq!(rebuild, None);
    assert_eq!(ix.pending(), 49);
    assert_eq!(ix.find(10).unwrap().unwrap().state, TimerState::Fired);
    assert!(ix.find(20).unwrap().unwrap().is_pending());
    assert!(ix.find(500).unwrap().is_none());
    // Re-dispatch adds them again.
    for i in 50..100u64 {
        ix.schedule(i * 10, 1_000, 1).unwrap();
    }
    assert_eq!(ix.pending(), 99);
    // Cutting at 300 drops entries 300+ and undoes the firing by the record at 400.
    ix.truncate(300).unwrap();
    assert_eq!(ix.pending(), 30);
    assert!(ix.find(10).unwrap().unwrap().is_pending());
    assert!(ix.find(300).unwrap().is_none());
    ix.reset().unwrap();
    assert_eq!(ix.pending(), 0);
    assert_eq!(ix.floor().unwrap(), u64::MAX);
    ix.schedule(5, 1, 1).unwrap();
    assert_eq!(ix.find(5).unwrap().unwrap().no, 0);
}

#[test]
fn a_damaged_entry_asks_for_a_rebuild_from_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut ix, _) = open(dir.path(), 64, u64::MAX);
        for i in 0..10u64 {
            ix.schedule(100 + i, 1_000, 1).unwrap();
        }
        ix.sync().unwrap();
    }
    let path = dir.path().join("timer").join(format!("{:020}", 0));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[5 * ENTRY_LEN + 3] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (mut ix, rebuild) = open(dir.path(), 64, u64::MAX);
    assert_eq!(rebuild, Some(105));
    assert_eq!(ix.pending(), 5);
    assert!(ix.find(105).unwrap().is_none());
    ix.schedule(105, 1_000, 1).unwrap();
    assert!(ix.find(105).unwrap().is_some());
}

#[test]
fn resolved_files_go_only_below_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ix, _) = open(dir.path(), 64, u64::MAX);
    for i in 0..200u64 {
        ix.schedule(i + 1, 1_000, 1).unwrap();
    }
    for i in 0..150u64 {
        ix.resolve(i + 1, 10_000 + i, TimerState::Fired).unwrap();
    }
    let files = || std::fs::read_dir(dir.path().join("timer")).unwrap().count();
    ix.sync().unwrap();
    ix.gc(10_000).unwrap();
    assert_eq!(files(), 4);
    ix.gc(20_000).unwrap();
    // Entries 0-127 (two files) are resolved; the third holds pending ones.
    assert_eq!(files(), 2);
    assert_eq!(ix.floor().unwrap(), 151);
    assert_eq!(ix.find(160).unwrap().unwrap().no, 159);
    assert!(ix.find(20).unwrap().is_none());
    drop(ix);
    let (mut ix, _) = open(dir.path(), 64, u64::MAX);
    assert_eq!(ix.pending(), 50);
    assert_eq!(ix.floor().unwrap(), 151);
}

#[derive(Debug, Clone)]
enum Op {
    Schedule { due: i64 },
    Resolve { pick: usize, cancel: bool },
    Checkpoint,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0i64..20_000).prop_map(|due| Op::Schedule { due }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, cancel)| Op::Resolve { pick, cancel }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// The index agrees with a map of pending timers through any mix of schedules,
    /// resolutions, checkpoints and clean reopens.
    #[test]
    fn matches_a_model(ops in prop::collection::vec(op(), 1..260)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut ix, _) = open(dir.path(), 16, u64::MAX);
        let mut model: BTreeMap<u64, i64> = BTreeMap::new();
        let mut phy = 0u64;
        for op in ops {
            phy += 7;
            match op {
                Op::Schedule { due } => {
                    ix.schedule(phy, due, 1).unwrap();
                    model.insert(phy, due);
                }
                Op::Resolve { pick, cancel } => {
                    if model.is_empty() { continue; }
                    let Some((&p, _)) = model.iter().nth(pick % model.len()) else { continue };
                    let state = if cancel { TimerState::Cancelled } else { TimerState::Fired };
                    prop_assert_eq!(ix.resolve(p, phy, state).unwrap(), Resolved::Now);
                    model.remove(&p);
                }
                Op::Checkpoint => {
                    ix.sync().unwrap();
                    ix.gc(phy + 1).unwrap();
                }
                Op::Reopen => {
                    ix.sync().unwrap();
                    drop(ix);
                    ix = open(dir.path(), 16, phy + 1).0;
                }
            }
            prop_assert_eq!(ix.pending(), model.len() as u64);
            prop_assert_eq!(ix.floor().unwrap(), model.keys().next().copied().unwrap_or(u64::MAX));
            // Chains are walked between writes too (cached blocks must not go stale).
            if phy.is_multiple_of(3) {
                ix.flush().unwrap();
            }
            let mut want: Vec<(i64, u64)> = model.iter().map(|(p, d)| (*d, *p)).collect();
            want.sort();
            prop_assert_eq!(due(&mut ix, i64::MAX), want);
        }
        let mut want: Vec<(i64, u64)> = model.iter().map(|(p, d)| (*d, *p)).collect();
        want.sort();
        prop_assert_eq!(due(&mut ix, i64::MAX), want);
    }
}
