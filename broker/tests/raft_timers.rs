//! The delayed-message protocol on the in-process Raft simulation (seeded, deterministic):
//! timers are scheduled through the log, a leader-only timer task fires each due timer by
//! proposing one entry that is both the delivery and the "fired" mark, and cancels go through
//! the same task. The task starts only on a master (whose log is applied whole), rebuilds its
//! view from the applied log alone, and after a proposal whose outcome it cannot know waits
//! until its log is applied before it reads that view again: the rules of
//! `broker/src/messaging/timer/task.rs`. Under message loss, partitions, crashes and
//! restarts, every committed timer must end fired or cancelled exactly once, never both, and
//! never fired before it was due.
//!
//! `RAFT_TIMER_RUNS` sets the number of seeded runs (default 200).

mod raft_sim;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use raft_sim::{Cluster, SimOptions};
use rand::Rng;

/// An entry of the protocol, as its data.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Schedule {
        timer: u64,
        due: u64,
    },
    /// Proposed at virtual time `at` (the master's clock, recorded in the entry).
    Fire {
        timer: u64,
        at: u64,
        nonce: u64,
    },
    Cancel {
        timer: u64,
        nonce: u64,
    },
}

impl Op {
    fn encode(&self) -> Bytes {
        Bytes::from(match self {
            Op::Schedule { timer, due } => format!("s:{timer}:{due}"),
            Op::Fire { timer, at, nonce } => format!("f:{timer}:{at}:{nonce}"),
            Op::Cancel { timer, nonce } => format!("c:{timer}:{nonce}"),
        })
    }

    fn decode(b: &[u8]) -> Option<Op> {
        let s = std::str::from_utf8(b).ok()?;
        let p: Vec<&str> = s.split(':').collect();
        let n = |i: usize| p.get(i).and_then(|v| v.parse::<u64>().ok());
        match *p.first()? {
            "s" => Some(Op::Schedule {
                timer: n(1)?,
                due: n(2)?,
            }),
            "f" => Some(Op::Fire {
                timer: n(1)?,
                at: n(2)?,
                nonce: n(3)?,
            }),
            "c" => Some(Op::Cancel {
                timer: n(1)?,
                nonce: n(2)?,
            }),
            _ => None,
        }
    }
}

/// The replicated timer state as one replica applied it: pending timers and their due times.
fn pending_of(c: &Cluster, id: u64) -> BTreeMap<u64, u64> {
    let mut pending = BTreeMap::new();
    let mut done = BTreeSet::new();
    for e in &c.recorder(id).entries {
        match Op::decode(&e.data) {
            Some(Op::Schedule { timer, due }) if !done.contains(&timer) => {
                pending.insert(timer, due);
            }
            // The first resolution decides; a later one would change nothing.
            Some(Op::Fire { timer, .. } | Op::Cancel { timer, .. })
                if pending.remove(&timer).is_some() =>
            {
                done.insert(timer);
            }
            _ => {}
        }
    }
    pending
}

/// How long a round waits for its proposals before it treats their outcome as unknown.
const ROUND_TIMEOUT_MS: u64 = 150;

/// One run of the leader-only task: which mastership it serves and what it has in flight.
struct Task {
    master: u64,
    term: u64,
    /// Proposals of the current round (ticket indexes); the next round waits for them all,
    /// or gives up on them after `ROUND_TIMEOUT_MS` (their outcome then unknown, as a
    /// proposal timeout leaves it in the broker).
    round: Vec<usize>,
    round_started: u64,
    /// A proposal failed: wait until everything proposed on the master is applied.
    settle_to: Option<u64>,
    /// Timers this run resolved (fired or cancelled); the view is the applied log minus these.
    resolved: BTreeSet<u64>,
}

fn step_task(c: &mut Cluster, task: &mut Option<Task>, cancels: &mut Vec<u64>, nonce: &mut u64) {
    // A run lasts as long as its node leads in its term (the supervisor stops it when Raft
    // leadership goes, whatever the quorum looks like meanwhile) ...
    if let Some(t) = task.as_ref() {
        let leads = c.role(t.master).is_some_and(|r| {
            r.role == sluice_broker::replication::Role::Leader && r.term == t.term
        });
        if !leads {
            *task = None;
        }
    }
    // ... and a new one starts only on a master: a leader that applied its whole log.
    if task.is_none() {
        let Some(master) = c.master() else {
            return;
        };
        let Some(role) = c.role(master) else {
            return;
        };
        *task = Some(Task {
            master,
            term: role.term,
            round: Vec::new(),
            round_started: 0,
            settle_to: None,
            resolved: BTreeSet::new(),
        });
    }
    let Some(t) = task.as_mut() else { return };
    let master = t.master;
    c.poll_tickets();
    let waiting = t.round.iter().any(|&k| c.outcome(k).is_none());
    let timed_out = waiting && c.now.saturating_sub(t.round_started) > ROUND_TIMEOUT_MS;
    if waiting && !timed_out {
        return;
    }
    if timed_out
        || t.round
            .iter()
            .any(|&k| matches!(c.outcome(k), Some(Err(_))))
    {
        // An outcome it cannot know: wait until the master applied all it holds.
        let last = c.node(master).map_or(0, |n| n.status().last_index);
        t.settle_to = Some(last);
    }
    t.round.clear();
    if let Some(to) = t.settle_to {
        if c.recorder(master).applied < to {
            return;
        }
        t.settle_to = None;
        t.resolved.clear();
    }
    let applied = pending_of(c, master);
    let pending: BTreeMap<u64, u64> = applied
        .into_iter()
        .filter(|(timer, _)| !t.resolved.contains(timer))
        .collect();
    // Cancels first (they are rarer); then every due timer, in one round.
    for timer in std::mem::take(cancels) {
        if pending.contains_key(&timer) && !t.resolved.contains(&timer) {
            *nonce += 1;
            let k = c.propose(
                master,
                Op::Cancel {
                    timer,
                    nonce: *nonce,
                }
                .encode(),
            );
            t.round.push(k);
            t.resolved.insert(timer);
        }
    }
    let now = c.now;
    t.round_started = now;
    for (&timer, &due) in &pending {
        if due <= now && !t.resolved.contains(&timer) {
            *nonce += 1;
            let op = Op::Fire {
                timer,
                at: now,
                nonce: *nonce,
            };
            let k = c.propose(master, op.encode());
            t.round.push(k);
            t.resolved.insert(timer);
        }
    }
}

