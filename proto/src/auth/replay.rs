//! The server's memory of nonces already used.

use std::collections::HashMap;

use super::{AuthError, Signed};

/// Counters remembered behind a session's highest one; an older counter is refused as a
/// replay (a client this far out of order is not one [`super::Signer`] makes).
pub const REORDER_SPAN: u64 = 1024;
const WORDS: usize = (REORDER_SPAN / 64) as usize;

struct Session {
    high: u64,
    /// Bit `c % REORDER_SPAN` set: counter `c` (within the span below `high`) was used.
    seen: [u64; WORDS],
    last_ms: i64,
}

impl Session {
    fn bit(c: u64) -> (usize, u64) {
        let i = c % REORDER_SPAN;
        // `i / 64 < WORDS` by construction.
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn is_set(&self, c: u64) -> bool {
        let (w, b) = Self::bit(c);
        self.seen.get(w).is_some_and(|x| x & b != 0)
    }

    fn set(&mut self, c: u64, on: bool) {
        let (w, b) = Self::bit(c);
        if let Some(x) = self.seen.get_mut(w) {
            if on {
                *x |= b;
            } else {
                *x &= !b;
            }
        }
    }

    fn admit(&mut self, c: u64) -> Result<(), AuthError> {
        if c > self.high {
            // Forget the counters the window slides past.
            let step = (c - self.high).min(REORDER_SPAN);
            for k in 1..=step {
                self.set(self.high.wrapping_add(k), false);
            }
            self.high = c;
        } else if self.high - c >= REORDER_SPAN || self.is_set(c) {
            return Err(AuthError::Replayed);
        }
        self.set(c, true);
        Ok(())
    }
}

/// Accepts each verified nonce once. Per (access key, session) it keeps the highest counter
/// and which of the [`REORDER_SPAN`] below it were used: about 200 bytes per client, whatever
/// the request rate. Sessions silent for two windows are forgotten (their requests could no
/// longer pass the timestamp check). Past `per_key` sessions of one access key, or `capacity`
/// in all, a new session is refused rather than remembered (fail closed): one user cannot
/// crowd the others out.
pub struct ReplayGuard {
    window_ms: i64,
    capacity: usize,
    per_key: usize,
    sessions: HashMap<(String, [u8; 8]), Session>,
    keys: HashMap<String, usize>,
    pruned_ms: i64,
}

/// Longest replay window a guard keeps (a day): beyond it, memory is not bounded usefully.
pub const MAX_WINDOW_MS: i64 = 24 * 3600 * 1000;

impl ReplayGuard {
    pub fn new(window_ms: i64, capacity: usize, per_key: usize, now_ms: i64) -> ReplayGuard {
        ReplayGuard {
            window_ms: window_ms.clamp(1, MAX_WINDOW_MS),
            capacity,
            per_key,
            sessions: HashMap::new(),
            keys: HashMap::new(),
            pruned_ms: now_ms,
        }
    }

    fn prune(&mut self, now_ms: i64) {
        // A session last used at t had timestamps up to t + window; those pass the check until
        // t + 2 windows.
        let keep = self.window_ms.saturating_mul(2);
        let keys = &mut self.keys;
        self.sessions.retain(|(key, _), s| {
            let live = now_ms.saturating_sub(s.last_ms) <= keep;
            if !live {
                if let Some(n) = keys.get_mut(key) {
                    *n = n.saturating_sub(1);
                }
            }
            live
        });
        self.keys.retain(|_, n| *n > 0);
        self.pruned_ms = now_ms;
    }

    fn full(&self, key: &str) -> bool {
        self.sessions.len() >= self.capacity
            || self.keys.get(key).is_some_and(|n| *n >= self.per_key)
    }

    /// Accepts a verified request once; `Replayed` the second time (or when full).
    pub fn admit(&mut self, signed: &Signed, now_ms: i64) -> Result<(), AuthError> {
        let (session, counter) = split(&signed.nonce);
        if now_ms.saturating_sub(self.pruned_ms) >= self.window_ms {
            self.prune(now_ms);
        }
        let key = (signed.access_key.clone(), session);
        if !self.sessions.contains_key(&key) {
            if self.full(&signed.access_key) {
                self.prune(now_ms);
                if self.full(&signed.access_key) {
                    return Err(AuthError::TooManySessions);
                }
            }
            *self.keys.entry(signed.access_key.clone()).or_insert(0) += 1;
        }
        let s = self.sessions.entry(key).or_insert_with(|| Session {
            high: counter,
            seen: [0; WORDS],
            last_ms: now_ms,
        });
        s.admit(counter)?;
        s.last_ms = s.last_ms.max(now_ms);
        Ok(())
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

/// A nonce's session id and counter.
pub fn split(nonce: &[u8; 16]) -> ([u8; 8], u64) {
    let mut session = [0u8; 8];
    let mut counter = [0u8; 8];
    session.copy_from_slice(&nonce[..8]);
    counter.copy_from_slice(&nonce[8..]);
    (session, u64::from_be_bytes(counter))
}
