//! Counters of what a replica served to pulls and which hints it gave; read by the status RPC.

use std::sync::atomic::{AtomicU64, Ordering};

use sluice_proto::v1::{ReadHintCount, ReadHintReason, ReadStats};

/// Every reason a hint can carry, in wire order (index = wire value).
const REASONS: [ReadHintReason; 8] = [
    ReadHintReason::Unspecified,
    ReadHintReason::Stay,
    ReadHintReason::ConsumerBehind,
    ReadHintReason::MasterLoaded,
    ReadHintReason::SlaveLagging,
    ReadHintReason::CaughtUp,
    ReadHintReason::SlaveReadDisabled,
    ReadHintReason::NoSlaveReady,
];

/// Lock-free counters: pulls update them, the status RPC and the monitor read them.
#[derive(Debug, Default)]
pub struct ReadCounters {
    pulls: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    redirects: AtomicU64,
    hints: [AtomicU64; REASONS.len()],
}

impl ReadCounters {
    pub fn served(&self, messages: usize, bytes: u64) {
        self.pulls.fetch_add(1, Ordering::Relaxed);
        self.messages.fetch_add(messages as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn hinted(&self, reason: ReadHintReason, redirect: bool) {
        if let Some(c) = self.hints.get(reason as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if redirect {
            self.redirects.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// The counters, with the monitor's rates and the switch filled in by the caller.
    pub fn snapshot(&self) -> ReadStats {
        ReadStats {
            pulls: self.pulls.load(Ordering::Relaxed),
            messages: self.messages(),
            bytes: self.bytes.load(Ordering::Relaxed),
            hints: REASONS
                .iter()
                .zip(&self.hints)
                .map(|(r, c)| (r, c.load(Ordering::Relaxed)))
                .filter(|&(_, n)| n > 0)
                .map(|(r, count)| ReadHintCount {
                    reason: *r as i32,
                    count,
                })
                .collect(),
            redirects: self.redirects.load(Ordering::Relaxed),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_by_wire_value() {
        for (i, r) in REASONS.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn counts_and_snapshots() {
        let c = ReadCounters::default();
        c.served(3, 300);
        c.served(0, 0);
        c.hinted(ReadHintReason::ConsumerBehind, true);
        c.hinted(ReadHintReason::Stay, false);
        c.hinted(ReadHintReason::Stay, false);
        let s = c.snapshot();
        assert_eq!((s.pulls, s.messages, s.bytes, s.redirects), (2, 3, 300, 1));
        assert_eq!(
            s.hints,
            vec![
                ReadHintCount {
                    reason: ReadHintReason::Stay as i32,
                    count: 2
                },
                ReadHintCount {
                    reason: ReadHintReason::ConsumerBehind as i32,
                    count: 1
                },
            ]
        );
    }
}
