//! `--orderly`: producer i sends every message with its own key `k{i}` (so one key is one
//! producer's sequence), and the consumer group's members are orderly push consumers. Every
//! processing is timed; the end-of-run checks are per-key order (no acknowledged message is
//! processed before an older one of its key in its queue) and one owner per queue (the
//! processing intervals of different consumers on one queue never overlap).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_client::{
    ClientConfig, ConsumerBuilder, OrderlyFailure, ReceivedMessage, StartPosition,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::ledger::{Event, MsgId, Position};
use crate::load::Load;

/// How long the handler takes: long enough that two consumers working one queue at once
/// would show as overlapping intervals.
const HANDLER_TIME: Duration = Duration::from_millis(1);
/// Most examples listed per kind of violation.
const SAMPLES: usize = 10;

/// The key producer `index` sends with.
pub fn key(index: u32) -> String {
    format!("k{index}")
}

/// One processing of a message by a consumer, as its handler saw it.
#[derive(Debug, Clone, Copy)]
pub struct Processed {
    pub member: u32,
    /// Where it was delivered from (broker group index, queue, offset).
    pub at: Position,
    pub id: MsgId,
    pub start: Instant,
    pub end: Instant,
}

/// Starts member `member` of `group` as an orderly push consumer; it records every message to
/// the ledger and to `log`, and shuts down when `stop` turns true.
pub async fn spawn_consumer(
    config: &ClientConfig,
    group: &str,
    load: Load,
    member: u32,
    log: mpsc::UnboundedSender<Processed>,
    mut stop: watch::Receiver<bool>,
) -> sluice_client::Result<JoinHandle<()>> {
    let topic = load.topic.to_string();
    let handler = move |m: ReceivedMessage| {
        let load = load.clone();
        let log = log.clone();
        async move {
            let start = Instant::now();
            tokio::time::sleep(HANDLER_TIME).await;
            let end = Instant::now();
            record(&load, &log, member, &m, start, end);
            // Never fails: a blocked queue would stall the run, and ordering is what is tested.
            Ok::<(), Infallible>(())
        }
    };
    let consumer = ConsumerBuilder::new(config.clone(), group)
        .subscribe(topic)
        .orderly(OrderlyFailure::Block)
        .start_position(StartPosition::Earliest)
        .heartbeat_interval(Duration::from_millis(500))
        .rebalance_interval(Duration::from_secs(1))
        .commit_interval(Duration::from_millis(500))
        .poll_timeout(Duration::from_secs(1))
        .start_push(handler)
        .await?;
    Ok(tokio::spawn(async move {
        // An error means the sender is gone: stop as well.
        let _ = stop.wait_for(|s| *s).await;
        consumer.shutdown().await;
    }))
}

fn record(
    load: &Load,
    log: &mpsc::UnboundedSender<Processed>,
    member: u32,
    m: &ReceivedMessage,
    start: Instant,
    end: Instant,
) {
    let group = load.groups.get(&m.broker_name).copied();
    let (Some(id), Some(group)) = (MsgId::parse(&load.run, m.body()), group) else {
        let _ = load.events.send(Event::Foreign);
        return;
    };
    let at = Position {
        group,
        queue: m.queue_id(),
        offset: m.offset(),
    };
    let _ = load.events.send(Event::Delivery { member, id, at });
    let _ = log.send(Processed {
        member,
        at,
        id,
        start,
        end,
    });
}

