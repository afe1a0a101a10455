//! Transactions on the in-process Raft simulation (seeded, deterministic), with the broker's
//! real state machine applying every committed entry on every replica. Producers run
//! transactions: half sends, then a commit or a rollback retried on whoever is master until it
//! is answered; some die with their transaction open, and the master's checks have a checker
//! resolve it by the fate it knows. The master follows the rules of `messaging/txn`: it takes
//! writes once it has applied an entry of its own term; a send is refused once its
//! transaction's end began, and an end waits for the sends under way; an end holds a slot of
//! its mastership (a second end of the same transaction waits for it) until its entry is
//! applied or, when the outcome is unknown, until the master applied all it held; both are
//! judged against the applied state. A half send carries no producer sequence: a retry after an
//! attempt failed or timed out proposes it again at once, so a send may be in the log twice
//! (the apply counts it once). A half send is answered once applied, an end once committed.
//! Under loss, partitions, crashes and restarts:
//! - a transaction has at most one commit entry in the log and none after its rollback (the
//!   copies would be visible twice, or after a rollback);
//! - every answer a producer or checker got matches what the log decided;
//! - a commit's copies include every half send acknowledged before it, each once;
//! - every replica ends with the same transaction tables.
//!
//! `RAFT_TRANSACTIONS_RUNS` sets the number of seeded runs (default 60).

mod raft_sim;
mod txn_sim;

use std::collections::{BTreeMap, HashMap, HashSet};

use raft_sim::{Cluster, SimOptions};
use rand::Rng;
use sluice_broker::replication::Role;
use sluice_broker::state::transactions::{COMMITTED, OPEN, ROLLED_BACK};
use txn_sim::{checked_entry, decode, end_entry, half_entry, tx_of, Entry, Replica};

/// How long a proposal may stay unanswered before its outcome counts as unknown.
const PROPOSE_TIMEOUT_MS: u64 = 150;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Key {
    Half(u64),
    End(u64),
}

struct Slot {
    ticket: usize,
    proposed_at: u64,
    settle_to: Option<u64>,
    /// An end answered once committed (its slot holds until applied).
    answered: bool,
    /// Proposals of the same half send before this one.
    attempt: u64,
}

struct Master {
    id: u64,
    term: u64,
    /// Sends and ends under way, by the transaction they belong to.
    slots: HashMap<Key, (String, Slot)>,
}

#[derive(Debug, PartialEq)]
enum Answer {
    Wait,
    Ack,
    /// An end's answer: the transaction's resolution (which may not be the one asked for).
    Ended(i32),
    /// A send refused for good (its transaction's end began or it is resolved).
    Refused,
}

/// Keeps the mastership current; resolves slots; returns the keys whose entries applied.
fn step_master(c: &mut Cluster, master: &mut Option<Master>) -> HashSet<Key> {
    if let Some(m) = master.as_ref() {
        if !c
            .role(m.id)
            .is_some_and(|r| r.role == Role::Leader && r.term == m.term)
        {
            *master = None;
        }
    }
    if master.is_none() {
        if let Some(role) = c.master().and_then(|id| c.role(id)) {
            *master = Some(Master {
                id: role.id,
                term: role.term,
                slots: HashMap::new(),
            });
        }
    }
    let mut done = HashSet::new();
    let Some(m) = master.as_mut() else {
        return done;
    };
    c.poll_tickets();
    let applied_to = c.recorder(m.id).applied;
    let last = c.node(m.id).map_or(0, |n| n.status().last_index);
    let now = c.now;
    m.slots.retain(|key, (_, s)| {
        match c.outcome(s.ticket) {
            Some(Ok(e)) if s.settle_to.is_none() => {
                // An end is answered once committed, a half send once applied.
                if matches!(key, Key::End(_)) && !s.answered {
                    s.answered = true;
                    done.insert(*key);
                }
                if applied_to >= e.index {
                    if !s.answered {
                        done.insert(*key);
                    }
                    return false;
                }
                return true;
            }
            Some(Err(_)) => {
                s.settle_to.get_or_insert(last);
            }
            None if now.saturating_sub(s.proposed_at) > PROPOSE_TIMEOUT_MS => {
                s.settle_to.get_or_insert(last);
            }
            _ => {}
        }
        s.settle_to.is_none_or(|to| applied_to < to)
    });
    done
}

