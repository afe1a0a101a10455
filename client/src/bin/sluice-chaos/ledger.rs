//! The record of a chaos run: every acknowledged send and every delivery, kept by one task
//! (the only owner) that producers, consumers and the fault loop talk to over a channel.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

/// A chaos message's identity: which producer sent it and its sequence number there. The
/// body carries it as `RUN:PRODUCER:SEQ` (padded), so redeliveries and stored duplicates of
/// one send are recognised whatever message id the broker shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId {
    pub producer: u32,
    pub seq: u64,
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}-{}", self.producer, self.seq)
    }
}

impl MsgId {
    /// The body of this message: `RUN:PRODUCER:SEQ:` padded with dots to `size` bytes.
    #[cfg(test)]
    pub fn body(&self, run: &str, size: usize) -> Vec<u8> {
        let mut b = format!("{run}:{}:{}:", self.producer, self.seq).into_bytes();
        if b.len() < size {
            b.resize(size, b'.');
        }
        b
    }

    /// [`MsgId::body`] with a tag after the sequence number (`RUN:PRODUCER:SEQ:TAG:`).
    pub fn body_tagged(&self, run: &str, tag: &str, size: usize) -> Vec<u8> {
        let mut b = format!("{run}:{}:{}:{tag}:", self.producer, self.seq).into_bytes();
        if b.len() < size {
            b.resize(size, b'.');
        }
        b
    }

    /// Reads a body written by [`MsgId::body`] for `run`; `None` for anything else.
    pub fn parse(run: &str, body: &[u8]) -> Option<MsgId> {
        let text = std::str::from_utf8(body).ok()?;
        let mut parts = text.splitn(4, ':');
        if parts.next()? != run {
            return None;
        }
        let producer = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        parts.next()?;
        Some(MsgId { producer, seq })
    }
}

/// Where a message is stored: broker group (index into the run's group list), queue, offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub group: u16,
    pub queue: u32,
    pub offset: u64,
}

#[derive(Debug)]
pub enum Event {
    Ack {
        id: MsgId,
        at: Position,
        started: Instant,
        acked: Instant,
    },
    SendFailed,
    Delivery {
        member: u32,
        id: MsgId,
        at: Position,
    },
    /// A delivered message whose body is not one of this run's.
    Foreign,
    ConsumeError,
    /// Answer with the ack time of the first ack on `group` whose send started at or after
    /// `since`, as soon as there is one.
    FirstAckSince {
        group: u16,
        since: Instant,
        reply: oneshot::Sender<Instant>,
    },
    /// Answer once `count` more sends to `group` were acknowledged.
    AcksAfter {
        group: u16,
        count: u64,
        reply: oneshot::Sender<()>,
    },
    Counts(oneshot::Sender<Counts>),
    /// Stop and hand the whole record over.
    Finish(oneshot::Sender<Record>),
}

/// Running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub acked: u64,
    pub send_failures: u64,
    pub deliveries: u64,
    /// Acknowledged messages no consumer has received yet.
    pub acked_unconsumed: u64,
}

/// What a delivered position held and who received it.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    pub id: MsgId,
    /// Bit `m` set: member `m` received it.
    pub members: u64,
    pub times: u32,
}

/// Everything recorded, handed over at the end.
#[derive(Debug, Default)]
pub struct Record {
    pub acks: HashMap<MsgId, Position>,
    pub delivered: HashMap<Position, Delivered>,
    pub consumed: HashSet<MsgId>,
    pub counts: Counts,
    pub foreign: u64,
    pub consume_errors: u64,
    /// Deliveries to a member of an offset below one it had already received for the first
    /// time on that queue (skipping redeliveries of what it saw before).
    pub out_of_order: u64,
    pub out_of_order_samples: Vec<String>,
    /// Deliveries of a position that held another message when first delivered.
    pub conflicts: u64,
    pub conflict_samples: Vec<String>,
}

/// How many recent acks per group are kept to answer `FirstAckSince` for a moment already past.
const RECENT_ACKS: usize = 65_536;
const SAMPLES: usize = 20;

struct Collector {
    rec: Record,
    /// (member, group, queue) -> highest offset first delivered to that member.
    member_high: HashMap<(u32, u16, u32), u64>,
    /// Per group: (started, acked) of recent acks, in arrival order.
    recent: HashMap<u16, VecDeque<(Instant, Instant)>>,
    first_ack_waiters: Vec<(u16, Instant, oneshot::Sender<Instant>)>,
    acks_per_group: HashMap<u16, u64>,
    ack_count_waiters: Vec<(u16, u64, oneshot::Sender<()>)>,
}

/// Starts the collector; returns its event channel.
pub fn start() -> mpsc::UnboundedSender<Event> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut c = Collector {
            rec: Record::default(),
            member_high: HashMap::new(),
            recent: HashMap::new(),
            first_ack_waiters: Vec::new(),
            acks_per_group: HashMap::new(),
            ack_count_waiters: Vec::new(),
        };
        while let Some(ev) = rx.recv().await {
            if !c.handle(ev) {
                return;
            }
        }
    });
    tx
}