/// Everything `log` received so far (call once the consumers are stopped).
pub fn collect(log: &mut mpsc::UnboundedReceiver<Processed>) -> Vec<Processed> {
    log.close();
    let mut all = Vec::new();
    while let Ok(p) = log.try_recv() {
        all.push(p);
    }
    all
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct OrderlyFindings {
    /// Keys (producers) with at least one acknowledged message.
    pub keys: u64,
    /// Processings checked.
    pub deliveries: u64,
    /// Processings per consumer.
    pub by_consumer: BTreeMap<u32, u64>,
    /// Members replaced by new ones (one before every fault cycle).
    pub members_replaced: u64,
    /// Times a queue's next processing was by another consumer than its last (the hand-overs
    /// the overlap check judged).
    pub handovers: u64,
    /// Processings of an acknowledged message while an older acknowledged message of its key,
    /// stored in the same queue, had not been processed yet (skipping ahead).
    pub order_violations: u64,
    /// Processings that started on a queue while another consumer was processing a message of
    /// that queue.
    pub overlap_violations: u64,
    /// Times a key's acknowledged messages changed queue (the route changed under the
    /// producer: a group without master drops out of the writable queues).
    pub key_moves: u64,
    /// Processings ahead of an older message of their key stored in another queue: not ordered
    /// across a key move, so reported but not a violation.
    pub cross_queue_reorders: u64,
    pub samples: BTreeMap<String, Vec<String>>,
}

impl OrderlyFindings {
    pub fn violations(&self) -> u64 {
        self.order_violations + self.overlap_violations
    }

    fn sample(&mut self, kind: &str, text: String) {
        let v = self.samples.entry(kind.to_string()).or_default();
        if v.len() < SAMPLES {
            v.push(text);
        }
    }
}

/// Acknowledged sequence numbers of one stream in order, and how far they were all processed.
#[derive(Default)]
struct Stream {
    seqs: Vec<u64>,
    /// `seqs[..done]` were all processed at least once.
    done: usize,
}

impl Stream {
    /// The oldest acknowledged seq not processed yet, given what was.
    fn oldest_pending(&mut self, producer: u32, processed: &HashSet<MsgId>) -> Option<u64> {
        while let Some(&seq) = self.seqs.get(self.done) {
            if !processed.contains(&MsgId { producer, seq }) {
                return Some(seq);
            }
            self.done += 1;
        }
        None
    }
}

/// Checks the processings against the acknowledged positions (`acks`).
pub fn check(all: &[Processed], acks: &HashMap<MsgId, Position>) -> OrderlyFindings {
    let mut f = OrderlyFindings {
        deliveries: all.len() as u64,
        ..OrderlyFindings::default()
    };
    let mut sorted: Vec<&Processed> = all.iter().collect();
    sorted.sort_by_key(|p| (p.start, p.end, p.member, p.at));
    let base = sorted.first().map_or_else(Instant::now, |p| p.start);
    let rel = |t: Instant| t.saturating_duration_since(base).as_secs_f64() * 1000.0;
    order(&mut f, &sorted, acks, &rel);
    overlaps(&mut f, &sorted, &rel);
    f
}

/// Per-key order: walking the processings by start, an acknowledged message must not come
/// while an older acknowledged one of its key is still unprocessed. A message processed again
/// later (a rewind after a crash or a lock hand-over) is fine; skipping ahead is not. Messages
/// never processed are left out (the lost check reports them), so one loss is not counted
/// again for every later message of its key.
fn order(
    f: &mut OrderlyFindings,
    sorted: &[&Processed],
    acks: &HashMap<MsgId, Position>,
    rel: &dyn Fn(Instant) -> f64,
) {
    let ever: HashSet<MsgId> = sorted.iter().map(|p| p.id).collect();
    let mut acked: Vec<(&MsgId, &Position)> = acks.iter().collect();
    acked.sort();
    let mut by_key: HashMap<u32, Stream> = HashMap::new();
    let mut by_queue: HashMap<(u32, u16, u32), Stream> = HashMap::new();
    let mut last_queue: HashMap<u32, (u16, u32)> = HashMap::new();
    for &(id, at) in &acked {
        let queue = (at.group, at.queue);
        if last_queue
            .insert(id.producer, queue)
            .is_some_and(|q| q != queue)
        {
            f.key_moves += 1;
        }
        if !ever.contains(id) {
            continue;
        }
        by_key.entry(id.producer).or_default().seqs.push(id.seq);
        by_queue
            .entry((id.producer, at.group, at.queue))
            .or_default()
            .seqs
            .push(id.seq);
    }
    f.keys = last_queue.len() as u64;

    let mut processed: HashSet<MsgId> = HashSet::new();
    for p in sorted {
        let Some(at) = acks.get(&p.id) else {
            // Not acknowledged (failed or cut short): no promise about its order.
            continue;
        };
        let producer = p.id.producer;
        let in_queue = by_queue
            .get_mut(&(producer, at.group, at.queue))
            .and_then(|s| s.oldest_pending(producer, &processed));
        let in_key = by_key
            .get_mut(&producer)
            .and_then(|s| s.oldest_pending(producer, &processed));
        match (in_queue, in_key) {
            (Some(older), _) if older < p.id.seq => {
                f.order_violations += 1;
                let older_at = acks.get(&MsgId {
                    producer,
                    seq: older,
                });
                f.sample(
                    "order_violations",
                    format!(
                        "{} (group {} queue {} offset {}) processed by consumer {} at +{:.3} ms before p{producer}-{older} (acked at offset {}) was processed",
                        p.id, p.at.group, p.at.queue, p.at.offset, p.member, rel(p.start),
                        older_at.map_or("?".to_string(), |a| a.offset.to_string()),
                    ),
                );
            }
            (_, Some(older)) if older < p.id.seq => {
                f.cross_queue_reorders += 1;
                f.sample(
                    "cross_queue_reorders",
                    format!(
                        "{} (group {} queue {}) processed at +{:.3} ms before p{producer}-{older} of another queue",
                        p.id, p.at.group, p.at.queue, rel(p.start)
                    ),
                );
            }
            _ => {}
        }
        processed.insert(p.id);
    }
}

/// The latest end so far on a queue of the consumer it belongs to, and of the latest-ending
/// other consumer: enough to know the latest end of anyone but a given consumer.
#[derive(Clone, Copy)]
struct Ends {
    first: Option<(Instant, u32, u64)>,
    second: Option<(Instant, u32, u64)>,
}

impl Ends {
    /// Latest end (with its consumer and offset) among consumers other than `member`.
    fn others(&self, member: u32) -> Option<(Instant, u32, u64)> {
        match self.first {
            Some(x) if x.1 != member => Some(x),
            _ => self.second,
        }
    }

    fn add(&mut self, end: Instant, member: u32, offset: u64) {
        let new = (end, member, offset);
        match self.first {
            Some(f) if f.1 == member => {
                if end > f.0 {
                    self.first = Some(new);
                }
            }
            Some(f) if end > f.0 => {
                self.first = Some(new);
                // The old first is of another consumer; `member`'s own entry (if second) is
                // superseded by the new first.
                self.second = Some(f);
            }
            // `second` is the latest end of anyone but the first's consumer.
            Some(_) => {
                if self.second.is_none_or(|s| end > s.0) {
                    self.second = Some(new);
                }
            }
            None => self.first = Some(new),
        }
    }
}

/// One owner per queue: walking a queue's processings by start, one starting before the
/// latest end so far of another consumer's processing overlaps it.
fn overlaps(f: &mut OrderlyFindings, sorted: &[&Processed], rel: &dyn Fn(Instant) -> f64) {
    let mut queues: HashMap<(u16, u32), (Ends, u32)> = HashMap::new();
    for p in sorted {
        *f.by_consumer.entry(p.member).or_default() += 1;
        let (ends, last) = queues.entry((p.at.group, p.at.queue)).or_insert((
            Ends {
                first: None,
                second: None,
            },
            p.member,
        ));
        if std::mem::replace(last, p.member) != p.member {
            f.handovers += 1;
        }
        if let Some((end, other, offset)) = ends.others(p.member) {
            if p.start < end {
                f.overlap_violations += 1;
                f.sample(
                    "overlap_violations",
                    format!(
                        "group {} queue {}: consumer {} started offset {} ({}) at +{:.3} ms while consumer {other} processed offset {offset} until +{:.3} ms",
                        p.at.group, p.at.queue, p.member, p.at.offset, p.id, rel(p.start), rel(end)
                    ),
                );
            }
        }
        ends.add(p.end, p.member, p.at.offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::fixtures::{id, pos};

    /// A processing by `member` of `id` from `at`, during [t0+start, t0+end] ms.
    fn p(t0: Instant, member: u32, id: MsgId, at: Position, start: u64, end: u64) -> Processed {
        Processed {
            member,
            at,
            id,
            start: t0 + Duration::from_millis(start),
            end: t0 + Duration::from_millis(end),
        }
    }

    /// Producer 0's seqs 1..=n acked at queue 0 offsets 0.., producer 1's at queue 1.
    fn acks(n: u64) -> HashMap<MsgId, Position> {
        let mut a = HashMap::new();
        for s in 1..=n {
            a.insert(id(0, s), pos(0, s - 1));
            a.insert(id(1, s), pos(1, s - 1));
        }
        a
    }

    #[test]
    fn in_order_and_interleaved_keys_are_fine() {
        let t0 = Instant::now();
        let acks = acks(3);
        let mut all = Vec::new();
        // Two keys on two queues, each by its own consumer, interleaved in time.
        for s in 1..=3u64 {
            let t = s * 10;
            all.push(p(t0, 0, id(0, s), pos(0, s - 1), t, t + 2));
            all.push(p(t0, 1, id(1, s), pos(1, s - 1), t + 1, t + 3));
        }
        let f = check(&all, &acks);
        assert_eq!(f.violations(), 0, "{f:?}");
        assert_eq!((f.keys, f.deliveries, f.key_moves), (2, 6, 0));
    }

    #[test]
    fn skipping_ahead_is_a_violation_but_a_rewind_is_not() {
        let t0 = Instant::now();
        let acks = acks(4);
        // Rewind: consumer 0 did 1..=3, consumer 1 took over from 2 (uncommitted) and did
        // 2..=4 again after it: fine.
        let rewind = vec![
            p(t0, 0, id(0, 1), pos(0, 0), 0, 1),
            p(t0, 0, id(0, 2), pos(0, 1), 2, 3),
            p(t0, 0, id(0, 3), pos(0, 2), 4, 5),
            p(t0, 1, id(0, 2), pos(0, 1), 10, 11),
            p(t0, 1, id(0, 3), pos(0, 2), 12, 13),
            p(t0, 1, id(0, 4), pos(0, 3), 14, 15),
        ];
        let f = check(&rewind, &acks);
        assert_eq!(f.violations(), 0, "{f:?}");

        // Skip: 3 before 2, then 2: one violation, at 3.
        let skip = vec![
            p(t0, 0, id(0, 1), pos(0, 0), 0, 1),
            p(t0, 0, id(0, 3), pos(0, 2), 2, 3),
            p(t0, 0, id(0, 2), pos(0, 1), 4, 5),
            p(t0, 0, id(0, 4), pos(0, 3), 6, 7),
        ];
        let f = check(&skip, &acks);
        assert_eq!((f.order_violations, f.overlap_violations), (1, 0), "{f:?}");
        assert!(f.samples["order_violations"][0].starts_with("p0-3 "));
    }

    #[test]
    fn unacked_and_never_processed_messages_do_not_count() {
        let t0 = Instant::now();
        let mut acks = acks(4);
        // Seq 2 was never acknowledged (its send failed), seq 3 was lost: 1 then 4 is fine
        // here (the lost check reports 3).
        acks.remove(&id(0, 2));
        let all = vec![
            p(t0, 0, id(0, 1), pos(0, 0), 0, 1),
            p(t0, 0, id(0, 4), pos(0, 3), 2, 3),
            p(t0, 0, id(0, 2), pos(0, 1), 4, 5),
        ];
        let f = check(&all, &acks);
        assert_eq!(f.violations(), 0, "{f:?}");
    }

    #[test]
    fn a_key_that_moved_queue_is_not_ordered_across_the_move() {
        let t0 = Instant::now();
        let mut acks = HashMap::new();
        acks.insert(id(0, 1), pos(0, 0));
        acks.insert(id(0, 2), pos(2, 0));
        // Seq 2 (moved to queue 2) processed before seq 1 (queue 0, waiting for its group).
        let all = vec![
            p(t0, 1, id(0, 2), pos(2, 0), 0, 1),
            p(t0, 0, id(0, 1), pos(0, 0), 5, 6),
        ];
        let f = check(&all, &acks);
        assert_eq!(f.violations(), 0, "{f:?}");
        assert_eq!((f.key_moves, f.cross_queue_reorders), (1, 1));
    }

    #[test]
    fn overlapping_consumers_on_one_queue_are_violations() {
        let t0 = Instant::now();
        let acks = acks(4);
        let all = vec![
            // Consumer 0 holds queue 0 until 10 ms; consumer 1 starts there at 5 ms.
            p(t0, 0, id(0, 1), pos(0, 0), 0, 10),
            p(t0, 1, id(0, 2), pos(0, 1), 5, 6),
            // Consumer 0 again after both ended: fine (its own 10 ms end is its own).
            p(t0, 0, id(0, 3), pos(0, 2), 11, 12),
            // Back to back, then a hand-over after the end: fine.
            p(t0, 1, id(0, 4), pos(0, 3), 12, 13),
            // Another queue at the same time: fine.
            p(t0, 1, id(1, 1), pos(1, 0), 1, 9),
        ];
        let f = check(&all, &acks);
        assert_eq!((f.overlap_violations, f.order_violations), (1, 0), "{f:?}");
        assert_eq!(f.handovers, 3);
        assert_eq!((f.by_consumer[&0], f.by_consumer[&1]), (2, 3));
        assert!(f.samples["overlap_violations"][0].contains("consumer 1 started offset 1"));
    }

    #[test]
    fn a_consumer_overlapping_a_shorter_one_is_seen_behind_its_own_longer_one() {
        let t0 = Instant::now();
        let acks = acks(3);
        // Consumer 0 [0, 20] (latest end), consumer 1 [1, 5] overlaps it, then consumer 0
        // [3, 4] overlaps consumer 1's [1, 5] although consumer 0's own end is the latest.
        let all = vec![
            p(t0, 0, id(0, 1), pos(0, 0), 0, 20),
            p(t0, 1, id(0, 2), pos(0, 1), 1, 5),
            p(t0, 0, id(0, 3), pos(0, 2), 3, 4),
        ];
        let f = check(&all, &acks);
        assert_eq!(f.overlap_violations, 2, "{f:?}");
    }
}