/// The master's judgement of a request, against its applied state (`r`).
fn handle(
    c: &mut Cluster,
    m: &mut Master,
    r: &Replica,
    key: Key,
    tx: &str,
    resolution: i32,
) -> Result<Answer, String> {
    // Takes writes once it applied an entry of its own term (everything before is applied).
    if c.recorder(m.id).applied_term != m.term {
        return Ok(Answer::Wait);
    }
    if let Key::Half(h) = key {
        if r.halves.get(tx).is_some_and(|v| v.contains(&h)) {
            return Ok(Answer::Ack);
        }
    }
    let mut attempt = 0;
    if let Some((_, s)) = m.slots.get(&key) {
        // A half send carries no producer sequence: once its attempt failed or timed out, the
        // producer's retry proposes it again at once (the first copy may still commit; the
        // apply counts the send once). An end waits for the log to settle its attempt.
        let retry = matches!(key, Key::Half(_)) && s.settle_to.is_some();
        if !retry {
            return Ok(Answer::Wait);
        }
        attempt = s.attempt + 1;
    }
    let rec = r.record(tx);
    let resolved = rec.as_ref().map(|x| x.resolution).filter(|x| *x != OPEN);
    let ending = m
        .slots
        .iter()
        .any(|(k, (t, _))| t == tx && matches!(k, Key::End(_)));
    let entry = match key {
        Key::Half(h) => {
            if resolved.is_some() || ending {
                return Ok(Answer::Refused);
            }
            half_entry(h, tx, attempt)
        }
        Key::End(_) => {
            if let Some(x) = resolved {
                return Ok(Answer::Ended(x));
            }
            let sending = m
                .slots
                .iter()
                .any(|(k, (t, _))| t == tx && matches!(k, Key::Half(_)));
            if ending || sending {
                return Ok(Answer::Wait);
            }
            if rec.is_none() && resolution == COMMITTED {
                return Err(format!("commit of {tx}: not found, yet a send was acked"));
            }
            let copies = if resolution == COMMITTED {
                r.halves.get(tx).cloned().unwrap_or_default()
            } else {
                Vec::new()
            };
            end_entry(tx, resolution, &copies)
        }
    };
    let ticket = c.propose(m.id, entry);
    m.slots.insert(
        key,
        (
            tx.to_string(),
            Slot {
                ticket,
                proposed_at: c.now,
                settle_to: None,
                answered: false,
                attempt,
            },
        ),
    );
    Ok(Answer::Wait)
}

/// A new id for a transaction, a half send or an end.
fn fresh(n: &mut u64) -> u64 {
    *n += 1;
    *n
}

/// What a producer (or the checker, for an abandoned transaction) is doing.
#[derive(Debug)]
enum Task {
    Send { half: u64, left: u32 },
    End { end: u64, resolution: i32 },
}

struct Producer {
    tx: String,
    task: Option<Task>,
    acked_halves: Vec<u64>,
    tries: u32,
    /// Steps to stay idle first (a producer that comes back late with its end).
    sleep: u32,
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
    let mut replicas: BTreeMap<u64, Replica> = ids.iter().map(|&i| (i, Replica::new())).collect();
    let mut master: Option<Master> = None;
    let mut next = 0u64;
    let mut producers: Vec<Producer> = Vec::new();
    // Answers given: transaction -> resolutions told. Acked halves asked to commit.
    let mut answers: HashMap<String, Vec<i32>> = HashMap::new();
    let mut acked_before_commit: HashMap<String, Vec<u64>> = HashMap::new();
    // Abandoned transactions and their fate (what the checker answers).
    let mut fates: HashMap<String, i32> = HashMap::new();
    let mut checker: Vec<Producer> = Vec::new();
    let mut last_check = 0u64;

