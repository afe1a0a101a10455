//! The messaging features under attack: a share of the messages is sent delayed (due within
//! `max_delay`), a share is failed by the consumer N times (N random, some past the group's
//! retry budget). One task owns what is recorded; the end-of-run audit checks every delayed
//! message was delivered by its timer once and not before it was due, and every failing
//! message came back with the right attempt count and reached the dead-letter queue exactly
//! when its failures exceeded the budget.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::ledger::MsgId;

/// What a message is for in this run, from the tag in its body (`RUN:P:SEQ:KIND:...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain,
    Delayed,
    /// The consumer fails it this many times.
    Failing(u32),
    /// Sent in a transaction with this fate.
    Tx(crate::txmix::Fate),
}

impl Kind {
    pub fn tag(self) -> String {
        match self {
            Kind::Plain => "p".into(),
            Kind::Delayed => "d".into(),
            Kind::Failing(n) => format!("f{n}"),
            Kind::Tx(f) => f.tag().into(),
        }
    }

    /// The kind a body written for `run` carries (plain when it carries none).
    pub fn of(run: &str, body: &[u8]) -> Kind {
        let Ok(text) = std::str::from_utf8(body) else {
            return Kind::Plain;
        };
        let mut parts = text.splitn(5, ':');
        if parts.next() != Some(run) {
            return Kind::Plain;
        }
        match parts.nth(2) {
            Some("d") => Kind::Delayed,
            Some(t) if t.starts_with('t') => {
                crate::txmix::Fate::of_tag(t).map_or(Kind::Plain, Kind::Tx)
            }
            Some(f) if f.starts_with('f') => f[1..].parse().map_or(Kind::Plain, Kind::Failing),
            _ => Kind::Plain,
        }
    }
}

/// The knobs.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub delayed_share: f64,
    pub fail_share: f64,
    /// Share of messages sent in transactions.
    pub tx_share: f64,
    pub max_delay: Duration,
    /// The consumer group's retry budget (set at the start of the run).
    pub max_retries: u32,
}

impl Mix {
    pub fn active(&self) -> bool {
        self.delayed_share > 0.0 || self.fail_share > 0.0 || self.tx_share > 0.0
    }

    /// The kind of the next message, and its delay when delayed.
    pub fn draw(&self) -> (Kind, Duration) {
        let mut rng = rand::thread_rng();
        let x: f64 = rng.gen();
        if x < self.delayed_share {
            let ms = rng.gen_range(0..=self.max_delay.as_millis() as u64);
            return (Kind::Delayed, Duration::from_millis(ms));
        }
        if x < self.delayed_share + self.fail_share {
            return (
                Kind::Failing(rng.gen_range(1..=self.max_retries + 2)),
                Duration::ZERO,
            );
        }
        if x < self.delayed_share + self.fail_share + self.tx_share {
            return (Kind::Tx(crate::txmix::Fate::draw()), Duration::ZERO);
        }
        (Kind::Plain, Duration::ZERO)
    }
}

#[derive(Debug)]
pub enum FEvent {
    /// A delayed message was acknowledged, due at `due_ms` (the broker's clock).
    DelayedAcked {
        id: MsgId,
        due_ms: i64,
    },
    /// A consumer received a delayed message: stored at `store_ms`, by timer `timer_of`, at
    /// this position (group, queue, offset).
    DelayedDelivered {
        id: MsgId,
        store_ms: i64,
        due_ms: i64,
        timer_of: String,
        at: At,
    },
    /// A failing message (to be failed `fails` times) was acknowledged.
    FailingAcked {
        id: MsgId,
        fails: u32,
    },
    /// A consumer saw attempt `attempt` (its reconsume count) of a failing message.
    Attempt {
        id: MsgId,
        attempt: u32,
        succeeded: bool,
    },
    /// The broker put it on the dead-letter topic after `attempts` attempts.
    DeadLettered {
        id: MsgId,
        attempts: u32,
    },
    /// A nack that kept failing: the message's retry path is broken.
    NackFailed {
        id: MsgId,
    },
    /// A transaction's message: its half was acknowledged (and its fate is not a commit by
    /// the producer), or its commit was (`committed`), or the commit failed.
    TxSent {
        id: MsgId,
        fate: crate::txmix::Fate,
        committed: Option<bool>,
    },
    /// A consumer received a rolled-back or abandoned transaction's message.
    TxDelivered {
        id: MsgId,
    },
    Pending(oneshot::Sender<(u64, u64)>),
    Finish(oneshot::Sender<Tracker>),
}

