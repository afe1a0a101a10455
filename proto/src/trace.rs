//! Message trace: the events clients record about a message (sent, stored, delivered,
//! consumed) and the W3C trace context that travels in its properties.
//!
//! Events are written in batches as ordinary messages to [`TRACE_TOPIC`]: one message holds
//! many events as a JSON array ([`encode_batch`]) and carries as keys the ids of every message
//! its events are about, so the broker's key index finds a message's whole history.

use serde::{Deserialize, Serialize};

/// The topic trace events go to. Brokers that accept traces (`trace_enabled`) create it.
pub const TRACE_TOPIC: &str = "SLUICE_TRACE";

/// The message property carrying the W3C trace context (`traceparent`).
pub const TRACEPARENT: &str = "traceparent";

/// Longest error text kept in an event.
pub const MAX_ERROR_LEN: usize = 512;

/// One thing that happened to a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// The traced message's id.
    pub message_id: String,
    /// When it happened, ms since the Unix epoch (the recording client's clock).
    pub time_ms: i64,
    /// The W3C trace id (32 hex digits) from the message's `traceparent`, if it had one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// Host name of the client that recorded the event.
    #[serde(default)]
    pub client_host: String,
    #[serde(flatten)]
    pub what: TraceWhat,
}

/// The kind of event, with what only that kind knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TraceWhat {
    /// A producer's send finished (stored or failed after its retries).
    Sent {
        topic: String,
        #[serde(default)]
        producer_group: String,
        #[serde(default)]
        tag: String,
        #[serde(default)]
        keys: Vec<String>,
        born_ms: i64,
        /// From the first attempt to the answer, retries included.
        latency_ms: u64,
        /// `ok`, or the error code and text.
        result: String,
        #[serde(default)]
        transaction: bool,
    },
    /// Where the broker stored it, from its receipt.
    Stored {
        topic: String,
        /// The replica group.
        broker_name: String,
        /// The master that answered.
        #[serde(default)]
        address: String,
        queue_id: u32,
        offset: u64,
        store_ms: i64,
        /// A delayed message's due time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deliver_at_ms: Option<i64>,
    },
    /// A consumer handed it to the application.
    Delivered {
        group: String,
        client_id: String,
        /// The topic it was read from (a retry topic for a redelivery).
        topic: String,
        broker_name: String,
        queue_id: u32,
        offset: u64,
        /// 1 for the first delivery.
        attempt: u32,
    },
    /// The application finished with it.
    Consumed {
        group: String,
        client_id: String,
        attempt: u32,
        result: ConsumeResult,
        /// How long the handler ran (not known for a pull consumer's messages).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handler_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        error: String,
    },
}

/// How one delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumeResult {
    Ok,
    /// Failed; sent back to be delivered again later.
    RetryLater,
    /// Failed with its retries spent: on the group's dead-letter topic.
    DeadLetter,
    /// Failed and retried in place (ordered consumption, or the broker could not take it back).
    RetryHere,
}

impl TraceWhat {
    pub fn kind(&self) -> &'static str {
        match self {
            TraceWhat::Sent { .. } => "sent",
            TraceWhat::Stored { .. } => "stored",
            TraceWhat::Delivered { .. } => "delivered",
            TraceWhat::Consumed { .. } => "consumed",
        }
    }

    /// Order of kinds recorded at the same millisecond.
    fn rank(&self) -> u8 {
        match self {
            TraceWhat::Sent { .. } => 0,
            TraceWhat::Stored { .. } => 1,
            TraceWhat::Delivered { .. } => 2,
            TraceWhat::Consumed { .. } => 3,
        }
    }
}

impl ConsumeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumeResult::Ok => "ok",
            ConsumeResult::RetryLater => "retry_later",
            ConsumeResult::DeadLetter => "dead_letter",
            ConsumeResult::RetryHere => "retry_here",
        }
    }
}

/// Tag of trace messages.
pub const TRACE_TAG: &str = "trace";