    let steps = 400;
    for step in 0..steps + 800 {
        let open = step < steps;
        if open {
            let roll = c.rng.gen_range(0..100);
            c.random_fault(roll);
        } else if step == steps {
            c.heal();
            for id in ids.clone() {
                c.restart(id);
            }
        }
        for id in ids.clone() {
            if let Some(r) = replicas.get_mut(&id) {
                r.catch_up(&c, id)?;
            }
        }
        let done = step_master(&mut c, &mut master);
        // New producers while the run is open.
        while open && producers.len() < 3 {
            let tx = format!("tx-{}", fresh(&mut next));
            let half = fresh(&mut next);
            let left = c.rng.gen_range(1..4);
            producers.push(Producer {
                tx,
                task: Some(Task::Send { half, left }),
                acked_halves: Vec::new(),
                tries: 0,
                sleep: 0,
            });
        }
        // The master's check round: abandoned transactions open in its applied state.
        if let Some(m) = master.as_ref() {
            if c.now.saturating_sub(last_check) >= 200 {
                last_check = c.now;
                let r = &replicas[&m.id];
                let mut checked = Vec::new();
                for (tx, _) in r.sm.tx_open.all() {
                    if let Some(&fate) = fates.get(&tx) {
                        checked.push(tx.clone());
                        if !checker.iter().any(|p| p.tx == tx) {
                            let end = fresh(&mut next);
                            checker.push(Producer {
                                tx,
                                task: Some(Task::End {
                                    end,
                                    resolution: fate,
                                }),
                                acked_halves: Vec::new(),
                                tries: 0,
                                sleep: 0,
                            });
                        }
                    }
                }
                if !checked.is_empty() && c.recorder(m.id).applied_term == m.term {
                    checked.sort();
                    let now = c.now as i64;
                    c.propose(m.id, checked_entry(checked, now));
                }
            }
        }
        // Every producer and the checker's answers take one step.
        let mut all: Vec<(bool, Producer)> = producers
            .drain(..)
            .map(|p| (false, p))
            .chain(checker.drain(..).map(|p| (true, p)))
            .collect();
        for (is_checker, p) in all.iter_mut() {
            if p.sleep > 0 {
                p.sleep -= 1;
                continue;
            }
            let Some(task) = p.task.as_ref() else {
                continue;
            };
            let (key, resolution) = match task {
                Task::Send { half, .. } => (Key::Half(*half), OPEN),
                Task::End { end, resolution } => (Key::End(*end), *resolution),
            };
            let answer = if done.contains(&key) {
                match key {
                    Key::Half(_) => Answer::Ack,
                    Key::End(_) => Answer::Ended(resolution),
                }
            } else {
                match master.as_mut() {
                    Some(m) => {
                        let r = &replicas[&m.id];
                        handle(&mut c, m, r, key, &p.tx, resolution)?
                    }
                    None => Answer::Wait,
                }
            };
            p.tries += 1;
            match (answer, p.task.take()) {
                (Answer::Ack, Some(Task::Send { half, left })) => {
                    p.acked_halves.push(half);
                    p.tries = 0;
                    p.task = if left > 1 {
                        Some(Task::Send {
                            half: fresh(&mut next),
                            left: left - 1,
                        })
                    } else if open && !*is_checker && c.rng.gen_bool(0.3) {
                        // The producer stalls with its transaction open (the checks ask the
                        // checker); half the time it comes back later with the same end,
                        // racing the checker's.
                        let fate = if c.rng.gen_bool(0.5) {
                            COMMITTED
                        } else {
                            ROLLED_BACK
                        };
                        fates.insert(p.tx.clone(), fate);
                        if c.rng.gen_bool(0.5) {
                            p.sleep = c.rng.gen_range(1..40);
                            if fate == COMMITTED {
                                acked_before_commit.insert(p.tx.clone(), p.acked_halves.clone());
                            }
                            Some(Task::End {
                                end: fresh(&mut next),
                                resolution: fate,
                            })
                        } else {
                            None
                        }
                    } else {
                        let resolution = if c.rng.gen_bool(0.6) {
                            COMMITTED
                        } else {
                            ROLLED_BACK
                        };
                        if resolution == COMMITTED {
                            acked_before_commit.insert(p.tx.clone(), p.acked_halves.clone());
                        }
                        Some(Task::End {
                            end: fresh(&mut next),
                            resolution,
                        })
                    };
                }
                (Answer::Refused, Some(Task::Send { .. })) => {
                    // Only the producer ends its transaction: a refusal means its own end
                    // began, which cannot be while it still sends.
                    return Err(format!("a send of {} refused while it was open", p.tx));
                }
                (Answer::Ended(x), Some(Task::End { .. })) => {
                    answers.entry(p.tx.clone()).or_default().push(x);
                }
                (Answer::Wait, Some(Task::Send { half, left }))
                    if open && !*is_checker && p.tries > 40 && c.rng.gen_bool(0.05) =>
                {
                    // The send timed out for good: the producer rolls back (the half may be
                    // stored all the same).
                    let _ = (half, left);
                    p.tries = 0;
                    p.task = Some(Task::End {
                        end: fresh(&mut next),
                        resolution: ROLLED_BACK,
                    });
                }
                (_, task) => p.task = task,
            }
        }
        for (is_checker, p) in all {
            if p.task.is_some() {
                if is_checker {
                    checker.push(p);
                } else {
                    producers.push(p);
                }
            }
        }
        let settled = !open
            && producers.is_empty()
            && checker.is_empty()
            && fates.keys().all(|tx| answers.contains_key(tx));
        if settled {
            break;
        }
        let pause = if open { c.rng.gen_range(1..60) } else { 30 };
        c.run_for(pause);
    }
    if !producers.is_empty() || !checker.is_empty() {
        return Err(format!(
            "ends still unanswered after healing: {} producers, {} checks",
            producers.len(),
            checker.len()
        ));
    }
    if let Some(tx) = fates.keys().find(|tx| !answers.contains_key(*tx)) {
        return Err(format!("abandoned {tx} never resolved by the checks"));
    }

