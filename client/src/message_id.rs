//! Client-side message ids: 32 hex characters that stay the same across retries of one send.
//!
//! Layout (16 bytes): host hash (4) | pid (2) | per-process random salt (2) | seconds since
//! 2024-01-01 UTC (4) | process-wide counter (4). Two ids of one process collide only if the
//! counter wraps (2^32 ids) within one second; processes differ by host, pid and salt.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

const EPOCH_2024_SECS: u64 = 1_704_067_200;

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Counter values a thread takes at once: producer threads sharing one atomic for every id
/// bounced its cache line between cores (ids stay unique: each block is handed out once).
const COUNTER_BLOCK: u32 = 256;

thread_local! {
    /// The next counter value of this thread's block, and the end of the block.
    static BLOCK: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) };
}

fn next_count() -> u32 {
    BLOCK.with(|b| {
        let (mut next, mut end) = b.get();
        if next == end {
            next = COUNTER.fetch_add(COUNTER_BLOCK, Ordering::Relaxed);
            end = next.wrapping_add(COUNTER_BLOCK);
        }
        b.set((next.wrapping_add(1), end));
        next
    })
}

fn prefix() -> &'static [u8; 8] {
    static PREFIX: OnceLock<[u8; 8]> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let host = fnv1a(hostname().as_bytes());
        let pid = std::process::id();
        let salt: u16 = rand::random();
        let mut p = [0u8; 8];
        p[..4].copy_from_slice(&host.to_be_bytes());
        p[4..6].copy_from_slice(&(pid as u16).to_be_bytes());
        p[6..8].copy_from_slice(&salt.to_be_bytes());
        p
    })
}

fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// This machine's host name, for message ids, `born_host` and consumer client ids.
pub fn hostname() -> String {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string())
    })
    .clone()
}

/// A new unique message id.
pub fn new_message_id() -> String {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    message_id_at(now_ms)
}

/// A new unique message id carrying `unix_ms` (a message's born time, already read once for
/// its whole batch: a clock read per message showed in producer profiles).
pub fn message_id_at(unix_ms: i64) -> String {
    let secs = (unix_ms.max(0) as u64 / 1000).saturating_sub(EPOCH_2024_SECS) as u32;
    let count = next_count();
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(prefix());
    id[8..12].copy_from_slice(&secs.to_be_bytes());
    id[12..].copy_from_slice(&count.to_be_bytes());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 32];
    for (i, b) in id.into_iter().enumerate() {
        hex[2 * i] = HEX[usize::from(b >> 4)];
        hex[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    // Always ASCII; the fallback is unreachable.
    std::str::from_utf8(&hex).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_32_hex_chars_and_unique_across_threads() {
        let mut handles = Vec::new();
        for _ in 0..4 {
            handles.push(std::thread::spawn(|| {
                (0..50_000).map(|_| new_message_id()).collect::<Vec<_>>()
            }));
        }
        let mut seen = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert_eq!(id.len(), 32);
                assert!(id
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
                assert!(seen.insert(id), "duplicate id");
            }
        }
        assert_eq!(seen.len(), 200_000);
    }

    #[test]
    fn ids_share_the_process_prefix() {
        let a = new_message_id();
        let b = new_message_id();
        assert_eq!(a[..16], b[..16]);
        assert_ne!(a, b);
    }

    #[test]
    fn ids_at_one_time_differ_and_carry_its_seconds() {
        // 2025-01-01T00:00:00.999Z: 366 days after the id epoch.
        let ms = (EPOCH_2024_SECS as i64 + 366 * 86_400) * 1000 + 999;
        let a = message_id_at(ms);
        let b = message_id_at(ms);
        assert_ne!(a, b);
        assert_eq!(a[16..24], format!("{:08x}", 366 * 86_400));
        assert_eq!(a[16..24], b[16..24]);
        // A clock before the epoch does not wrap around.
        assert_eq!(message_id_at(-5)[16..24], *"00000000");
    }
}
