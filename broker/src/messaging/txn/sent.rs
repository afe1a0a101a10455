//! The half messages this master stored, in the form a commit copies them, kept for the end
//! that usually follows within milliseconds: reading them back from the log (locating the
//! entry, reading and decoding each record) was about a sixth of an end's work on the master.
//! Only sends acknowledged once committed are kept (standalone, or a group that acks on a
//! quorum): a committed entry never changes, so a kept send is what the log holds at its
//! locator. A send not kept (evicted, stored under an earlier master, sent with a producer
//! sequence, or acknowledged by the leader alone) is read back; a rollback drops what was kept.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use sluice_proto::props;

use crate::store::{AppendBatch, AppendMessage, StoredRecord};

/// A send's messages as its commit copies them: real topic, real queue, the message.
pub(super) type Sent = Vec<(String, u32, AppendMessage)>;

/// At most this many bytes are kept (as counted by [`size_of`]); the oldest sends go first.
const MAX_BYTES: usize = 32 << 20;

/// What a kept message costs besides its strings and body: the struct, the allocations.
const PER_MESSAGE: usize = 256;

fn message_size(topic: &str, m: &AppendMessage) -> usize {
    PER_MESSAGE
        + topic.len()
        + m.message_id.len()
        + m.born_host.len()
        + (m.properties.len() + m.keys.len()) * 48
        + crate::store::record::payload_size(m)
}

fn size_of(sent: &Sent) -> usize {
    sent.iter().map(|(t, _, m)| message_size(t, m)).sum()
}

/// Properties the broker adds to a half message, which its copy does not carry.
const HALF_ONLY: [&str; 4] = [
    props::REAL_TOPIC,
    props::REAL_QUEUE,
    props::TX_HALF,
    props::PRODUCER_SEQUENCE,
];

fn copied_properties(all: &[(String, String)]) -> Vec<(String, String)> {
    all.iter()
        .filter(|(k, _)| !HALF_ONLY.contains(&k.as_str()))
        .cloned()
        .collect()
}

/// A half record as the message the producer sent: real topic and queue, without the
/// broker's bookkeeping (the transaction id stays).
pub(super) fn as_sent(r: StoredRecord) -> Option<(String, u32, AppendMessage)> {
    let topic = props::get(&r.properties, props::REAL_TOPIC)?.to_string();
    let queue = props::get(&r.properties, props::REAL_QUEUE)?.parse().ok()?;
    let keep = copied_properties(&r.properties);
    Some((topic, queue, r.into_message(keep, 0)))
}

/// What [`as_sent`] makes of the records of a half batch once stored, from the batch itself.
fn batch_as_sent(batch: &AppendBatch) -> Option<Sent> {
    batch
        .messages
        .iter()
        .map(|m| {
            let topic = props::get(&m.properties, props::REAL_TOPIC)?.to_string();
            let queue = props::get(&m.properties, props::REAL_QUEUE)?.parse().ok()?;
            let copy = AppendMessage {
                message_id: m.message_id.clone(),
                // Its own bytes: a body sliced out of a request would keep the connection's
                // whole read buffer alive.
                body: bytes::Bytes::copy_from_slice(&m.body),
                tag: m.tag.clone(),
                keys: m.keys.clone(),
                properties: copied_properties(&m.properties),
                flag: m.flag,
                sys_flag: 0,
                born_timestamp_ms: m.born_timestamp_ms,
                born_host: m.born_host.clone(),
                reconsume_times: m.reconsume_times,
                prepared_transaction_offset: 0,
            };
            Some((topic, queue, copy))
        })
        .collect()
}

#[derive(Default)]
struct Inner {
    /// By locator (entry index, or commit-log offset standalone), which only grows: the
    /// smallest is the oldest.
    sends: BTreeMap<u64, (Sent, usize)>,
    bytes: usize,
}

#[derive(Default)]
pub(super) struct SentCache {
    inner: Mutex<Inner>,
}

impl SentCache {
    /// Keeps the half batch stored (committed, its state applied) at `locator`.
    pub(super) fn keep(&self, locator: u64, batch: &AppendBatch) {
        // Its half form is a little larger than the copy: checked before copying anything.
        let half: usize = batch
            .messages
            .iter()
            .map(|m| message_size(&batch.topic, m))
            .sum();
        if half > MAX_BYTES {
            return;
        }
        let Some(sent) = batch_as_sent(batch) else {
            return;
        };
        let size = size_of(&sent);
        let mut inner = self.inner.lock();
        while inner.bytes + size > MAX_BYTES {
            let Some((_, (_, old))) = inner.sends.pop_first() else {
                break;
            };
            inner.bytes = inner.bytes.saturating_sub(old);
        }
        if let Some((_, old)) = inner.sends.insert(locator, (sent, size)) {
            inner.bytes = inner.bytes.saturating_sub(old);
        }
        inner.bytes += size;
    }

    /// The send kept at `locator`, removed.
    pub(super) fn take(&self, locator: u64) -> Option<Sent> {
        let mut inner = self.inner.lock();
        let (sent, size) = inner.sends.remove(&locator)?;
        inner.bytes = inner.bytes.saturating_sub(size);
        Some(sent)
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    #[cfg(test)]
    pub(super) fn inner_has(&self, locator: u64) -> bool {
        self.inner.lock().sends.contains_key(&locator)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::messaging::txn::{Transactions, TxSend};

    fn half(n: usize, body: usize) -> AppendBatch {
        let tx = TxSend {
            id: "tx-1".into(),
            group: "g".into(),
        };
        let messages = (0..n)
            .map(|i| AppendMessage {
                message_id: format!("m{i}"),
                body: Bytes::from(vec![b'x'; body]),
                tag: "t".into(),
                keys: vec!["k1".into(), "k2".into()],
                properties: vec![("user".into(), "v".into())],
                flag: 3,
                born_timestamp_ms: 17,
                born_host: "h:1".into(),
                ..Default::default()
            })
            .collect();
        Transactions::half_batch("orders", 5, &tx, messages)
    }

    #[test]
    fn a_kept_send_is_what_reading_its_records_back_gives() {
        let batch = half(3, 10);
        let data = crate::store::encode_for_proposal(&batch, "store:1", 99).unwrap();
        let read: Sent = crate::store::decode_entry(&data)
            .unwrap()
            .into_iter()
            .map(|r| as_sent(r).unwrap())
            .collect();
        assert_eq!(read.len(), 3);
        assert!(read.iter().all(|(t, q, _)| t == "orders" && *q == 5));
        assert!(read.iter().all(|(_, _, m)| m
            .properties
            .iter()
            .all(|(k, _)| !HALF_ONLY.contains(&k.as_str()))));
        let cache = SentCache::default();
        cache.keep(7, &batch);
        assert_eq!(cache.take(7), Some(read));
        assert_eq!(cache.take(7), None);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn the_oldest_sends_go_first_past_the_bound() {
        let cache = SentCache::default();
        let body = 1 << 20;
        for locator in 0..40 {
            cache.keep(locator, &half(1, body));
        }
        assert!(cache.bytes() <= MAX_BYTES);
        assert!(cache.take(0).is_none());
        assert!(cache.take(39).is_some());
        // Too big to keep at all: read back instead.
        cache.keep(100, &half(1, MAX_BYTES + 1));
        assert!(cache.take(100).is_none());
    }
}