    // The committed log decides.
    let global = c.check_safety()?;
    let mut decided: HashMap<String, i32> = HashMap::new();
    let mut commits: HashMap<String, Vec<u64>> = HashMap::new();
    for (index, (_, data)) in &global {
        let Some(Entry::End(copies, op)) = decode(data) else {
            continue;
        };
        let Some((tx, resolution)) = tx_of(&op) else {
            continue;
        };
        let first = *decided.entry(tx.clone()).or_insert(resolution);
        if resolution == COMMITTED {
            if first != COMMITTED {
                return Err(format!(
                    "{tx}: a commit entry at {index} after its rollback"
                ));
            }
            let unique: HashSet<u64> = copies.iter().copied().collect();
            if unique.len() != copies.len() {
                return Err(format!(
                    "{tx}: a half message twice among its copies {copies:?}"
                ));
            }
            if commits.insert(tx.clone(), copies).is_some() {
                return Err(format!("{tx}: a second commit entry at {index}"));
            }
        }
    }
    for (tx, told) in &answers {
        let Some(d) = decided.get(tx) else {
            return Err(format!("{tx}: answered {told:?}, but nothing in the log"));
        };
        if told.iter().any(|t| t != d) {
            return Err(format!("{tx}: answered {told:?}, the log decided {d}"));
        }
    }
    for (tx, acked) in &acked_before_commit {
        if decided.get(tx) == Some(&COMMITTED) {
            let copies = commits.get(tx).cloned().unwrap_or_default();
            if let Some(h) = acked.iter().find(|h| !copies.contains(h)) {
                return Err(format!(
                    "{tx}: half {h} acked but not among the commit's copies"
                ));
            }
        }
    }
    // Every replica applied the same log into the same tables.
    let until = c.run_until(10_000, |c| {
        let top = c.recorder(1).applied;
        c.ids().iter().all(|&i| c.recorder(i).applied == top)
    });
    if until.is_none() {
        return Err("replicas did not converge after healing".into());
    }
    for id in ids.clone() {
        if let Some(r) = replicas.get_mut(&id) {
            r.catch_up(&c, id)?;
        }
    }
    let first = replicas[&1].tables();
    for (id, r) in &replicas {
        if r.tables() != first {
            return Err(format!(
                "replica {id}'s transaction tables differ from replica 1's"
            ));
        }
    }
    let committed = decided.values().filter(|d| **d == COMMITTED).count();
    Ok((answers.len(), committed, fates.len()))
}

#[test]
fn one_entry_decides_each_transaction_and_every_answer_matches_it() {
    let (runs, [answered, committed, abandoned]) =
        raft_sim::seeded_runs("RAFT_TRANSACTIONS_RUNS", 60, one_run);
    eprintln!(
        "{runs} runs: {answered} transactions answered, {committed} committed, {abandoned} abandoned and resolved by checks"
    );
    assert!(
        committed > 0 && abandoned > 0 && answered > committed,
        "the runs exercised commits, rollbacks and checks"
    );
}
