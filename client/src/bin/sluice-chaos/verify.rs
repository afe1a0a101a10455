//! The end-of-run checks: every acknowledged message against what the consumers received and
//! what the final log holds, and each producer's ack order against the stored order.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::ledger::{MsgId, Position, Record};

/// One queue of the final log: (offset, this run's message at it, if any).
pub type QueueLog = Vec<(u64, Option<MsgId>)>;

/// Most examples listed per kind of violation.
const SAMPLES: usize = 20;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Findings {
    /// Distinct messages acknowledged to a producer.
    pub acked: u64,
    /// Distinct messages of this run the consumers received.
    pub consumed: u64,
    /// Received but never acknowledged (a send that failed or timed out was stored anyway).
    pub consumed_unacked: u64,
    /// Acknowledged but never received by a consumer.
    pub lost: u64,
    /// Of the lost ones, how many the final log does hold (a consumer-side loss).
    pub lost_but_in_log: u64,
    /// Acknowledged but absent from the final log.
    pub missing_from_log: u64,
    /// Acknowledged at one position but stored at another (or the position holds another).
    pub moved: u64,
    /// Messages stored at more than one position (a retried send whose first attempt was
    /// stored without an ack reaching the producer), counted once per extra copy.
    pub duplicated: u64,
    /// Deliveries of a position already delivered (at-least-once after failovers and
    /// rebalances).
    pub redelivered: u64,
    /// Deliveries to a member of an offset below one it already received on that queue.
    pub out_of_order: u64,
    /// A position delivered with two different messages.
    pub conflicting_deliveries: u64,
    /// Two sends of one producer, the second started after the first was acknowledged, whose
    /// acknowledged offsets in one queue are not in that order.
    pub reordered: u64,
    /// Examples of each violation, for the report.
    pub samples: BTreeMap<String, Vec<String>>,
}

impl Findings {
    /// Acknowledged data lost, moved or reordered: the run fails.
    pub fn violations(&self) -> u64 {
        self.lost
            + self.missing_from_log
            + self.moved
            + self.out_of_order
            + self.conflicting_deliveries
            + self.reordered
    }

    fn sample(&mut self, kind: &str, text: String) {
        let v = self.samples.entry(kind.to_string()).or_default();
        if v.len() < SAMPLES {
            v.push(text);
        }
    }
}