impl Collector {
    /// Applies one event; false once the record was handed over.
    fn handle(&mut self, ev: Event) -> bool {
        match ev {
            Event::Ack {
                id,
                at,
                started,
                acked,
            } => self.ack(id, at, started, acked),
            Event::SendFailed => self.rec.counts.send_failures += 1,
            Event::Delivery { member, id, at } => self.delivery(member, id, at),
            Event::Foreign => self.rec.foreign += 1,
            Event::ConsumeError => self.rec.consume_errors += 1,
            Event::FirstAckSince {
                group,
                since,
                reply,
            } => {
                // The ack may already be here: acks with a start at or after `since` were all
                // acknowledged after it, so look back until acks predate it.
                let found = self.recent.get(&group).and_then(|q| {
                    q.iter()
                        .rev()
                        .take_while(|(_, acked)| *acked >= since)
                        .filter(|(started, _)| *started >= since)
                        .map(|(_, acked)| *acked)
                        .min()
                });
                match found {
                    Some(at) => {
                        let _ = reply.send(at);
                    }
                    None => self.first_ack_waiters.push((group, since, reply)),
                }
            }
            Event::AcksAfter {
                group,
                count,
                reply,
            } => {
                let now = self.acks_per_group.get(&group).copied().unwrap_or(0);
                self.ack_count_waiters.push((group, now + count, reply));
                self.wake_count_waiters(group, now);
            }
            Event::Counts(reply) => {
                let _ = reply.send(self.rec.counts);
            }
            Event::Finish(reply) => {
                let _ = reply.send(std::mem::take(&mut self.rec));
                return false;
            }
        }
        true
    }

    fn ack(&mut self, id: MsgId, at: Position, started: Instant, acked: Instant) {
        if self.rec.acks.insert(id, at).is_some() {
            // One send, one ack: a second one would be a producer bug, not counted twice.
            return;
        }
        self.rec.counts.acked += 1;
        if !self.rec.consumed.contains(&id) {
            self.rec.counts.acked_unconsumed += 1;
        }
        let q = self.recent.entry(at.group).or_default();
        q.push_back((started, acked));
        if q.len() > RECENT_ACKS {
            q.pop_front();
        }
        let mut i = 0;
        while i < self.first_ack_waiters.len() {
            let (g, since, _) = &self.first_ack_waiters[i];
            if *g == at.group && started >= *since {
                let (_, _, reply) = self.first_ack_waiters.swap_remove(i);
                let _ = reply.send(acked);
            } else {
                i += 1;
            }
        }
        let n = self.acks_per_group.entry(at.group).or_default();
        *n += 1;
        let n = *n;
        self.wake_count_waiters(at.group, n);
    }

    fn wake_count_waiters(&mut self, group: u16, now: u64) {
        let mut i = 0;
        while i < self.ack_count_waiters.len() {
            let (g, target, _) = &self.ack_count_waiters[i];
            if *g == group && now >= *target {
                let (_, _, reply) = self.ack_count_waiters.swap_remove(i);
                let _ = reply.send(());
            } else {
                i += 1;
            }
        }
    }

    fn delivery(&mut self, member: u32, id: MsgId, at: Position) {
        self.rec.counts.deliveries += 1;
        let bit = 1u64 << member.min(63);
        let entry = self.rec.delivered.entry(at).or_insert(Delivered {
            id,
            members: 0,
            times: 0,
        });
        entry.times += 1;
        let seen_by_member = entry.members & bit != 0;
        entry.members |= bit;
        if entry.id != id {
            // Two different messages delivered for one position: the log changed under a
            // consumer (a committed entry was overwritten).
            self.rec.conflicts += 1;
            if self.rec.conflict_samples.len() < SAMPLES {
                self.rec.conflict_samples.push(format!(
                    "group {} queue {} offset {}: {} and {}",
                    at.group, at.queue, at.offset, entry.id, id
                ));
            }
        }
        if !seen_by_member {
            let high = self
                .member_high
                .entry((member, at.group, at.queue))
                .or_insert(at.offset);
            if at.offset < *high {
                self.rec.out_of_order += 1;
                if self.rec.out_of_order_samples.len() < SAMPLES {
                    self.rec.out_of_order_samples.push(format!(
                        "member {member} got group {} queue {} offset {} after offset {}",
                        at.group, at.queue, at.offset, *high
                    ));
                }
            } else {
                *high = at.offset;
            }
        }
        if self.rec.consumed.insert(id) && self.rec.acks.contains_key(&id) {
            self.rec.counts.acked_unconsumed -= 1;
        }
    }
}

/// A handle on the collector for the fault loop.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::UnboundedSender<Event>,
}

impl Ledger {
    pub fn new(tx: mpsc::UnboundedSender<Event>) -> Self {
        Ledger { tx }
    }

