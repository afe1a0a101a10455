//! Which queue a message goes to.

use std::sync::Arc;

use crate::message::Message;
use crate::route::MessageQueue;

/// Chooses a queue for a message from the writable queues of its topic, sorted by
/// (broker name, queue id). The returned index is taken modulo the number of queues.
pub trait QueueSelector: Send + Sync + 'static {
    fn select(&self, queues: &[MessageQueue], message: &Message) -> usize;
}

impl<F> QueueSelector for F
where
    F: Fn(&[MessageQueue], &Message) -> usize + Send + Sync + 'static,
{
    fn select(&self, queues: &[MessageQueue], message: &Message) -> usize {
        self(queues, message)
    }
}

#[derive(Clone)]
pub(crate) enum Routing {
    RoundRobin,
    /// Same key, same queue, as long as the route does not change.
    Key(String),
    Custom(Arc<dyn QueueSelector>),
    /// A queue chosen earlier (a batch of the accumulator). `reroutable` batches hold only
    /// round-robin messages, which may move to another broker's queue after a failure; the
    /// others stay put so their per-key order survives the retry.
    Queue {
        queue: MessageQueue,
        reroutable: bool,
    },
}

/// Round robin from `start`, skipping queues of `avoid_broker` (the one that just failed) when
/// another broker has a queue.
pub(crate) fn round_robin(
    queues: &[MessageQueue],
    start: usize,
    avoid_broker: Option<&str>,
) -> Option<usize> {
    let n = queues.len();
    if n == 0 {
        return None;
    }
    (0..n)
        .map(|i| (start + i) % n)
        .find(|&i| Some(queues[i].broker_name.as_str()) != avoid_broker)
        .or(Some(start % n))
}

/// A hash that is the same in every process and Rust version (FNV-1a, 64 bit), so producers
/// on different machines agree on a key's queue.
pub(crate) fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The queue index for one attempt. Key and custom routing ignore `avoid_broker`: moving a key
/// to another queue on a transient error would break the per-key order it exists for.
/// `message` feeds custom selectors; without one a custom routing finds no queue.
pub(crate) fn pick(
    queues: &[MessageQueue],
    routing: &Routing,
    rr_start: usize,
    avoid_broker: Option<&str>,
    message: Option<&Message>,
) -> Option<usize> {
    if queues.is_empty() {
        return None;
    }
    match routing {
        Routing::RoundRobin => round_robin(queues, rr_start, avoid_broker),
        Routing::Key(key) => Some((key_hash(key) % queues.len() as u64) as usize),
        Routing::Custom(sel) => message.map(|m| sel.select(queues, m) % queues.len()),
        Routing::Queue { queue, reroutable } => {
            // Queues are sorted by (broker name, queue id) and share the topic.
            let found = queues
                .binary_search_by(|q| {
                    (q.broker_name.as_str(), q.queue_id)
                        .cmp(&(queue.broker_name.as_str(), queue.queue_id))
                })
                .ok();
            let failed_here = avoid_broker == Some(queue.broker_name.as_str());
            match found {
                Some(i) if !(*reroutable && failed_here) => Some(i),
                _ if *reroutable => round_robin(queues, rr_start, avoid_broker),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(spec: &[(&str, u32)]) -> Vec<MessageQueue> {
        spec.iter()
            .flat_map(|&(b, n)| {
                (0..n).map(move |q| MessageQueue {
                    topic: "t".into(),
                    broker_name: b.into(),
                    queue_id: q,
                })
            })
            .collect()
    }

    #[test]
    fn round_robin_visits_every_queue_in_turn() {
        let qs = queues(&[("a", 2), ("b", 2)]);
        let msg = Message::new("t", "x");
        let picked: Vec<usize> = (0..8)
            .map(|i| pick(&qs, &Routing::RoundRobin, i, None, Some(&msg)).unwrap())
            .collect();
        assert_eq!(picked, [0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(pick(&[], &Routing::RoundRobin, 0, None, Some(&msg)), None);
    }

    #[test]
    fn retry_prefers_another_broker() {
        let qs = queues(&[("a", 3), ("b", 1)]);
        // Starting on a queue of "a" after "a" failed skips to b's queue.
        assert_eq!(round_robin(&qs, 0, Some("a")), Some(3));
        assert_eq!(round_robin(&qs, 5, Some("a")), Some(3));
        // Starting on b after b failed wraps to a.
        assert_eq!(round_robin(&qs, 3, Some("b")), Some(0));
        // With a single broker there is no other choice.
        let single = queues(&[("a", 2)]);
        assert_eq!(round_robin(&single, 1, Some("a")), Some(1));
    }

    #[test]
    fn same_key_same_queue_and_keys_spread() {
        let qs = queues(&[("a", 4), ("b", 4)]);
        let msg = Message::new("t", "x");
        let mut used = std::collections::HashSet::new();
        for k in 0..100 {
            let key = Routing::Key(format!("order-{k}"));
            let first = pick(&qs, &key, 0, None, Some(&msg)).unwrap();
            for start in 1..5 {
                assert_eq!(pick(&qs, &key, start, Some("a"), Some(&msg)), Some(first));
            }
            used.insert(first);
        }
        assert!(
            used.len() >= 6,
            "100 keys landed on only {} queues",
            used.len()
        );
        // Stable across processes: FNV-1a of "a" is a published constant.
        assert_eq!(key_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn custom_selector_is_taken_modulo() {
        let qs = queues(&[("a", 3)]);
        let sel: Arc<dyn QueueSelector> = Arc::new(|_: &[MessageQueue], m: &Message| m.body.len());
        let msg = Message::new("t", "hello");
        let custom = Routing::Custom(sel);
        assert_eq!(pick(&qs, &custom, 0, None, Some(&msg)), Some(2));
        assert_eq!(pick(&qs, &custom, 0, None, None), None);
    }

    #[test]
    fn a_chosen_queue_stays_unless_it_may_move() {
        let qs = queues(&[("a", 2), ("b", 2)]);
        let fixed = |broker: &str, queue_id, reroutable| Routing::Queue {
            queue: MessageQueue {
                topic: "t".into(),
                broker_name: broker.into(),
                queue_id,
            },
            reroutable,
        };
        assert_eq!(pick(&qs, &fixed("b", 1, false), 0, None, None), Some(3));
        assert_eq!(pick(&qs, &fixed("a", 1, true), 0, None, None), Some(1));
        // After broker a failed: a keyed batch stays, a round-robin batch moves to b.
        assert_eq!(
            pick(&qs, &fixed("a", 1, false), 0, Some("a"), None),
            Some(1)
        );
        assert_eq!(pick(&qs, &fixed("a", 1, true), 0, Some("a"), None), Some(2));
        // The queue left the route (its broker lost its master).
        assert_eq!(pick(&qs, &fixed("c", 0, false), 0, None, None), None);
        assert_eq!(pick(&qs, &fixed("c", 0, true), 1, None, None), Some(1));
    }
}
