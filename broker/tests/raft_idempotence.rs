//! The idempotent-producer protocol on the in-process Raft simulation (seeded, deterministic).
//! Producers number their batches; each keeps one batch on the wire and retries it on whoever
//! is master until it is acknowledged (or gives it up, and starts the next batch at a new
//! epoch). The master follows the rules of `broker/src/messaging/idempotence.rs`: a batch is
//! judged against the sequences of the applied log; a batch it proposed stays in a slot of its
//! mastership until its entry is applied, or, when the outcome is unknown, until the master has
//! applied all it held; a new mastership starts with no slots. A batch is acknowledged once
//! committed (its slot holds until applied), and the producer's next batch, arriving while
//! the slot holds, is proposed when it follows the slot's batch (same epoch, next sequence). Under message loss, partitions,
//! crashes and restarts, no batch may be committed twice and every acknowledged batch must be
//! committed.
//!
//! `RAFT_IDEMPOTENCE_RUNS` sets the number of seeded runs (default 100).

mod raft_sim;

use std::collections::HashMap;

use bytes::Bytes;
use raft_sim::{Cluster, SimOptions};
use rand::Rng;
use sluice_broker::replication::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Batch {
    pid: u64,
    epoch: u32,
    base: u64,
    count: u64,
    /// Unique per batch a producer made (its first message id).
    id: u64,
}

impl Batch {
    fn encode(&self) -> Bytes {
        let b = self;
        Bytes::from(format!(
            "b:{}:{}:{}:{}:{}",
            b.pid, b.epoch, b.base, b.count, b.id
        ))
    }

    fn decode(d: &[u8]) -> Option<Batch> {
        let s = std::str::from_utf8(d).ok()?;
        let p: Vec<&str> = s.split(':').collect();
        if p.first() != Some(&"b") {
            return None;
        }
        let n = |i: usize| p.get(i).and_then(|v| v.parse::<u64>().ok());
        Some(Batch {
            pid: n(1)?,
            epoch: u32::try_from(n(2)?).ok()?,
            base: n(3)?,
            count: n(4)?,
            id: n(5)?,
        })
    }
}

/// One producer's applied sequence state (as `state::producers` keeps it).
#[derive(Debug, Default, Clone)]
struct Seq {
    epoch: u32,
    next: u64,
    batches: Vec<Batch>,
}

/// The sequences as replica `id` applied them.
fn applied(c: &Cluster, id: u64) -> HashMap<u64, Seq> {
    let mut state: HashMap<u64, Seq> = HashMap::new();
    for e in &c.recorder(id).entries {
        let Some(b) = Batch::decode(&e.data) else {
            continue;
        };
        match state.get_mut(&b.pid) {
            Some(s) if b.epoch < s.epoch => {}
            Some(s) if b.epoch == s.epoch => {
                if b.base >= s.next && !s.batches.iter().any(|x| x.base == b.base) {
                    s.batches.push(b);
                    let excess = s.batches.len().saturating_sub(5);
                    s.batches.drain(..excess);
                    s.next = b.base + b.count;
                }
            }
            _ => {
                state.insert(
                    b.pid,
                    Seq {
                        epoch: b.epoch,
                        next: b.base + b.count,
                        batches: vec![b],
                    },
                );
            }
        }
    }
    state
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Next,
    Duplicate,
    OutOfOrder,
    Fenced,
}

fn judge(state: &HashMap<u64, Seq>, b: &Batch) -> Verdict {
    let Some(s) = state.get(&b.pid) else {
        return if b.base == 0 {
            Verdict::Next
        } else {
            Verdict::OutOfOrder
        };
    };
    if b.epoch < s.epoch {
        return Verdict::Fenced;
    }
    if b.epoch > s.epoch {
        return if b.base == 0 {
            Verdict::Next
        } else {
            Verdict::OutOfOrder
        };
    }
    if let Some(x) = s.batches.iter().find(|x| x.base == b.base) {
        return if x.count == b.count && x.id == b.id {
            Verdict::Duplicate
        } else {
            Verdict::OutOfOrder
        };
    }
    match b.base.cmp(&s.next) {
        std::cmp::Ordering::Equal => Verdict::Next,
        std::cmp::Ordering::Greater => Verdict::OutOfOrder,
        std::cmp::Ordering::Less => Verdict::Fenced,
    }
}