/// Where a delivered copy was: group, queue, offset.
type At = (u16, u32, u64);

#[derive(Debug, Default)]
pub struct Tracker {
    delayed: HashMap<MsgId, i64>,
    /// id -> (timer, position) of every delivery.
    delayed_seen: HashMap<MsgId, HashSet<(String, At)>>,
    early: u64,
    early_samples: Vec<String>,
    failing: HashMap<MsgId, u32>,
    attempts: HashMap<MsgId, BTreeMap<u32, bool>>,
    dead: HashMap<MsgId, u32>,
    nack_failed: HashSet<MsgId>,
    tx: crate::txmix::TxTracker,
}

impl Tracker {
    fn apply(&mut self, e: FEvent) {
        match e {
            FEvent::DelayedAcked { id, due_ms } => {
                self.delayed.insert(id, due_ms);
            }
            FEvent::DelayedDelivered {
                id,
                store_ms,
                due_ms,
                timer_of,
                at,
            } => {
                if store_ms < due_ms {
                    self.early += 1;
                    if self.early_samples.len() < 20 {
                        self.early_samples
                            .push(format!("{id} stored {} ms before due", due_ms - store_ms));
                    }
                }
                self.delayed_seen
                    .entry(id)
                    .or_default()
                    .insert((timer_of, at));
            }
            FEvent::FailingAcked { id, fails } => {
                self.failing.insert(id, fails);
            }
            FEvent::Attempt {
                id,
                attempt,
                succeeded,
            } => {
                let e = self
                    .attempts
                    .entry(id)
                    .or_default()
                    .entry(attempt)
                    .or_insert(false);
                *e |= succeeded;
            }
            FEvent::DeadLettered { id, attempts } => {
                self.dead.insert(id, attempts);
            }
            FEvent::NackFailed { id } => {
                self.nack_failed.insert(id);
            }
            FEvent::TxSent {
                id,
                fate,
                committed,
            } => match committed {
                Some(true) => self.tx.committed += 1,
                Some(false) => self.tx.commit_failed += 1,
                None => {
                    self.tx.expected.insert(id, fate);
                }
            },
            FEvent::TxDelivered { id } => {
                *self.tx.delivered.entry(id).or_insert(0) += 1;
            }
            FEvent::Pending(_) | FEvent::Finish(_) => {}
        }
    }

    /// (delayed acknowledged and not delivered yet, failing ones not settled yet).
    fn pending(&self) -> (u64, u64) {
        let delayed = self
            .delayed
            .keys()
            .filter(|id| !self.delayed_seen.contains_key(id))
            .count() as u64;
        let failing = self.failing.keys().filter(|id| !self.settled(id)).count() as u64;
        // Abandoned transactions the checker is to commit count with the delayed ones.
        (delayed + self.tx.pending(), failing)
    }

    fn settled(&self, id: &MsgId) -> bool {
        self.dead.contains_key(id)
            || self
                .attempts
                .get(id)
                .is_some_and(|a| a.values().any(|ok| *ok))
    }
}

/// Starts the owner task; returns its channel.
pub fn start() -> mpsc::UnboundedSender<FEvent> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut t = Tracker::default();
        while let Some(e) = rx.recv().await {
            match e {
                FEvent::Pending(reply) => {
                    let _ = reply.send(t.pending());
                }
                FEvent::Finish(reply) => {
                    let _ = reply.send(std::mem::take(&mut t));
                    return;
                }
                e => t.apply(e),
            }
        }
    });
    tx
}

pub async fn pending(tx: &mpsc::UnboundedSender<FEvent>) -> Option<(u64, u64)> {
    let (reply, rx) = oneshot::channel();
    tx.send(FEvent::Pending(reply)).ok()?;
    rx.await.ok()
}

pub async fn finish(tx: &mpsc::UnboundedSender<FEvent>) -> Option<Tracker> {
    let (reply, rx) = oneshot::channel();
    tx.send(FEvent::Finish(reply)).ok()?;
    rx.await.ok()
}

