//! Message properties and topics the broker reserves. Producers may not set properties whose
//! names start with `__`; the broker sets these on the records it writes for delayed
//! messages (see ARCHITECTURE.md, "Delayed messages").

/// Topic of scheduled and cancel records (never delivered, never created as a topic).
pub const TIMER_TOPIC: &str = "%TIMER%";
/// Queue of `TIMER_TOPIC` holding scheduled records.
pub const TIMER_QUEUE_SCHEDULED: u32 = 0;
/// Queue of `TIMER_TOPIC` holding cancel records.
pub const TIMER_QUEUE_CANCELS: u32 = 1;

/// Prefix of every reserved property name.
pub const RESERVED_PREFIX: &str = "__";
/// Due time of a delayed message, ms since the Unix epoch (decimal).
pub const DELIVER_AT: &str = "__DELIVER_AT";
/// Scheduled record: the topic and queue it is delivered to.
pub const REAL_TOPIC: &str = "__REAL_TOPIC";
pub const REAL_QUEUE: &str = "__REAL_QUEUE";
/// Fired and cancel records: commit-log offset of the scheduled record (decimal).
pub const TIMER_OF: &str = "__TIMER_OF";

/// Retry and dead-letter copies: the topic, queue and commit-log offset a message was first
/// consumed from.
pub const ORIGIN_TOPIC: &str = "__ORIGIN_TOPIC";
pub const ORIGIN_QUEUE: &str = "__ORIGIN_QUEUE";
/// Dead letters: the last failure (the handler's error, cut to 1 KiB).
pub const FAILURE: &str = "__FAILURE";
/// A redriven dead letter: the commit-log offset of the dead letter it came from.
pub const REDRIVE_OF: &str = "__REDRIVE_OF";

/// First message of an idempotent batch: `producer_id/epoch/base_sequence/count`, which every
/// replica reads back from the log into its producer table (see [`SequenceMark`]).
pub const PRODUCER_SEQUENCE: &str = "__PSEQ";

/// The sequence of an idempotent batch, as carried in [`PRODUCER_SEQUENCE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceMark {
    pub producer_id: u64,
    pub epoch: u32,
    pub base_sequence: u64,
    pub count: u32,
}

impl SequenceMark {
    pub fn encode(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.producer_id, self.epoch, self.base_sequence, self.count
        )
    }

    /// None unless `value` is exactly what [`Self::encode`] writes, with a nonzero id and count.
    pub fn parse(value: &[u8]) -> Option<SequenceMark> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.split('/');
        let mark = SequenceMark {
            producer_id: parts.next()?.parse().ok()?,
            epoch: parts.next()?.parse().ok()?,
            base_sequence: parts.next()?.parse().ok()?,
            count: parts.next()?.parse().ok()?,
        };
        (parts.next().is_none() && mark.producer_id != 0 && mark.count != 0).then_some(mark)
    }
}

/// Topic of transactions' half messages (never delivered).
pub const TX_HALF_TOPIC: &str = "%TX_HALF%";
/// Every half message (and a committed copy): its transaction's id.
pub const TX_ID: &str = "__TX_ID";
/// First half message of a send: `count/bytes/producer_group` (see [`HalfMark`]).
pub const TX_HALF: &str = "__TXH";

/// A send's half messages, as their first record announces them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HalfMark {
    pub count: u32,
    pub bytes: u64,
    pub producer_group: String,
}

impl HalfMark {
    pub fn encode(&self) -> String {
        format!("{}/{}/{}", self.count, self.bytes, self.producer_group)
    }

    pub fn parse(value: &[u8]) -> Option<HalfMark> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.splitn(3, '/');
        let mark = HalfMark {
            count: parts.next()?.parse().ok()?,
            bytes: parts.next()?.parse().ok()?,
            producer_group: parts.next()?.to_string(),
        };
        (mark.count != 0).then_some(mark)
    }
}

/// Topics producers cannot send to or create: the broker's own.
pub fn is_internal_topic(topic: &str) -> bool {
    topic.starts_with("%TIMER%")
        || topic.starts_with("%SYS%")
        || topic.starts_with("%TX_")
        || topic.starts_with(crate::names::RETRY_PREFIX)
        || topic.starts_with(crate::names::DLQ_PREFIX)
}

/// Cuts `s` to at most `max` bytes on a character boundary (long texts kept in properties).
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// The value of a property in a record's property list.
pub fn get<'a>(props: &'a [(String, String)], name: &str) -> Option<&'a str> {
    props
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The value of a property in a message's property map.
pub fn get_map<'a>(
    props: &'a std::collections::HashMap<String, String>,
    name: &str,
) -> Option<&'a str> {
    props.get(name).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_marks_round_trip_and_refuse_anything_else() {
        let m = SequenceMark {
            producer_id: u64::MAX,
            epoch: 3,
            base_sequence: 1 << 40,
            count: 7,
        };
        assert_eq!(SequenceMark::parse(m.encode().as_bytes()), Some(m));
        for bad in [
            "",
            "1/2/3",
            "1/2/3/4/5",
            "0/1/2/3",
            "1/2/3/0",
            "a/1/2/3",
            "1/-1/2/3",
        ] {
            assert_eq!(SequenceMark::parse(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(SequenceMark::parse(b"\xff/1/2/3"), None);
    }

    #[test]
    fn half_marks_round_trip_and_refuse_anything_else() {
        let m = HalfMark {
            count: 3,
            bytes: 4096,
            producer_group: "orders-service".into(),
        };
        assert_eq!(HalfMark::parse(m.encode().as_bytes()), Some(m));
        for bad in ["", "0/1/g", "1/x/g", "1/2", "-1/2/g"] {
            assert_eq!(HalfMark::parse(bad.as_bytes()), None, "{bad}");
        }
    }
}
