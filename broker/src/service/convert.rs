//! Conversions between wire messages and store records, and request-level validation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_proto::v1::{Message, StoredMessage};
use sluice_proto::{ApiError, ErrorCode};

use crate::store::{AppendMessage, StoredRecord};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Bytes a message occupies against the size limit: body plus properties, keys and tag.
pub fn message_size(m: &Message) -> usize {
    m.body.len()
        + m.tag.len()
        + m.keys.iter().map(|k| k.len() + 1).sum::<usize>()
        + m.properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>()
}

/// Unique message ids for messages sent without one: 32 hex digits of a per-process prefix,
/// the time and a counter, so ids from different brokers and restarts do not collide.
pub struct IdGenerator {
    prefix: u32,
    counter: AtomicU64,
}

impl IdGenerator {
    pub fn new(seed: &str) -> Self {
        // FNV-1a over the address and pid keeps brokers on one host apart.
        let mut h: u32 = 0x811c_9dc5;
        for b in seed.bytes().chain(std::process::id().to_be_bytes()) {
            h = (h ^ b as u32).wrapping_mul(0x0100_0193);
        }
        IdGenerator {
            prefix: h,
            counter: AtomicU64::new(rand::random::<u32>() as u64),
        }
    }

    pub fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:08X}{:012X}{:012X}",
            self.prefix,
            now_ms() as u64 & 0xFFFF_FFFF_FFFF,
            n & 0xFFFF_FFFF_FFFF
        )
    }
}

/// Longest `born_host` a message may carry.
pub const MAX_BORN_HOST: usize = 255;
/// Keys a message may carry.
pub const MAX_KEYS: usize = 64;
/// Properties a message may carry (the broker adds a few of its own).
pub const MAX_PROPERTIES: usize = 128;

pub fn to_append(
    m: Message,
    ids: &IdGenerator,
    max_message_size: usize,
) -> Result<AppendMessage, ApiError> {
    let size = message_size(&m);
    if size > max_message_size {
        return Err(ApiError::new(
            ErrorCode::MessageTooLarge,
            format!("message of {size} bytes exceeds the limit of {max_message_size} bytes"),
        ));
    }
    if m.message_id.len() > 128 {
        return Err(ApiError::invalid("message_id longer than 128 bytes"));
    }
    // An address: kept short so that neither a record nor a commit's copies grow by it unbounded.
    if m.born_host.len() > MAX_BORN_HOST {
        return Err(ApiError::invalid(format!(
            "born_host longer than {MAX_BORN_HOST} bytes"
        )));
    }
    // Each key and property costs framing the size limits do not count.
    if m.keys.len() > MAX_KEYS || m.properties.len() > MAX_PROPERTIES {
        return Err(ApiError::invalid(format!(
            "a message has at most {MAX_KEYS} keys and {MAX_PROPERTIES} properties"
        )));
    }
    if let Some(k) = m
        .properties
        .keys()
        .find(|k| k.starts_with(sluice_proto::props::RESERVED_PREFIX))
    {
        return Err(ApiError::invalid(format!(
            "property {k:?}: names starting with {:?} are reserved for the broker",
            sluice_proto::props::RESERVED_PREFIX
        )));
    }
    let mut properties: Vec<(String, String)> = m.properties.into_iter().collect();
    // A map has no order on the wire; sort so the stored record is deterministic.
    properties.sort();
    Ok(AppendMessage {
        message_id: if m.message_id.is_empty() {
            ids.next_id()
        } else {
            m.message_id
        },
        body: m.body,
        tag: m.tag,
        keys: m.keys,
        properties,
        flag: m.flag,
        sys_flag: 0,
        born_timestamp_ms: if m.born_timestamp_ms > 0 {
            m.born_timestamp_ms
        } else {
            now_ms()
        },
        born_host: m.born_host,
        reconsume_times: 0,
        prepared_transaction_offset: 0,
    })
}

pub fn to_wire(r: StoredRecord) -> StoredMessage {
    r.into_wire()
}

/// The call's deadline from the `grpc-timeout` header ("<digits><unit>", unit one of H M S m u n).
pub fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_fixed_width() {
        let g = IdGenerator::new("127.0.0.1:1");
        let a = g.next_id();
        let b = g.next_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn too_large_is_rejected_before_the_store() {
        let g = IdGenerator::new("x");
        let m = Message {
            body: vec![0u8; 11].into(),
            ..Default::default()
        };
        assert_eq!(
            to_append(m.clone(), &g, 10).unwrap_err().code,
            ErrorCode::MessageTooLarge
        );
        let a = to_append(m, &g, 11).unwrap();
        assert!(!a.message_id.is_empty());
        assert!(a.born_timestamp_ms > 0);
        let host = Message {
            born_host: "h".repeat(MAX_BORN_HOST + 1),
            ..Default::default()
        };
        assert_eq!(
            to_append(host, &g, 10).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        let keys = Message {
            keys: vec![String::new(); MAX_KEYS + 1],
            ..Default::default()
        };
        assert_eq!(
            to_append(keys, &g, 1 << 20).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        let props = Message {
            properties: (0..=MAX_PROPERTIES)
                .map(|i| (format!("p{i}"), String::new()))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            to_append(props, &g, 1 << 20).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn parses_grpc_timeout() {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(1500)));
        m.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(2)));
        m.insert("grpc-timeout", "zz".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
    }
}