    pub fn sender(&self) -> mpsc::UnboundedSender<Event> {
        self.tx.clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Event) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).ok()?;
        rx.await.ok()
    }

    pub async fn counts(&self) -> Counts {
        self.ask(Event::Counts).await.unwrap_or_default()
    }

    /// Ack time of the first send to `group` that started at or after `since`, waiting at most
    /// `timeout` for it.
    pub async fn first_ack_since(
        &self,
        group: u16,
        since: Instant,
        timeout: Duration,
    ) -> Option<Instant> {
        tokio::time::timeout(
            timeout,
            self.ask(|reply| Event::FirstAckSince {
                group,
                since,
                reply,
            }),
        )
        .await
        .ok()
        .flatten()
    }

    /// Waits (bounded) until `count` more sends to `group` are acknowledged; false on timeout.
    pub async fn acks_after(&self, group: u16, count: u64, timeout: Duration) -> bool {
        tokio::time::timeout(
            timeout,
            self.ask(|reply| Event::AcksAfter {
                group,
                count,
                reply,
            }),
        )
        .await
        .is_ok_and(|r| r.is_some())
    }

    pub async fn finish(&self) -> Option<Record> {
        self.ask(Event::Finish).await
    }
}

/// Message ids and positions for the checkers' tests.
#[cfg(test)]
pub mod fixtures {
    use super::{MsgId, Position};

    pub fn id(producer: u32, seq: u64) -> MsgId {
        MsgId { producer, seq }
    }

    /// A position in broker group 0.
    pub fn pos(queue: u32, offset: u64) -> Position {
        Position {
            group: 0,
            queue,
            offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::pos;
    use super::*;

    #[test]
    fn body_round_trip() {
        let id = MsgId {
            producer: 3,
            seq: 41,
        };
        let body = id.body("r1", 64);
        assert_eq!(body.len(), 64);
        assert_eq!(MsgId::parse("r1", &body), Some(id));
        assert_eq!(MsgId::parse("r2", &body), None);
        assert_eq!(MsgId::parse("r1", b"r1:x:1:"), None);
        assert_eq!(MsgId::parse("r1", b"r1:1:1"), None);
        assert_eq!(MsgId::parse("r1", &[0xff, 0xfe]), None);
        // Short sizes are not truncated.
        assert_eq!(MsgId::parse("r1", &id.body("r1", 0)), Some(id));
    }

    #[tokio::test]
    async fn counts_acks_deliveries_and_order() {
        let ledger = Ledger::new(start());
        let tx = ledger.sender();
        let now = Instant::now();
        let a = MsgId {
            producer: 0,
            seq: 1,
        };
        let b = MsgId {
            producer: 0,
            seq: 2,
        };
        for (id, off) in [(a, 0), (b, 1)] {
            tx.send(Event::Ack {
                id,
                at: pos(0, off),
                started: now,
                acked: now,
            })
            .unwrap();
        }
        // Member 0 sees offset 1 then 0: out of order. Member 1 sees 0 twice: a redelivery.
        for (member, id, off) in [(0, b, 1), (0, a, 0), (1, a, 0), (1, a, 0)] {
            tx.send(Event::Delivery {
                member,
                id,
                at: pos(0, off),
            })
            .unwrap();
        }
        let c = ledger.counts().await;
        assert_eq!((c.acked, c.deliveries, c.acked_unconsumed), (2, 4, 0));
        let rec = ledger.finish().await.unwrap();
        assert_eq!(rec.out_of_order, 1);
        assert_eq!(rec.delivered[&pos(0, 0)].times, 3);
        assert_eq!(rec.delivered[&pos(0, 0)].members, 0b11);
    }

    #[tokio::test]
    async fn first_ack_since_waits_or_looks_back() {
        let ledger = Ledger::new(start());
        let tx = ledger.sender();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(10);
        tx.send(Event::Ack {
            id: MsgId {
                producer: 0,
                seq: 1,
            },
            at: pos(0, 0),
            started: t1,
            acked: t1 + Duration::from_millis(5),
        })
        .unwrap();
        // Already acknowledged: answered from the recent acks.
        let got = ledger
            .first_ack_since(0, t0, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(got, t1 + Duration::from_millis(5));
        // Nothing since a later moment, and nothing on another group.
        let later = t1 + Duration::from_millis(100);
        assert!(ledger
            .first_ack_since(0, later, Duration::from_millis(50))
            .await
            .is_none());
        assert!(ledger
            .first_ack_since(1, t0, Duration::from_millis(50))
            .await
            .is_none());
        // A waiter is answered by a later ack.
        let l2 = ledger.clone();
        let waiter =
            tokio::spawn(async move { l2.first_ack_since(0, later, Duration::from_secs(5)).await });
        let started = later + Duration::from_millis(1);
        // Whichever arrives first, the waiter or the ack, the answer is this ack.
        tx.send(Event::Ack {
            id: MsgId {
                producer: 0,
                seq: 2,
            },
            at: pos(0, 1),
            started,
            acked: started,
        })
        .unwrap();
        assert_eq!(waiter.await.unwrap(), Some(started));
        assert!(ledger.acks_after(0, 0, Duration::from_secs(1)).await);
        assert!(!ledger.acks_after(0, 1, Duration::from_millis(50)).await);
    }
}
