//! Randomized safety test of the Raft replica group: many seeded runs of proposals, message
//! loss, duplication, delay, partitions, crashes, restarts and compactions, checking after
//! each that no committed entry was lost or reordered.
//!
//! `RAFT_FUZZ_RUNS` sets the number of runs (default 1000), `RAFT_FUZZ_SEED` the first seed
//! (default 0). A failure prints the command that replays its seed alone.

mod raft_sim;

use bytes::Bytes;
use raft_sim::{Cluster, SimOptions};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sluice_broker::replication::Role;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be an unsigned integer, got {v:?}")),
        Err(_) => default,
    }
}

#[derive(Default, Debug)]
struct Totals {
    runs: u64,
    proposals: u64,
    acked: u64,
    committed_entries: u64,
    snapshots: u64,
    delivered: u64,
    virtual_ms: u64,
}

/// Picks the cluster shape and network conditions of a run from its seed.
fn setup(seed: u64) -> Cluster {
    let mut shape = StdRng::seed_from_u64(seed ^ 0x5EED_5EED);
    let voters: &[u64] = if shape.gen_bool(0.7) {
        &[1, 2, 3]
    } else {
        &[1, 2, 3, 4, 5]
    };
    let learners: &[u64] = if shape.gen_bool(0.3) { &[9] } else { &[] };
    let opts = SimOptions {
        drop_rate: *[0.0, 0.05, 0.2].choose(&mut shape).unwrap_or(&0.0),
        dup_rate: *[0.0, 0.05, 0.2].choose(&mut shape).unwrap_or(&0.0),
        max_delay_ms: *[5, 50, 250].choose(&mut shape).unwrap_or(&5),
        // Small messages and windows exercise batching and flow control.
        max_size_per_msg: *[64, 1024 * 1024].choose(&mut shape).unwrap_or(&64),
        max_inflight_msgs: *[1, 4, 256].choose(&mut shape).unwrap_or(&4),
        ..SimOptions::default()
    };
    Cluster::new(seed, voters, learners, opts)
}

fn one_run(seed: u64, steps: u64, totals: &mut Totals) -> Result<(), String> {
    let mut c = setup(seed);
    let ids = c.ids();
    let mut next = 0u64;
    for _ in 0..steps {
        let roll = c.rng.gen_range(0..100);
        match roll {
            0..=44 => {
                let leader = c.leaders().first().copied();
                let target = match leader {
                    Some(l) if c.rng.gen_bool(0.8) => l,
                    _ => ids[c.rng.gen_range(0..ids.len())],
                };
                next += 1;
                c.propose(target, Bytes::from(format!("s{seed}-p{next}")));
            }
            45..=49 => {
                let up = c.up_ids();
                if let Some(&id) = up.choose(&mut c.rng) {
                    c.crash(id);
                }
            }
            50..=57 => {
                let down: Vec<u64> = ids.iter().copied().filter(|&id| !c.is_up(id)).collect();
                if let Some(&id) = down.choose(&mut c.rng) {
                    c.restart(id);
                }
            }
            58..=61 => {
                let id = ids[c.rng.gen_range(0..ids.len())];
                c.isolate(id);
            }
            62..=65 => {
                let side: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|_| c.rng.gen_bool(0.5))
                    .collect();
                c.partition(&side);
            }
            66..=73 => c.heal(),
            74..=76 => {
                let up = c.up_ids();
                if let Some(&id) = up.choose(&mut c.rng) {
                    let slack = c.rng.gen_range(0..5);
                    if let Some(node) = c.node_mut(id) {
                        let applied = node.status().applied_index;
                        let to = applied.saturating_sub(slack).max(1);
                        node.compact(to)
                            .map_err(|e| format!("compacting {id} to {to}: {e}"))?;
                    }
                }
            }
            _ => {}
        }
        let pause = c.rng.gen_range(1..120);
        c.run_for(pause);
    }

    // Heal everything and require the group to converge: a fenced entry must commit and
    // reach every replica, which then holds every acknowledged entry.
    c.heal();
    for id in ids.clone() {
        c.restart(id);
    }
    let mut fence = None;
    for attempt in 0..20 {
        let Some(_) = c.run_until(20_000, |c| c.master().is_some()) else {
            break;
        };
        let master = c.master().unwrap_or_default();
        let t = c.propose(master, Bytes::from(format!("s{seed}-fence{attempt}")));
        c.run_until(10_000, |c| c.outcome(t).is_some());
        if let Some(Ok(id)) = c.outcome(t) {
            fence = Some(*id);
            break;
        }
    }
    let fence =
        fence.ok_or_else(|| "the healed cluster never committed a fence entry".to_string())?;
    if c.run_until(30_000, |c| {
        c.ids()
            .iter()
            .all(|&id| c.recorder(id).applied >= fence.index)
    })
    .is_none()
    {
        let lag: Vec<_> = ids.iter().map(|&id| (id, c.recorder(id).applied)).collect();
        return Err(format!("replicas did not catch up to {fence:?}: {lag:?}"));
    }

    let global = c.check_safety()?;
    if !c.step_errors.is_empty() {
        return Err(format!(
            "well-formed peer messages were refused: {:?}",
            &c.step_errors[..c.step_errors.len().min(5)]
        ));
    }
    for id in ids {
        let r = c.role(id).ok_or("node down after restart")?;
        if r.role == Role::Failed {
            return Err(format!("replica {id} failed: {:?}", r.failure));
        }
        totals.snapshots += c.recorder(id).snapshots.len() as u64;
    }
    totals.runs += 1;
    totals.proposals += c.tickets.len() as u64;
    totals.acked += c
        .tickets
        .iter()
        .filter(|t| matches!(t.outcome, Some(Ok(_))))
        .count() as u64;
    totals.committed_entries += global.len() as u64;
    totals.delivered += c.delivered;
    totals.virtual_ms += c.now;
    Ok(())
}

#[test]
fn committed_entries_survive_randomized_faults() {
    let runs = env_u64("RAFT_FUZZ_RUNS", 1000);
    let first = env_u64("RAFT_FUZZ_SEED", 0);
    let steps = env_u64("RAFT_FUZZ_STEPS", 200);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
        .clamp(1, 4);
    let started = std::time::Instant::now();
    let results: Vec<(Totals, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    let mut totals = Totals::default();
                    let mut failures = Vec::new();
                    for seed in (first..first + runs).filter(|seed| seed % workers == w) {
                        if let Err(e) = one_run(seed, steps, &mut totals) {
                            failures.push(format!(
                                "seed {seed}: {e}\n  replay: RAFT_FUZZ_SEED={seed} RAFT_FUZZ_RUNS=1 \
                                 cargo test -p sluice-broker --test raft_randomized"
                            ));
                        }
                    }
                    (totals, failures)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    let mut all = Totals::default();
    let mut failures = Vec::new();
    for (t, f) in results {
        all.runs += t.runs;
        all.proposals += t.proposals;
        all.acked += t.acked;
        all.committed_entries += t.committed_entries;
        all.snapshots += t.snapshots;
        all.delivered += t.delivered;
        all.virtual_ms += t.virtual_ms;
        failures.extend(f);
    }
    println!(
        "{} runs in {:.1?} ({workers} threads): {all:?}",
        runs,
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failed runs:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(all.runs, runs);
    // The runs must actually exercise the interesting paths.
    assert!(all.acked > runs, "too few acknowledged proposals: {all:?}");
    if runs >= 100 {
        assert!(
            all.snapshots > 0,
            "no run exercised snapshot catch-up: {all:?}"
        );
    }
}