fn one_run(seed: u64) -> Result<(usize, usize, usize), String> {
    let mut c = Cluster::new(
        seed,
        &[1, 2, 3],
        &[],
        SimOptions {
            drop_rate: [0.0, 0.05, 0.15][(seed % 3) as usize],
            ..SimOptions::default()
        },
    );
    let ids = c.ids();
    let mut task: Option<Task> = None;
    let mut cancels = Vec::new();
    let mut nonce = 0u64;
    let mut next_timer = 0u64;
    for _ in 0..400 {
        match c.rng.gen_range(0..100) {
            0..=39 => {
                // A producer schedules a timer on whoever leads, due within 0-3 s.
                if let Some(&leader) = c.leaders().first() {
                    next_timer += 1;
                    let due = c.now + c.rng.gen_range(0..3_000);
                    c.propose(
                        leader,
                        Op::Schedule {
                            timer: next_timer,
                            due,
                        }
                        .encode(),
                    );
                }
            }
            40..=44 if next_timer > 0 => {
                let timer = c.rng.gen_range(1..=next_timer);
                cancels.push(timer);
            }
            roll @ 45..=70 => c.random_fault(roll - 45),
            _ => {}
        }
        step_task(&mut c, &mut task, &mut cancels, &mut nonce);
        let pause = c.rng.gen_range(1..80);
        c.run_for(pause);
    }
    // Heal, and let the task finish every timer.
    c.heal();
    for id in ids.clone() {
        c.restart(id);
    }
    let finished = |c: &Cluster| {
        c.master().is_some_and(|m| pending_of(c, m).is_empty())
            && ids
                .iter()
                .all(|&id| c.recorder(id).applied == c.recorder(ids[0]).applied)
    };
    for _ in 0..400 {
        if finished(&c) {
            break;
        }
        step_task(&mut c, &mut task, &mut cancels, &mut nonce);
        c.run_for(50);
    }
    if !finished(&c) {
        return Err("timers still pending (or replicas apart) after healing".into());
    }

    // The committed sequence decides: every scheduled timer resolved exactly once, by one
    // entry, never fired before it was due.
    let global = c.check_safety()?;
    let mut due: HashMap<u64, u64> = HashMap::new();
    let mut resolutions: HashMap<u64, Vec<Op>> = HashMap::new();
    for (_, (_, data)) in global {
        match Op::decode(&data) {
            Some(Op::Schedule { timer, due: d }) => {
                due.insert(timer, d);
            }
            Some(op @ (Op::Fire { .. } | Op::Cancel { .. })) => {
                let timer = match op {
                    Op::Fire { timer, .. } | Op::Cancel { timer, .. } => timer,
                    Op::Schedule { .. } => unreachable!(),
                };
                if !due.contains_key(&timer) {
                    return Err(format!("{op:?} resolves a timer not scheduled before it"));
                }
                resolutions.entry(timer).or_default().push(op);
            }
            None => {}
        }
    }
    let (mut fired, mut cancelled) = (0, 0);
    for (timer, d) in &due {
        match resolutions.get(timer).map(Vec::as_slice) {
            Some([Op::Fire { at, .. }]) => {
                if at < d {
                    return Err(format!("timer {timer} fired at {at}, due {d}"));
                }
                fired += 1;
            }
            Some([Op::Cancel { .. }]) => cancelled += 1,
            other => return Err(format!("timer {timer} resolved as {other:?}")),
        }
    }
    Ok((due.len(), fired, cancelled))
}

#[test]
fn every_timer_is_fired_or_cancelled_once_across_failovers() {
    let (runs, [timers, fired, cancelled]) = raft_sim::seeded_runs("RAFT_TIMER_RUNS", 200, one_run);
    eprintln!("{runs} runs: {timers} timers, {fired} fired, {cancelled} cancelled");
    assert!(
        fired > 0 && cancelled > 0,
        "the runs exercised both outcomes"
    );
}