/// How long a proposal may stay unanswered before the write treats its outcome as unknown.
const PROPOSE_TIMEOUT_MS: u64 = 150;

struct Slot {
    batch: Batch,
    ticket: usize,
    proposed_at: u64,
    /// Committed and acknowledged; held until applied.
    acked: bool,
    /// The outcome is unknown: the slot stays until the master applied this far.
    settle_to: Option<u64>,
}

/// One mastership with its slots.
struct Master {
    id: u64,
    term: u64,
    slots: HashMap<u64, Slot>,
}

enum Answer {
    Ack,
    Wait,
    Refused(Verdict),
}

struct Producer {
    pid: u64,
    epoch: u32,
    next: u64,
    current: Option<(Batch, u32)>,
    /// The last batch was given up with an unknown outcome: the next one takes a new epoch.
    stale: bool,
    acked: Vec<u64>,
}

/// Keeps the mastership current and resolves slots; returns batches acknowledged.
fn step_master(c: &mut Cluster, master: &mut Option<Master>) -> Vec<u64> {
    if let Some(m) = master.as_ref() {
        let leads = c
            .role(m.id)
            .is_some_and(|r| r.role == Role::Leader && r.term == m.term);
        if !leads {
            *master = None;
        }
    }
    if master.is_none() {
        let id = c.master();
        if let Some(role) = id.and_then(|id| c.role(id)) {
            *master = Some(Master {
                id: role.id,
                term: role.term,
                slots: HashMap::new(),
            });
        }
    }
    let Some(m) = master.as_mut() else {
        return Vec::new();
    };
    c.poll_tickets();
    let applied_to = c.recorder(m.id).applied;
    let last = c.node(m.id).map_or(0, |n| n.status().last_index);
    let mut acked = Vec::new();
    let now = c.now;
    m.slots.retain(|_, s| {
        match c.outcome(s.ticket) {
            Some(Ok(e)) if s.settle_to.is_none() => {
                if !s.acked {
                    s.acked = true;
                    acked.push(s.batch.id);
                }
                return applied_to < e.index;
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
    acked
}

fn handle(c: &mut Cluster, master: &mut Option<Master>, b: Batch) -> Answer {
    let Some(m) = master.as_mut() else {
        return Answer::Wait;
    };
    let follows = match m.slots.get(&b.pid) {
        Some(s) => {
            let next =
                s.acked && b.epoch == s.batch.epoch && b.base == s.batch.base + s.batch.count;
            if !next {
                // The same batch waits for its first attempt's outcome (another one is told
                // to retry).
                return Answer::Wait;
            }
            true
        }
        None => false,
    };
    let verdict = match follows {
        true => Verdict::Next,
        false => judge(&applied(c, m.id), &b),
    };
    match verdict {
        Verdict::Next => {
            let ticket = c.propose(m.id, b.encode());
            m.slots.insert(
                b.pid,
                Slot {
                    batch: b,
                    ticket,
                    proposed_at: c.now,
                    acked: false,
                    settle_to: None,
                },
            );
            Answer::Wait
        }
        Verdict::Duplicate => Answer::Ack,
        v => Answer::Refused(v),
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
    let mut master: Option<Master> = None;
    let mut producers: Vec<Producer> = (1..=3)
        .map(|pid| Producer {
            pid,
            epoch: 0,
            next: 0,
            current: None,
            stale: false,
            acked: Vec::new(),
        })
        .collect();
    let mut next_id = 0u64;
    let mut abandoned = 0;
    let mut step = |c: &mut Cluster,
                    master: &mut Option<Master>,
                    producers: &mut Vec<Producer>,
                    open: bool| {
        let done = step_master(c, master);
        for p in producers.iter_mut() {
            if let Some((b, _)) = p.current.filter(|(b, _)| done.contains(&b.id)) {
                p.acked.push(b.id);
                p.next = b.base + b.count;
                p.current = None;
            }
            if p.current.is_none() && open {
                if std::mem::take(&mut p.stale) {
                    p.epoch += 1;
                    p.next = 0;
                }
                next_id += 1;
                let count = c.rng.gen_range(1..4);
                p.current = Some((
                    Batch {
                        pid: p.pid,
                        epoch: p.epoch,
                        base: p.next,
                        count,
                        id: next_id,
                    },
                    0,
                ));
            }
            let Some((b, tries)) = p.current.as_mut() else {
                continue;
            };
            *tries += 1;
            let b = *b;
            match handle(c, master, b) {
                Answer::Ack => {
                    p.acked.push(b.id);
                    p.next = b.base + b.count;
                    p.current = None;
                }
                Answer::Wait => {
                    // Now and then a producer gives up on a batch (its send timed out for
                    // good): its outcome stays unknown.
                    if open && *tries > 30 && c.rng.gen_bool(0.05) {
                        p.current = None;
                        p.stale = true;
                        abandoned += 1;
                    }
                }
                Answer::Refused(Verdict::OutOfOrder) => {
                    // Not stored: numbered again at a new epoch.
                    p.epoch += 1;
                    p.current = Some((
                        Batch {
                            epoch: p.epoch,
                            base: 0,
                            ..b
                        },
                        0,
                    ));
                }
                Answer::Refused(_) => {
                    p.current = None;
                    p.stale = true;
                    abandoned += 1;
                }
            }
        }
    };
    for _ in 0..400 {
        let roll = c.rng.gen_range(0..100);
        c.random_fault(roll);
        step(&mut c, &mut master, &mut producers, true);
        let pause = c.rng.gen_range(1..60);
        c.run_for(pause);
    }
    // Heal; every producer finishes the batch it has out.
    c.heal();
    for id in ids.clone() {
        c.restart(id);
    }
    for _ in 0..600 {
        if producers.iter().all(|p| p.current.is_none()) {
            break;
        }
        step(&mut c, &mut master, &mut producers, false);
        c.run_for(30);
    }
    if producers.iter().any(|p| p.current.is_some()) {
        return Err("batches still unacknowledged after healing".into());
    }

    // The committed log decides: no batch twice, every acknowledged batch once.
    let global = c.check_safety()?;
    let mut committed: HashMap<u64, usize> = HashMap::new();
    for (_, (_, data)) in global {
        if let Some(b) = Batch::decode(&data) {
            *committed.entry(b.id).or_default() += 1;
        }
    }
    if let Some((id, n)) = committed.iter().find(|(_, n)| **n > 1) {
        return Err(format!("batch {id} committed {n} times"));
    }
    let acked: Vec<u64> = producers.iter().flat_map(|p| p.acked.clone()).collect();
    if let Some(id) = acked.iter().find(|id| !committed.contains_key(id)) {
        return Err(format!("batch {id} acknowledged but not committed"));
    }
    Ok((acked.len(), committed.len(), abandoned))
}

#[test]
fn no_batch_is_committed_twice_and_every_acknowledged_one_is_committed() {
    let (runs, [acked, committed, abandoned]) =
        raft_sim::seeded_runs("RAFT_IDEMPOTENCE_RUNS", 100, one_run);
    eprintln!(
        "{runs} runs: {acked} batches acknowledged, {committed} committed, {abandoned} given up"
    );
    assert!(
        acked > 0 && abandoned > 0,
        "the runs exercised both outcomes"
    );
}