/// Waits until every delayed message was delivered and every failing one settled, or nothing
/// moved for `patience`.
pub async fn drain(tx: &mpsc::UnboundedSender<FEvent>, patience: Duration) -> anyhow::Result<()> {
    let mut last = None;
    let mut since = std::time::Instant::now();
    loop {
        let Some(now) = pending(tx).await else {
            anyhow::bail!("the feature tracker is gone");
        };
        if now == (0, 0) {
            return Ok(());
        }
        if last != Some(now) {
            last = Some(now);
            since = std::time::Instant::now();
        } else if since.elapsed() > patience {
            anyhow::bail!(
                "{} delayed messages undelivered and {} failing messages unsettled after {patience:?} without progress",
                now.0,
                now.1
            );
        }
        // Polling the tracker: its counts are what is awaited.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct FeatureFindings {
    pub delayed_acked: u64,
    pub delayed_delivered: u64,
    /// Acknowledged delayed messages no consumer received.
    pub delayed_lost: u64,
    /// One timer delivered at two positions.
    pub delayed_duplicated: u64,
    /// Stored copies from a producer's retried send (two timers for one message): a
    /// violation with idempotent producers.
    pub delayed_send_retries: u64,
    pub delayed_early: u64,
    pub failing_acked: u64,
    pub failing_succeeded: u64,
    pub failing_dead_lettered: u64,
    /// Neither succeeded nor dead-lettered.
    pub failing_lost: u64,
    /// Dead-lettered within the budget, succeeded past it, or a wrong attempt count.
    pub failing_wrong: u64,
    pub nack_failures: u64,
    #[serde(flatten)]
    pub tx: crate::txmix::TxFindings,
    pub samples: BTreeMap<String, Vec<String>>,
}

impl FeatureFindings {
    pub fn violations(&self) -> u64 {
        self.delayed_lost
            + self.delayed_duplicated
            + self.delayed_early
            + self.failing_lost
            + self.failing_wrong
            + self.nack_failures
            + self.tx.violations()
    }

    fn sample(&mut self, kind: &str, text: String) {
        let v = self.samples.entry(kind.into()).or_default();
        if v.len() < 20 {
            v.push(text);
        }
    }
}

/// The audit, with the group's retry budget.
pub fn check(t: &Tracker, max_retries: u32) -> FeatureFindings {
    let mut f = FeatureFindings {
        delayed_acked: t.delayed.len() as u64,
        delayed_early: t.early,
        failing_acked: t.failing.len() as u64,
        nack_failures: t.nack_failed.len() as u64,
        ..Default::default()
    };
    for s in &t.early_samples {
        f.sample("delayed_early", s.clone());
    }
    let mut ids: Vec<&MsgId> = t.delayed.keys().collect();
    ids.sort();
    for id in ids {
        let Some(seen) = t.delayed_seen.get(id) else {
            f.delayed_lost += 1;
            f.sample("delayed_lost", format!("{id}"));
            continue;
        };
        f.delayed_delivered += 1;
        let mut per_timer: HashMap<&str, HashSet<At>> = HashMap::new();
        for (timer, at) in seen {
            per_timer.entry(timer.as_str()).or_default().insert(*at);
        }
        f.delayed_send_retries += per_timer.len() as u64 - 1;
        for (timer, at) in per_timer {
            if at.len() > 1 {
                f.delayed_duplicated += 1;
                f.sample(
                    "delayed_duplicated",
                    format!("{id} timer {timer} at {at:?}"),
                );
            }
        }
    }
    let mut ids: Vec<(&MsgId, &u32)> = t.failing.iter().collect();
    ids.sort();
    for (id, &fails) in ids {
        let attempts = t.attempts.get(id);
        let success = attempts.and_then(|a| a.iter().find(|(_, ok)| **ok).map(|(n, _)| *n));
        match (t.dead.get(id), success) {
            (Some(&n), None) => {
                f.failing_dead_lettered += 1;
                if fails <= max_retries || n != max_retries + 1 {
                    f.failing_wrong += 1;
                    f.sample(
                        "failing_wrong",
                        format!("{id}: to fail {fails} times, dead-lettered after {n} attempts"),
                    );
                }
            }
            (None, Some(n)) => {
                f.failing_succeeded += 1;
                if n != fails || fails > max_retries {
                    f.failing_wrong += 1;
                    f.sample(
                        "failing_wrong",
                        format!("{id}: to fail {fails} times, succeeded at attempt {n}"),
                    );
                }
            }
            (Some(_), Some(n)) => {
                f.failing_wrong += 1;
                f.sample(
                    "failing_wrong",
                    format!("{id}: dead-lettered and succeeded at {n}"),
                );
            }
            (None, None) => {
                f.failing_lost += 1;
                f.sample(
                    "failing_lost",
                    format!("{id}: to fail {fails} times; attempts seen {attempts:?}"),
                );
            }
        }
    }
    let mut samples = Vec::new();
    f.tx = crate::txmix::check(&t.tx, &mut |k: &str, v: String| {
        samples.push((k.to_string(), v))
    });
    for (k, v) in samples {
        f.sample(&k, v);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> MsgId {
        MsgId { producer: 1, seq }
    }

    #[test]
    fn kinds_travel_in_the_body() {
        for k in [Kind::Plain, Kind::Delayed, Kind::Failing(3)] {
            let mut body = format!("run:1:2:{}:", k.tag()).into_bytes();
            body.resize(64, b'.');
            assert_eq!(Kind::of("run", &body), k);
            assert_eq!(MsgId::parse("run", &body), Some(id(2)));
        }
        assert_eq!(Kind::of("other", b"run:1:2:d:"), Kind::Plain);
    }

    #[test]
    fn the_audit_finds_each_violation() {
        let mut t = Tracker::default();
        let ev = |t: &mut Tracker, e| t.apply(e);
        ev(
            &mut t,
            FEvent::DelayedAcked {
                id: id(1),
                due_ms: 100,
            },
        );
        ev(
            &mut t,
            FEvent::DelayedAcked {
                id: id(2),
                due_ms: 100,
            },
        );
        ev(
            &mut t,
            FEvent::DelayedAcked {
                id: id(3),
                due_ms: 100,
            },
        );
        let at = |o| (0u16, 0u32, o);
        let seen = |id, store, timer: &str, o| FEvent::DelayedDelivered {
            id,
            store_ms: store,
            due_ms: 100,
            timer_of: timer.into(),
            at: at(o),
        };
        ev(&mut t, seen(id(1), 100, "t1", 5));
        ev(&mut t, seen(id(1), 100, "t1", 5)); // redelivery of one position: fine
        ev(&mut t, seen(id(2), 99, "t2", 6)); // early
        ev(&mut t, seen(id(2), 101, "t2", 7)); // the same timer twice
                                               // id 3 never delivered.
        ev(
            &mut t,
            FEvent::FailingAcked {
                id: id(10),
                fails: 2,
            },
        );
        ev(
            &mut t,
            FEvent::Attempt {
                id: id(10),
                attempt: 0,
                succeeded: false,
            },
        );
        ev(
            &mut t,
            FEvent::Attempt {
                id: id(10),
                attempt: 2,
                succeeded: true,
            },
        );
        ev(
            &mut t,
            FEvent::FailingAcked {
                id: id(11),
                fails: 5,
            },
        );
        ev(
            &mut t,
            FEvent::DeadLettered {
                id: id(11),
                attempts: 4,
            },
        );
        ev(
            &mut t,
            FEvent::FailingAcked {
                id: id(12),
                fails: 2,
            },
        );
        ev(
            &mut t,
            FEvent::DeadLettered {
                id: id(12),
                attempts: 4,
            },
        );
        ev(
            &mut t,
            FEvent::FailingAcked {
                id: id(13),
                fails: 1,
            },
        );
        assert_eq!(t.pending(), (1, 1));
        let f = check(&t, 3);
        assert_eq!(
            (f.delayed_lost, f.delayed_early, f.delayed_duplicated),
            (1, 1, 1)
        );
        assert_eq!((f.failing_succeeded, f.failing_dead_lettered), (1, 2));
        assert_eq!((f.failing_wrong, f.failing_lost), (1, 1));
        assert_eq!(f.violations(), 5);
    }
}
