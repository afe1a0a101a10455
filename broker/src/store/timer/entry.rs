//! One timer-index entry: 48 bytes, little-endian, CRC32C over the first 44.
//!
//! ```text
//!  0 sched_phy   u64  commit-log offset of the scheduled record (the timer's identity)
//!  8 due_ms      i64  due time, ms since the Unix epoch
//! 16 resolved_by u64  offset of the record that fired or cancelled it (state != pending)
//! 24 prev        u64  1 + number of the previous entry in the same slot; 0 ends the chain
//! 32 size        u32  size of the scheduled record
//! 36 state       u8   0 pending, 1 fired, 2 cancelled
//! 37 (reserved, zero)
//! 44 crc         u32
//! ```

use super::super::record::{i64_at, u32_at, u64_at};

pub const ENTRY_LEN: usize = 48;
const CRC_AT: usize = 44;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerState {
    Pending,
    Fired,
    Cancelled,
}

impl TimerState {
    fn code(self) -> u8 {
        match self {
            TimerState::Pending => 0,
            TimerState::Fired => 1,
            TimerState::Cancelled => 2,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(TimerState::Pending),
            1 => Some(TimerState::Fired),
            2 => Some(TimerState::Cancelled),
            _ => None,
        }
    }
}

/// A timer as the index holds it; `no` is its position in the index (local to this replica).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerEntry {
    pub no: u64,
    pub sched_phy: u64,
    pub due_ms: i64,
    pub size: u32,
    pub state: TimerState,
    pub resolved_by: u64,
    pub prev: u64,
}

impl TimerEntry {
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..8].copy_from_slice(&self.sched_phy.to_le_bytes());
        b[8..16].copy_from_slice(&self.due_ms.to_le_bytes());
        b[16..24].copy_from_slice(&self.resolved_by.to_le_bytes());
        b[24..32].copy_from_slice(&self.prev.to_le_bytes());
        b[32..36].copy_from_slice(&self.size.to_le_bytes());
        b[36] = self.state.code();
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` for a torn, zeroed or corrupt entry.
    pub fn decode(no: u64, b: &[u8]) -> Option<TimerEntry> {
        if b.len() < ENTRY_LEN || crc32c::crc32c(&b[..CRC_AT]) != u32_at(b, CRC_AT) {
            return None;
        }
        Some(TimerEntry {
            no,
            sched_phy: u64_at(b, 0),
            due_ms: i64_at(b, 8),
            resolved_by: u64_at(b, 16),
            prev: u64_at(b, 24),
            size: u32_at(b, 32),
            state: TimerState::from_code(*b.get(36)?)?,
        })
    }

    pub fn is_pending(&self) -> bool {
        self.state == TimerState::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flipped_byte_is_caught() {
        let e = TimerEntry {
            no: 7,
            sched_phy: 1 << 40,
            due_ms: 1_700_000_000_123,
            size: 1234,
            state: TimerState::Cancelled,
            resolved_by: (1 << 40) + 99,
            prev: 6,
        };
        let b = e.encode();
        assert_eq!(TimerEntry::decode(7, &b), Some(e));
        for i in 0..ENTRY_LEN {
            let mut c = b;
            c[i] ^= 0x10;
            assert_eq!(TimerEntry::decode(7, &c), None, "byte {i}");
        }
        assert_eq!(TimerEntry::decode(0, &[0u8; ENTRY_LEN]), None);
        assert_eq!(TimerEntry::decode(0, &b[..40]), None);
    }

    proptest::proptest! {
        /// Whatever a damaged file holds, decoding answers (an entry only with a valid CRC).
        #[test]
        fn any_bytes_decode_or_are_refused(b in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            if let Some(e) = TimerEntry::decode(3, &b) {
                proptest::prop_assert_eq!(&e.encode()[..], &b[..ENTRY_LEN]);
            }
        }
    }
}