/// Checks the record against the final log (`logs[(group, queue)]`, read from the master).
pub fn check(rec: &Record, logs: &HashMap<(u16, u32), QueueLog>) -> Findings {
    let mut f = Findings {
        acked: rec.acks.len() as u64,
        consumed: rec.consumed.len() as u64,
        out_of_order: rec.out_of_order,
        conflicting_deliveries: rec.conflicts,
        ..Findings::default()
    };
    for s in &rec.out_of_order_samples {
        f.sample("out_of_order", s.clone());
    }
    for s in &rec.conflict_samples {
        f.sample("conflicting_deliveries", s.clone());
    }
    f.consumed_unacked = rec
        .consumed
        .iter()
        .filter(|id| !rec.acks.contains_key(id))
        .count() as u64;
    f.redelivered = rec
        .delivered
        .values()
        .map(|d| u64::from(d.times.saturating_sub(1)))
        .sum();

    // Where the final log stores each message of this run.
    let mut stored: HashMap<MsgId, Vec<Position>> = HashMap::new();
    for (&(group, queue), log) in logs {
        for &(offset, id) in log {
            if let Some(id) = id {
                stored.entry(id).or_default().push(Position {
                    group,
                    queue,
                    offset,
                });
            }
        }
    }
    f.duplicated = stored.values().map(|p| p.len() as u64 - 1).sum();

    // Sorted, so the samples and the order check are deterministic.
    let mut acks: Vec<(&MsgId, &Position)> = rec.acks.iter().collect();
    acks.sort();
    for &(id, at) in &acks {
        let in_log = stored.get(id);
        if !rec.consumed.contains(id) {
            f.lost += 1;
            if in_log.is_some() {
                f.lost_but_in_log += 1;
            }
            f.sample(
                "lost",
                format!("{id} acked at {at:?}; in the final log: {in_log:?}"),
            );
        }
        match in_log {
            None => {
                f.missing_from_log += 1;
                f.sample("missing_from_log", format!("{id} acked at {at:?}"));
            }
            Some(positions) if !positions.contains(at) => {
                f.moved += 1;
                f.sample(
                    "moved",
                    format!("{id} acked at {at:?}, stored at {positions:?}"),
                );
            }
            Some(_) => {}
        }
    }

    // A producer sends one message at a time: in each queue its acked offsets must grow in
    // sequence order.
    let mut last: HashMap<(u32, u16, u32), (u64, u64)> = HashMap::new();
    for &(id, at) in &acks {
        let key = (id.producer, at.group, at.queue);
        if let Some(&(seq, offset)) = last.get(&key) {
            if at.offset <= offset {
                f.reordered += 1;
                f.sample(
                    "reordered",
                    format!(
                        "producer {} seq {} acked at {at:?}, not after seq {seq} at offset {offset}",
                        id.producer, id.seq
                    ),
                );
            }
        }
        last.insert(key, (id.seq, at.offset));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::fixtures::{id, pos};
    use crate::ledger::Delivered;

    fn record(acks: &[(MsgId, Position)], consumed: &[MsgId]) -> Record {
        let mut r = Record::default();
        for &(i, p) in acks {
            r.acks.insert(i, p);
        }
        for &i in consumed {
            r.consumed.insert(i);
        }
        r
    }

    fn logs(entries: &[(u32, u64, MsgId)]) -> HashMap<(u16, u32), QueueLog> {
        let mut m: HashMap<(u16, u32), QueueLog> = HashMap::new();
        for &(q, off, i) in entries {
            m.entry((0, q)).or_default().push((off, Some(i)));
        }
        m
    }

    #[test]
    fn clean_run_has_no_violations() {
        let (a, b) = (id(0, 1), id(0, 2));
        let rec = record(&[(a, pos(0, 0)), (b, pos(0, 1))], &[a, b]);
        let f = check(&rec, &logs(&[(0, 0, a), (0, 1, b)]));
        assert_eq!(f.violations(), 0, "{f:?}");
        assert_eq!((f.acked, f.consumed, f.duplicated), (2, 2, 0));
    }

    #[test]
    fn finds_lost_moved_duplicated_and_reordered() {
        let (a, b, c, d) = (id(0, 1), id(0, 2), id(1, 1), id(1, 2));
        // a: fine. b: acked at q0/1 but stored at q0/0 too late... reordered before a.
        // c: acked, never consumed, absent from the log. d: stored twice, consumed.
        let mut rec = record(
            &[
                (a, pos(0, 5)),
                (b, pos(0, 4)),
                (c, pos(1, 0)),
                (d, pos(1, 1)),
            ],
            &[a, b, d, id(2, 9)],
        );
        rec.delivered.insert(
            pos(1, 1),
            Delivered {
                id: d,
                members: 1,
                times: 3,
            },
        );
        let f = check(
            &rec,
            &logs(&[(0, 4, b), (0, 5, a), (1, 1, d), (1, 2, d), (1, 3, id(2, 9))]),
        );
        assert_eq!(f.lost, 1);
        assert_eq!(f.missing_from_log, 1);
        assert_eq!(f.lost_but_in_log, 0);
        assert_eq!(f.reordered, 1);
        assert_eq!(f.moved, 0);
        assert_eq!(f.duplicated, 1);
        assert_eq!(f.redelivered, 2);
        assert_eq!(f.consumed_unacked, 1);
        assert_eq!(f.violations(), 3);
        assert!(f.samples["lost"][0].contains("p1-1"));
    }

    #[test]
    fn a_message_not_at_its_acked_offset_is_moved() {
        let a = id(0, 1);
        let rec = record(&[(a, pos(0, 3))], &[a]);
        let f = check(&rec, &logs(&[(0, 7, a)]));
        assert_eq!((f.moved, f.lost, f.missing_from_log), (1, 0, 0));
        // Consumed once but now gone from the log.
        let f = check(&rec, &HashMap::new());
        assert_eq!((f.moved, f.lost, f.missing_from_log), (0, 0, 1));
    }
}
