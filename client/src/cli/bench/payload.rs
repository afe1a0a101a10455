//! Message bodies that carry their send time, so any consumer (in this process or another one
//! on the same machine) can measure end-to-end latency.
//!
//! Layout: 8 bytes of magic, the send time in microseconds since the Unix epoch (big-endian
//! u64), then filler up to the requested size. Bodies under 16 bytes carry no time.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

const MAGIC: &[u8; 8] = b"SLBENCH1";
/// Smallest body that carries a send time.
pub const STAMPED_MIN: usize = 16;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A body of exactly `size` bytes, stamped with `sent_us` when it is large enough.
pub fn body(size: usize, sent_us: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(size);
    if size >= STAMPED_MIN {
        b.put_slice(MAGIC);
        b.put_u64(sent_us);
    }
    b.resize(size, b'x');
    b.freeze()
}

/// The send time a body carries, if it is a stamped benchmark body.
pub fn sent_us(body: &[u8]) -> Option<u64> {
    if body.len() < STAMPED_MIN || &body[..8] != MAGIC {
        return None;
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&body[8..16]);
    Some(u64::from_be_bytes(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_sizes_are_exact() {
        let b = body(1024, 1_700_000_000_123_456);
        assert_eq!(b.len(), 1024);
        assert_eq!(sent_us(&b), Some(1_700_000_000_123_456));
        assert!(b[16..].iter().all(|&c| c == b'x'));
        let small = body(15, 42);
        assert_eq!(small.len(), 15);
        assert_eq!(sent_us(&small), None);
        assert_eq!(body(0, 1).len(), 0);
        assert_eq!(sent_us(b"not a bench body at all"), None);
        assert!(now_us() > 1_600_000_000_000_000);
    }
}