/// Bodies of trace messages: the events as JSON arrays, each body at most about `max_bytes`
/// (an event larger than that alone in its body), with the distinct ids its events are about.
pub fn encode_batch(events: &[TraceEvent], max_bytes: usize) -> Vec<(Vec<u8>, Vec<String>)> {
    let mut out = Vec::new();
    let mut body = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for e in events {
        // Serializing plain structs of strings and numbers cannot fail.
        let one = serde_json::to_vec(e).unwrap_or_default();
        if !body.is_empty() && body.len() + one.len() + 2 > max_bytes {
            body.push(b']');
            out.push((std::mem::take(&mut body), std::mem::take(&mut ids)));
            seen.clear();
        }
        body.push(if body.is_empty() { b'[' } else { b',' });
        body.extend_from_slice(&one);
        if seen.insert(e.message_id.as_str()) {
            ids.push(e.message_id.clone());
        }
    }
    if !body.is_empty() {
        body.push(b']');
        out.push((body, ids));
    }
    out
}

/// The events of a trace message's body; None for anything else (the trace topic is an
/// ordinary topic anyone may write to).
pub fn decode_batch(body: &[u8]) -> Option<Vec<TraceEvent>> {
    serde_json::from_slice(body).ok()
}

impl TraceEvent {
    /// Sorts a message's events into its timeline: by time, then by kind.
    pub fn timeline(events: &mut [TraceEvent]) {
        events.sort_by_key(|e| (e.time_ms, e.what.rank()));
    }
}

/// A W3C trace context (`traceparent`: `00-<trace id>-<parent id>-<flags>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceContext {
    /// A new trace, sampled, from 24 random bytes (the caller's source of randomness).
    /// None if either id would be all zeros (invalid in W3C; draw again).
    pub fn from_random(bytes: [u8; 24]) -> Option<TraceContext> {
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        trace_id.copy_from_slice(bytes.get(..16)?);
        parent_id.copy_from_slice(bytes.get(16..)?);
        let ctx = TraceContext {
            trace_id,
            parent_id,
            flags: 1,
        };
        ctx.valid().then_some(ctx)
    }

    fn valid(&self) -> bool {
        self.trace_id != [0; 16] && self.parent_id != [0; 8]
    }

    /// Parses a `traceparent` header value. Accepts future versions (more fields after the
    /// four known ones), as the W3C spec asks; refuses version `ff`, bad hex, uppercase hex and
    /// all-zero ids.
    pub fn parse(value: &str) -> Option<TraceContext> {
        let v = value.trim();
        let mut parts = v.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || flags.len() != 2 {
            return None;
        }
        let version = crate::hex::decode::<1>(version)?;
        let rest = parts.next();
        // Version 00 has exactly four fields.
        if version == [0] && rest.is_some() {
            return None;
        }
        let ctx = TraceContext {
            trace_id: crate::hex::decode(trace)?,
            parent_id: crate::hex::decode(parent)?,
            flags: crate::hex::decode::<1>(flags)?[0],
        };
        ctx.valid().then_some(ctx)
    }

    pub fn trace_id_hex(&self) -> String {
        crate::hex::encode(&self.trace_id)
    }
}

impl std::fmt::Display for TraceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            crate::hex::encode(&self.trace_id),
            crate::hex::encode(&self.parent_id),
            self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let ctx = TraceContext::parse(SAMPLE).unwrap();
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.flags, 1);
        assert_eq!(ctx.to_string(), SAMPLE);
    }

    #[test]
    fn traceparent_refuses_what_w3c_refuses() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e47é6-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version may add fields.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(TraceContext::parse(future).is_some());
    }

    #[test]
    fn random_contexts_are_valid_unless_zero() {
        assert_eq!(TraceContext::from_random([0; 24]), None);
        let ctx = TraceContext::from_random([7; 24]).unwrap();
        assert_eq!(TraceContext::parse(&ctx.to_string()), Some(ctx));
    }

    #[test]
    fn events_round_trip_and_sort_into_a_timeline() {
        let sent = TraceEvent {
            message_id: "m1".into(),
            time_ms: 10,
            trace_id: String::new(),
            client_host: "h".into(),
            what: TraceWhat::Sent {
                topic: "t".into(),
                producer_group: "pg".into(),
                tag: "a".into(),
                keys: vec!["k".into()],
                born_ms: 9,
                latency_ms: 1,
                result: "ok".into(),
                transaction: false,
            },
        };
        let stored = TraceEvent {
            what: TraceWhat::Stored {
                topic: "t".into(),
                broker_name: "b".into(),
                address: "a:1".into(),
                queue_id: 1,
                offset: 2,
                store_ms: 10,
                deliver_at_ms: None,
            },
            ..sent.clone()
        };
        let consumed = TraceEvent {
            time_ms: 5,
            what: TraceWhat::Consumed {
                group: "g".into(),
                client_id: "c".into(),
                attempt: 1,
                result: ConsumeResult::DeadLetter,
                handler_ms: Some(3),
                error: "boom".into(),
            },
            ..sent.clone()
        };
        let all = vec![sent.clone(), stored.clone(), consumed.clone()];
        let bodies = encode_batch(&all, 1 << 20);
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0].1, vec!["m1".to_string()], "ids once each");
        assert_eq!(decode_batch(&bodies[0].0), Some(all.clone()));
        // A small limit splits the batch; nothing is lost.
        let split = encode_batch(&all, 10);
        assert_eq!(split.len(), 3);
        let back: Vec<TraceEvent> = split
            .iter()
            .flat_map(|(b, _)| decode_batch(b).unwrap())
            .collect();
        assert_eq!(back, all);
        let text = String::from_utf8(
            encode_batch(std::slice::from_ref(&consumed), 1 << 20)
                .remove(0)
                .0,
        )
        .unwrap();
        assert!(text.contains("\"kind\":\"consumed\""), "{text}");
        assert!(text.contains("\"result\":\"dead_letter\""), "{text}");
        let mut all = vec![stored.clone(), consumed.clone(), sent.clone()];
        TraceEvent::timeline(&mut all);
        assert_eq!(all, vec![consumed, sent, stored]);
        assert_eq!(decode_batch(b"[{\"kind\":\"nope\"}]"), None);
        assert_eq!(decode_batch(b"\xff"), None);
        assert_eq!(decode_batch(b"[]"), Some(vec![]));
    }

    #[test]
    fn cut_keeps_whole_characters() {
        use crate::props::cut;
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Some(events) = decode_batch(&bytes) {
                let again: Vec<TraceEvent> = encode_batch(&events, 1 << 20)
                    .iter()
                    .flat_map(|(b, _)| decode_batch(b).unwrap_or_default())
                    .collect();
                proptest::prop_assert_eq!(again, events);
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Some(ctx) = TraceContext::parse(&text) {
                // Whatever parses prints as a version-00 value that parses the same.
                proptest::prop_assert_eq!(TraceContext::parse(&ctx.to_string()), Some(ctx));
            }
        }

        #[test]
        fn batches_round_trip_however_they_are_split(
            events in proptest::collection::vec(
                (".{0,40}", ".{0,80}", proptest::num::i64::ANY, proptest::num::u32::ANY),
                0..20,
            ),
            max_bytes in 1usize..2_000,
        ) {
            let events: Vec<TraceEvent> = events
                .into_iter()
                .map(|(id, error, time_ms, attempt)| TraceEvent {
                    message_id: id,
                    time_ms,
                    trace_id: String::new(),
                    client_host: "h".into(),
                    what: TraceWhat::Consumed {
                        group: "g".into(),
                        client_id: "c".into(),
                        attempt,
                        result: ConsumeResult::RetryLater,
                        handler_ms: None,
                        error,
                    },
                })
                .collect();
            let bodies = encode_batch(&events, max_bytes);
            for (body, ids) in &bodies {
                let got = decode_batch(body).unwrap_or_default();
                // Every event's id is among its message's keys, once.
                for e in &got {
                    proptest::prop_assert!(ids.contains(&e.message_id));
                }
                let mut unique = ids.clone();
                unique.sort();
                unique.dedup();
                proptest::prop_assert_eq!(unique.len(), ids.len());
            }
            let back: Vec<TraceEvent> = bodies.iter().flat_map(|(b, _)| decode_batch(b).unwrap_or_default()).collect();
            proptest::prop_assert_eq!(back, events);
        }

        #[test]
        fn valid_traceparents_parse(trace in proptest::array::uniform16(1u8..), parent in proptest::array::uniform8(1u8..), flags in 0u8..) {
            let ctx = TraceContext { trace_id: trace, parent_id: parent, flags };
            proptest::prop_assert_eq!(TraceContext::parse(&ctx.to_string()), Some(ctx));
        }
    }
}
